"""The one table of ``MjModel`` fields that randomization terms may write.

Each entry says how element names map to indices, how many columns the field has, what
values are physical, and what must follow a write (``mujoco.mj_setConst`` for fields that
derived constants depend on). :func:`bind` resolves a :class:`~rlsim2real.params.Param`
against a model once, so applying a sample later is plain array arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from rlsim2real.params import Param, SpecError, apply_mode

_OBJ = mujoco.mjtObj


@dataclass(frozen=True)
class FieldInfo:
    """How one ``MjModel`` field is addressed and what writing it implies.

    Attributes:
        obj: Object type whose names index the rows (``None`` for ``opt.*`` and ``vis.*``:
            rows are indexed by position).
        sign: ``"positive"``, ``"nonnegative"``, ``"unit"`` (a colour channel in [0, 1]) or
            ``None`` (any real value).
        set_const: Whether ``mj_setConst`` must run after a write.
        by_joint: Rows are DOFs, named by the joint that owns them.
        clip: Written values are clipped to ``(low, high)`` (colours: a scaled channel stays
            in [0, 1], as the renderer would clamp it anyway).
    """

    obj: int | None
    sign: str | None = None
    set_const: bool = False
    by_joint: bool = False
    clip: tuple[float, float] | None = None


FIELDS: dict[str, FieldInfo] = {
    "body_mass": FieldInfo(_OBJ.mjOBJ_BODY, "positive", set_const=True),
    "body_inertia": FieldInfo(_OBJ.mjOBJ_BODY, "positive", set_const=True),
    "geom_friction": FieldInfo(_OBJ.mjOBJ_GEOM, "nonnegative"),
    "geom_solref": FieldInfo(_OBJ.mjOBJ_GEOM),
    "geom_solimp": FieldInfo(_OBJ.mjOBJ_GEOM),
    "geom_margin": FieldInfo(_OBJ.mjOBJ_GEOM, "nonnegative"),
    "dof_damping": FieldInfo(_OBJ.mjOBJ_JOINT, "nonnegative", by_joint=True),
    "dof_armature": FieldInfo(_OBJ.mjOBJ_JOINT, "nonnegative", set_const=True, by_joint=True),
    "dof_frictionloss": FieldInfo(_OBJ.mjOBJ_JOINT, "nonnegative", by_joint=True),
    "jnt_stiffness": FieldInfo(_OBJ.mjOBJ_JOINT, "nonnegative"),
    "jnt_range": FieldInfo(_OBJ.mjOBJ_JOINT),
    "actuator_gear": FieldInfo(_OBJ.mjOBJ_ACTUATOR, set_const=True),
    "actuator_gainprm": FieldInfo(_OBJ.mjOBJ_ACTUATOR),
    "actuator_biasprm": FieldInfo(_OBJ.mjOBJ_ACTUATOR),
    "actuator_ctrlrange": FieldInfo(_OBJ.mjOBJ_ACTUATOR),
    "actuator_forcerange": FieldInfo(_OBJ.mjOBJ_ACTUATOR),
    "opt.gravity": FieldInfo(None),
    "opt.wind": FieldInfo(None),
    "opt.timestep": FieldInfo(None, "positive"),
    "opt.density": FieldInfo(None, "nonnegative"),
    "opt.viscosity": FieldInfo(None, "nonnegative"),
    # Appearance: read by the renderer at every frame (pixel observations).
    "geom_rgba": FieldInfo(_OBJ.mjOBJ_GEOM, "unit", clip=(0.0, 1.0)),
    "mat_rgba": FieldInfo(_OBJ.mjOBJ_MATERIAL, "unit", clip=(0.0, 1.0)),
    "mat_emission": FieldInfo(_OBJ.mjOBJ_MATERIAL, "nonnegative"),
    "mat_specular": FieldInfo(_OBJ.mjOBJ_MATERIAL, clip=(0.0, 1.0)),
    "mat_shininess": FieldInfo(_OBJ.mjOBJ_MATERIAL, clip=(0.0, 1.0)),
    "mat_reflectance": FieldInfo(_OBJ.mjOBJ_MATERIAL, clip=(0.0, 1.0)),
    "light_pos": FieldInfo(_OBJ.mjOBJ_LIGHT),
    "light_dir": FieldInfo(_OBJ.mjOBJ_LIGHT),
    "light_diffuse": FieldInfo(_OBJ.mjOBJ_LIGHT, "nonnegative"),
    "light_ambient": FieldInfo(_OBJ.mjOBJ_LIGHT, "nonnegative"),
    "light_specular": FieldInfo(_OBJ.mjOBJ_LIGHT, "nonnegative"),
    # A tracking camera's offset from its target is derived by mj_setConst.
    "cam_pos": FieldInfo(_OBJ.mjOBJ_CAMERA, set_const=True),
    "cam_fovy": FieldInfo(_OBJ.mjOBJ_CAMERA, "positive"),
    "vis.headlight.ambient": FieldInfo(None, "nonnegative"),
    "vis.headlight.diffuse": FieldInfo(None, "nonnegative"),
    "vis.headlight.specular": FieldInfo(None, "nonnegative"),
    "vis.global_.fovy": FieldInfo(None, "positive"),
}

# Fields that live in nested structs (``opt.gravity``, ``vis.headlight.diffuse``).
_STRUCT_HEADS = ("opt.", "vis.")

_OBJ_WORD = {
    _OBJ.mjOBJ_BODY: "body",
    _OBJ.mjOBJ_GEOM: "geom",
    _OBJ.mjOBJ_JOINT: "joint",
    _OBJ.mjOBJ_ACTUATOR: "actuator",
    _OBJ.mjOBJ_MATERIAL: "material",
    _OBJ.mjOBJ_LIGHT: "light",
    _OBJ.mjOBJ_CAMERA: "camera",
}


def write_field(model: mujoco.MjModel, field: str, values: np.ndarray) -> None:
    """Write a whole field (shape as :func:`field_array` returns it) into ``model``."""
    if field.startswith(_STRUCT_HEADS):
        owner, name = _struct_owner(model, field)
        current = getattr(owner, name)
        if isinstance(current, np.ndarray):
            current[...] = values
        else:
            setattr(owner, name, float(np.asarray(values).reshape(-1)[0]))
        return
    getattr(model, field)[...] = values


def struct_attr(model: mujoco.MjModel, field: str) -> object:
    """The value of a dotted struct field (``opt.timestep``, ``vis.headlight.diffuse``): a
    live array, or a Python scalar that has no view."""
    owner, name = _struct_owner(model, field)
    return getattr(owner, name)


def _struct_owner(model: mujoco.MjModel, field: str) -> tuple[object, str]:
    """The struct holding a dotted field, and the attribute's name in it."""
    *path, name = field.split(".")
    owner: object = model
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def field_array(model: mujoco.MjModel, field: str) -> np.ndarray:
    """The live array of ``field`` in ``model`` (a view: writing it changes the model)."""
    if field.startswith(_STRUCT_HEADS):
        arr = struct_attr(model, field)
        return arr if isinstance(arr, np.ndarray) else np.asarray([arr])
    return getattr(model, field)


@dataclass(frozen=True)
class BoundParam:
    """A Param resolved against one model.

    Attributes:
        param: The term.
        field: Field name in :data:`FIELDS`.
        rows: Row indices the term writes, shape (k,).
        column: Column index, or ``None`` for every column of 2-D fields.
        nominal: Nominal values of the selected entries (a copy), shape (k,) or (k, c).
    """

    param: Param
    field: str
    rows: np.ndarray
    column: int | None
    nominal: np.ndarray

    @property
    def index(self) -> tuple:
        if self.column is None:
            return (self.rows,)
        return (self.rows, self.column)

    def nominal_value(self) -> float:
        """The Param's value on the nominal model, in its own units."""
        identity = self.param.identity
        return float(identity) if identity is not None else float(np.mean(self.nominal))

    def check_value(self, value: float, where: str) -> None:
        """Raise :class:`SpecError` if ``value`` makes the field unphysical (see FieldInfo.sign)."""
        if not np.isfinite(value):
            raise SpecError(f"{where}: value must be finite, got {value}")
        sign = FIELDS[self.field].sign
        if sign is None:
            return
        mode = self.param.mode
        new = apply_mode(mode, self.nominal, value)
        if sign == "unit":
            if np.any((new < 0) | (new > 1)):
                worst = float(new.max() if np.any(new > 1) else new.min())
                raise SpecError(f"{where}: {mode} {value:g} makes {self.param.target} {worst:g}; expected a colour in [0, 1]")
            return
        was = self.nominal > 0 if sign == "positive" else self.nominal >= 0
        bad = (new <= 0) if sign == "positive" else (new < 0)
        # Only entries that were physical to begin with are held to the rule (the world
        # body's zero mass, say, stays zero under any scale).
        if np.any(bad & was):
            expected = "> 0" if sign == "positive" else ">= 0"
            raise SpecError(
                f"{where}: {mode} {value:g} makes {self.param.target} {float(np.min(new)):g}; expected {expected}"
            )


def _rows_for(model: mujoco.MjModel, info: FieldInfo, field: str, element: str | None, where: str) -> np.ndarray:
    n_rows = field_array(model, field).shape[0]
    if element is None or element == "*":
        rows = np.arange(n_rows)
        if info.obj == _OBJ.mjOBJ_BODY:
            rows = rows[1:]  # the world body has no physical mass or inertia
        return rows
    out: list[int] = []
    for token in element.split("|"):
        token = token.strip()
        if info.obj is None or token.startswith("#"):
            text = token[1:] if token.startswith("#") else token
            try:
                idx = int(text)
            except ValueError:
                raise SpecError(f"{where}: element {token!r} of {field} must be an index (0..{n_rows - 1})") from None
            limit = model.njnt if info.by_joint else n_rows
            if not 0 <= idx < limit:
                raise SpecError(f"{where}: index {idx} is out of range for {field} (0..{limit - 1})")
            ids = [idx]
        else:
            obj_id = mujoco.mj_name2id(model, info.obj, token)
            if obj_id < 0:
                word = _OBJ_WORD[info.obj]
                names = [mujoco.mj_id2name(model, info.obj, i) for i in range(_count(model, info.obj))]
                known = ", ".join(n for n in names if n) or "(none named)"
                plural = "bodies" if word == "body" else f"{word}s"
                raise SpecError(f"{where}: unknown {word} name {token!r} in {field}; expected one of the {plural}: {known}")
            ids = [obj_id]
        if info.by_joint:
            for j in ids:
                out.extend(_joint_dofs(model, j))
        else:
            out.extend(ids)
    return np.array(sorted(set(out)), dtype=np.intp)


def _count(model: mujoco.MjModel, obj: int) -> int:
    return {
        _OBJ.mjOBJ_BODY: model.nbody,
        _OBJ.mjOBJ_GEOM: model.ngeom,
        _OBJ.mjOBJ_JOINT: model.njnt,
        _OBJ.mjOBJ_ACTUATOR: model.nu,
        _OBJ.mjOBJ_MATERIAL: model.nmat,
        _OBJ.mjOBJ_LIGHT: model.nlight,
        _OBJ.mjOBJ_CAMERA: model.ncam,
    }[obj]


def _joint_dofs(model: mujoco.MjModel, joint: int) -> list[int]:
    ndof = {
        mujoco.mjtJoint.mjJNT_FREE: 6,
        mujoco.mjtJoint.mjJNT_BALL: 3,
    }.get(model.jnt_type[joint], 1)
    start = int(model.jnt_dofadr[joint])
    return list(range(start, start + ndof))


def bind(model: mujoco.MjModel, param: Param, where: str | None = None) -> BoundParam:
    """Resolve ``param`` against ``model``, validating field, element names and range.

    Args:
        model: The compiled model, at its nominal values.
        param: A term whose target kind is ``"model"``.
        where: Prefix for error messages (e.g. ``"envs/hopper.toml: params.torso_mass"``).

    Returns:
        The bound term, with a copy of the nominal values it selects.

    Raises:
        SpecError: on an unknown field or element name, a bad column, or a range that
            makes the field unphysical (a non-positive mass or inertia, say).
    """
    where = where or f"param {param.name!r}"
    target = param.parsed
    info = FIELDS.get(target.field)
    if info is None:
        raise SpecError(
            f"{where}: unknown field {target.field!r} in target {param.target!r}; "
            f"expected one of {', '.join(FIELDS)}, obs.noise_std, obs.bias, obs.scale, action.delay"
        )
    arr = field_array(model, target.field)
    rows = _rows_for(model, info, target.field, target.element, where)
    if rows.size == 0:
        raise SpecError(f"{where}: target {param.target!r} selects no elements")
    column = target.column
    if column is not None:
        n_cols = arr.shape[1] if arr.ndim == 2 else 1
        if arr.ndim != 2 or not 0 <= column < n_cols:
            raise SpecError(f"{where}: column {column} is out of range for {target.field} ({n_cols} column(s))")
    _check_visible(model, target.field, rows, where)
    bound = BoundParam(param, target.field, rows, column, np.array(arr[(rows,) if column is None else (rows, column)]))
    for value in (*param.range, *(param.limits or ())):
        bound.check_value(value, where)
    return bound


_DEFAULT_RGBA = np.array([0.5, 0.5, 0.5, 1.0], dtype=np.float32)


def _check_visible(model: mujoco.MjModel, field: str, rows: np.ndarray, where: str) -> None:
    """Refuse appearance terms the renderer would ignore: silent no-ops are spec errors.

    A material's ``rgba`` colours only the geoms that use it and keep the default geom
    colour (every Hopper geom has its own, for one); a directional light's position moves
    nothing.
    """
    if field == "mat_rgba":
        shown = [int(m) for m in rows if np.any((model.geom_matid == m) & np.all(model.geom_rgba == _DEFAULT_RGBA, axis=1))]
        if not shown:
            names = ", ".join(model.material(int(m)).name or f"#{int(m)}" for m in rows)
            users = [model.geom(i).name or f"#{i}" for i in np.flatnonzero(np.isin(model.geom_matid, rows))]
            raise SpecError(f"{where}: mat_rgba of {names} shows on no geom: the geoms that use it "
                            f"({', '.join(users) or 'none'}) have colours of their own, which the renderer draws "
                            f"instead; randomize geom_rgba of those geoms")
    if field == "light_pos" and np.all(model.light_type[rows] == mujoco.mjtLightType.mjLIGHT_DIRECTIONAL):
        raise SpecError(f"{where}: light_pos of a directional light moves nothing in the picture; "
                        f"randomize light_dir instead")

class ModelWriter:
    """Write parameter vectors into MjModels through :func:`bind`'s bindings.

    The same rules as :class:`~rlsim2real.wrappers.DynamicsRandomization`: every write
    starts from the nominal values cached here (nothing compounds), terms apply in order
    (a later term wins where two overlap), a body's inertia follows its mass, and
    ``mj_setConst`` runs after fields that derived constants depend on. Unlike the wrapper
    it writes any model of the same structure, so a batch of model copies (one per
    candidate of a system-identification search) shares one set of bindings.

    Args:
        model: The nominal model the bindings resolve against.
        params: Terms whose targets are model fields (``body_mass[torso]``, ...).

    Raises:
        SpecError: on a term that is not a model field, or what :func:`bind` refuses.

    Example:
        >>> import gymnasium as gym
        >>> m = gym.make("InvertedPendulum-v5").unwrapped.model
        >>> writer = ModelWriter(m, [Param("pole_mass", "body_mass[pole]", (0.5, 2.0))])
        >>> copy = writer.copy_model()
        >>> writer.write(copy, [2.0])
        >>> float(copy.body_mass[2] / m.body_mass[2]), float(copy.body_inertia[2, 0] / m.body_inertia[2, 0])
        (2.0, 2.0)
    """

    def __init__(self, model: mujoco.MjModel, params) -> None:
        params = list(params)
        for p in params:
            if p.parsed.kind != "model":
                raise SpecError(f"param {p.name!r}: target {p.target!r} is not an MjModel field")
        self.bound = [bind(model, p) for p in params]
        fields = {b.field for b in self.bound}
        if "body_mass" in fields:
            fields.add("body_inertia")
        self._nominal_model = model
        self.nominal = {f: np.array(field_array(model, f), copy=True) for f in sorted(fields)}
        self.needs_const = any(FIELDS[f].set_const for f in fields)

    def copy_model(self) -> mujoco.MjModel:
        """A copy of the nominal model (write candidates into copies, never the original)."""
        return copy_model(self._nominal_model)

    def write(self, model: mujoco.MjModel, values, data: mujoco.MjData | None = None) -> None:
        """Rebuild every bound field of ``model`` from nominal with ``values`` applied.

        Args:
            model: A model with the nominal model's structure.
            values: One value per term, in the terms' own units, shape (n_params,).
            data: Scratch data for ``mj_setConst`` (made when needed and not given).
        """
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape[0] != len(self.bound):
            raise ValueError(f"expected {len(self.bound)} values, got {values.shape[0]}")
        arrays = {f: self.nominal[f].copy() for f in self.nominal}
        for b, v in zip(self.bound, values):
            arrays[b.field][b.index] = apply_mode(b.param.mode, b.nominal, float(v))
        if "body_mass" in arrays:
            # Inertia follows mass (on top of any inertia term), as in the wrapper.
            nominal_mass = self.nominal["body_mass"]
            positive = nominal_mass > 0
            ratio = np.where(positive, arrays["body_mass"] / np.where(positive, nominal_mass, 1.0), 1.0)
            arrays["body_inertia"] = arrays["body_inertia"] * ratio[:, None]
        for f, arr in arrays.items():
            write_field(model, f, arr)
        if self.needs_const:
            mujoco.mj_setConst(model, data if data is not None else mujoco.MjData(model))


def copy_model(model: mujoco.MjModel) -> mujoco.MjModel:
    """A deep copy of ``model``."""
    import copy

    return copy.deepcopy(model)
