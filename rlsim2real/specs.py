"""Declarative specs: ``envs/*.toml``, ``agents/*.toml``, ``experiments/*.toml``.

Everything is validated when the file is loaded, against the real MuJoCo model: an unknown
key, field or element name, ``low > high``, a range that makes a mass non-positive or a
real set naming an unknown parameter fails at once with one line naming the file, the key
and what was expected.

An env spec::

    [env]
    id = "Hopper-v5"                # or entry_point = "package.module:Class"
                                    #    (or "assets/my_env.py:Class", relative to the file)
    [randomization]
    resample_every = 0              # 0: sample at reset only
    [evaluation]
    success_return = 1000.0         # omit: success = reaching the time limit
    color_max = 1000.0              # top of the heat map's colour scale (default success_return)
    grid = { x = "torso_mass", y = "friction", x_values = [0.5, 1.0, 1.5], y_values = [0.5, 1.0] }
    [params.torso_mass]             # the training box
    target = "body_mass[torso]"
    range = [0.7, 1.3]
    mode = "scale"                  # scale | add | abs
    dist = "uniform"                # uniform | loguniform | normal
    [heldout_params.obs_bias]       # terms training never varies; real sets may set them
    target = "obs.bias[*]"
    mode = "add"
    [real_sets.heavy_torso]         # held-out "real" configurations
    torso_mass = 1.6
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsim2real.params import Param, ParamSpace, SpecError, Target

REPO_ROOT = Path(__file__).resolve().parents[1]


def spec_dirs(kind: str) -> list[Path]:
    """Folders searched for a spec given by name: ``./<kind>``, ``$RLSIM2REAL_SPEC_PATH``'s
    ``<kind>`` subfolders, then the project's own ``<kind>`` folder."""
    dirs = [Path.cwd() / kind]
    for entry in os.environ.get("RLSIM2REAL_SPEC_PATH", "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry) / kind)
    dirs.append(REPO_ROOT / kind)
    return dirs


def resolve_spec_path(name_or_path: str | os.PathLike, kind: str, relative_to: Path | None = None) -> Path:
    """Find a spec file by path or by name in the ``kind`` folders (``envs``, ``agents``, ...).

    Raises:
        SpecError: if no such file exists, listing the specs that do.
    """
    text = str(name_or_path)
    candidates: list[Path] = []
    as_path = Path(text)
    if relative_to is not None and not as_path.is_absolute():
        candidates.append(relative_to / as_path)
    candidates.append(as_path)
    if not text.endswith(".toml"):
        stem = text.replace("-", "_").lower()
        candidates.extend(d / f"{stem}.toml" for d in spec_dirs(kind))
    elif relative_to is not None:
        candidates.extend(d / as_path.name for d in spec_dirs(kind))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = sorted(list_specs(kind))
    raise SpecError(f"{kind} spec {text!r} not found; known {kind}: {', '.join(known) or '(none)'}")


def list_specs(kind: str) -> dict[str, Path]:
    """Every spec found by name in the ``kind`` folders: ``{name: path}``, the first folder
    holding a name winning, as in :func:`resolve_spec_path`."""
    found: dict[str, Path] = {}
    for d in spec_dirs(kind):
        for p in sorted(d.glob("*.toml")) if d.is_dir() else ():
            found.setdefault(p.stem, p)
    return found


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors and empty files into :class:`SpecError`."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    if not data:
        raise SpecError(f"{path}: file is empty; expected a spec")
    return data


def check_keys(
    table: Any, allowed: tuple[str, ...] | None, where: str, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Raise :class:`SpecError` on a non-table, an unknown key or a missing required key.

    ``allowed=None`` takes any key (tables of user-named entries: params, real sets, kwargs).
    """
    if not isinstance(table, Mapping):
        raise SpecError(f"{where}: expected a table, got {type(table).__name__} {table!r}")
    for key in table if allowed is not None else ():
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r}; expected one of {', '.join(allowed)}")
    for key in required:
        if key not in table:
            raise SpecError(f"{where}: missing key {key!r}")
    return dict(table)


def _typed(value: Any, types: type | tuple[type, ...], where: str, expected: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise SpecError(f"{where}: expected {expected}, got {value!r}")
    if not isinstance(value, types):
        raise SpecError(f"{where}: expected {expected}, got {value!r}")
    return value


# --------------------------------------------------------------------------- env specs
_ENV_KEYS = ("env", "randomization", "evaluation", "params", "heldout_params", "real_sets", "pixels", "description")
_PIXEL_KEYS = ("width", "height", "camera", "frame_stack", "state", "distance", "azimuth", "elevation", "lookat",
               "track", "fast")
_ENV_TABLE_KEYS = ("id", "entry_point", "kwargs", "max_episode_steps", "description")
_PARAM_KEYS = ("target", "range", "mode", "dist", "mean", "std", "limits", "per_element", "description")
_EVAL_KEYS = ("success_return", "color_max", "grid")
_GRID_KEYS = ("x", "y", "x_values", "y_values")


@dataclass(frozen=True)
class GridSpec:
    """Two parameters and the values to sweep them over in grid evaluation."""

    x: str
    y: str
    x_values: tuple[float, ...]
    y_values: tuple[float, ...]


@dataclass(frozen=True)
class PixelSpec:
    """The ``[pixels]`` table: the observation is the rendered image (see
    :class:`~rlsim2real.wrappers.pixels.PixelObservation`).

    Attributes:
        width, height: Frame size.
        camera: A camera of the model, or ``None`` for a free camera placed by ``distance``,
            ``azimuth``, ``elevation``, ``lookat`` (following body ``track`` if set).
        frame_stack: Frames per observation, along the channel axis.
        state: Observe a dict of ``image`` and the env's ``state`` vector.
        fast: MuJoCo's fast software-rendering settings (no multisampling, shadows,
            reflections or skybox).
    """

    width: int = 64
    height: int = 64
    camera: str | None = None
    frame_stack: int = 1
    state: bool = False
    distance: float | None = None
    azimuth: float | None = None
    elevation: float | None = None
    lookat: tuple[float, float, float] | None = None
    track: str | None = None
    fast: bool = True

    def kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _PIXEL_KEYS}


def _parse_pixels(table: Any, where: str) -> PixelSpec:
    t = check_keys(table, _PIXEL_KEYS, where)
    out: dict[str, Any] = {}
    for key in ("width", "height", "frame_stack"):
        if key in t:
            value = _typed(t[key], int, f"{where}.{key}", "a positive integer")
            if value < 1 or (key != "frame_stack" and value > 4096):
                raise SpecError(f"{where}.{key}: expected a positive integer{' up to 4096' if key != 'frame_stack' else ''}, got {value}")
            out[key] = int(value)
    for key in ("camera", "track"):
        if key in t:
            out[key] = _typed(t[key], str, f"{where}.{key}", "a name in the model")
    for key in ("state", "fast"):
        if key in t:
            out[key] = _typed(t[key], bool, f"{where}.{key}", "true or false")
    for key in ("distance", "azimuth", "elevation"):
        if key in t:
            out[key] = float(_typed(t[key], (int, float), f"{where}.{key}", "a number"))
    if "lookat" in t:
        look = t["lookat"]
        if not (isinstance(look, list) and len(look) == 3 and all(isinstance(v, (int, float)) for v in look)):
            raise SpecError(f"{where}.lookat: expected three numbers [x, y, z], got {look!r}")
        out["lookat"] = tuple(float(v) for v in look)
    if "camera" in out and any(k in out for k in ("distance", "azimuth", "elevation", "lookat", "track")):
        raise SpecError(f"{where}.camera: a model camera is placed by the model; distance, azimuth, elevation, "
                        f"lookat and track place the free camera (give one or the other)")
    return PixelSpec(**out)


@dataclass
class EnvSpec:
    """A randomizable environment: how to build it, its training box and its real sets.

    Attributes:
        name: Spec name (file stem).
        path: The file it was loaded from (``None`` if built in code).
        env_id: Gymnasium id, or ``None`` when ``entry_point`` is given.
        entry_point: ``"module:Class"`` or ``"file.py:Class"`` (relative to the spec file).
        kwargs: Keyword arguments for the env constructor.
        max_episode_steps: Time limit override.
        params: The training box (randomized during training).
        heldout_params: Terms held at nominal in training that real sets may set.
        real_sets: ``{name: {param: value}}`` held-out configurations.
        resample_every: Re-sample within episodes every this many steps (``None``: resets only).
        success_return: Episode return that counts as a success (``None``: success means
            the episode reached its time limit without terminating).
        grid: Default grid for ``evaluate --grid``.
        color_max: Top of the grid heat map's fixed colour scale, which starts at 0
            (``None``: ``success_return``; with neither, the map scales to its own data).
        pixels: Render the observation (``None``: the env's own observation).
    """

    name: str
    env_id: str | None = None
    entry_point: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None
    params: ParamSpace = field(default_factory=ParamSpace)
    heldout_params: ParamSpace = field(default_factory=ParamSpace)
    real_sets: dict[str, dict[str, float]] = field(default_factory=dict)
    resample_every: int | None = None
    success_return: float | None = None
    grid: GridSpec | None = None
    description: str = ""
    path: Path | None = None
    nominal: dict[str, float] = field(default_factory=dict)
    color_max: float | None = None
    pixels: PixelSpec | None = None

    @property
    def all_params(self) -> ParamSpace:
        """Training box and held-out terms together (every term a wrapper applies)."""
        return ParamSpace(list(self.params) + list(self.heldout_params))

    @property
    def source(self) -> str:
        return str(self.path) if self.path else f"env spec {self.name!r}"

    def real_set(self, name: str) -> dict[str, float]:
        """The values of real set ``name``.

        Raises:
            SpecError: if there is no such set, listing those there are.
        """
        if name not in self.real_sets:
            known = ", ".join(self.real_sets) or "(none)"
            raise SpecError(f"{self.source}: unknown real set {name!r}; known real sets: {known}")
        return dict(self.real_sets[name])

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EnvSpec":
        """Rebuild a spec from :meth:`to_dict` output (a run's config.json)."""

        from rlsim2real.distributions import param_from_dict

        def space(items: list[dict[str, Any]]) -> ParamSpace:
            return ParamSpace(param_from_dict(i) for i in items)

        grid = d.get("grid")
        return cls(
            name=d["name"],
            env_id=d.get("id"),
            entry_point=d.get("entry_point"),
            kwargs=dict(d.get("kwargs") or {}),
            max_episode_steps=d.get("max_episode_steps"),
            params=space(d.get("params", [])),
            heldout_params=space(d.get("heldout_params", [])),
            real_sets={k: dict(v) for k, v in (d.get("real_sets") or {}).items()},
            resample_every=d.get("resample_every"),
            success_return=d.get("success_return"),
            color_max=d.get("color_max"),
            grid=None if grid is None else GridSpec(grid["x"], grid["y"], tuple(grid["x_values"]), tuple(grid["y_values"])),
            description=d.get("description", ""),
            path=Path(d["path"]) if d.get("path") else None,
            nominal={k: float(v) for k, v in (d.get("nominal") or {}).items()},
            pixels=None if d.get("pixels") is None else PixelSpec(**{
                k: (tuple(v) if k == "lookat" and v is not None else v) for k, v in d["pixels"].items()}),
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (written into a run's config.json)."""
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "id": self.env_id,
            "entry_point": self.entry_point,
            "kwargs": self.kwargs,
            "max_episode_steps": self.max_episode_steps,
            "params": self.params.to_list(),
            "heldout_params": self.heldout_params.to_list(),
            "real_sets": self.real_sets,
            "resample_every": self.resample_every,
            "success_return": self.success_return,
            "color_max": self.color_max,
            "grid": None if self.grid is None else self.grid.__dict__,
            "description": self.description,
            "nominal": self.nominal,
            "pixels": None if self.pixels is None else {k: (list(v) if isinstance(v, tuple) else v)
                                                        for k, v in self.pixels.kwargs().items()},
        }


def _parse_params(name: str, table: Any, where: str, heldout: bool) -> list[Param]:
    """One term, or with ``per_element = true`` one term per listed element, each drawn on
    its own (named ``name.element``): every geom its own colour instead of one shared draw."""
    if not (isinstance(table, Mapping) and table.get("per_element", False)):
        return [_parse_param(name, table, where, heldout)]
    _typed(table["per_element"], bool, f"{where}.per_element", "true or false")
    target = Target.parse(str(table.get("target", "")))
    elements = [e.strip() for e in (target.element or "").split("|") if e.strip()]
    if len(elements) < 2 or "*" in elements:
        raise SpecError(f"{where}.per_element: expected a target that lists its elements (a|b|c), got "
                        f"{table.get('target')!r}")
    column = "" if target.column is None else f",{target.column}"
    out = []
    for element in elements:
        one = {k: v for k, v in table.items() if k != "per_element"}
        one["target"] = f"{target.field}[{element}{column}]"
        out.append(_parse_param(f"{name}.{element.lstrip('#')}", one, where, heldout))
    return out


def _parse_param(name: str, table: Any, where: str, heldout: bool) -> Param:
    t = check_keys(table, _PARAM_KEYS, where, required=("target",) if heldout else ("target", "range"))
    mode = t.get("mode", "scale")
    if "range" in t:
        rng = t["range"]
        if not isinstance(rng, list) or len(rng) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rng):
            raise SpecError(f"{where}.range: expected [low, high], got {rng!r}")
    elif mode == "abs":
        raise SpecError(f"{where}: mode 'abs' needs a range (used for validation and grids)")
    else:
        rng = [1.0, 1.0] if mode == "scale" else [0.0, 0.0]
    limits = t.get("limits")
    if limits is not None and (
        not isinstance(limits, list) or len(limits) != 2
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in limits)
    ):
        raise SpecError(f"{where}.limits: expected [low, high], got {limits!r}")
    try:
        param = Param(
            name, t["target"], tuple(rng), mode, t.get("dist", "uniform"), t.get("mean"), t.get("std"),
            None if limits is None else tuple(limits),
        )
    except SpecError as exc:
        raise SpecError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
    if rng[0] == rng[1]:
        _check_whole_delay(param, rng[0], f"{where}.range")
    return param


def load_env_spec(name_or_path: str | os.PathLike, validate: bool = True) -> EnvSpec:
    """Load and validate an env spec by name (``"hopper"``) or path.

    Args:
        name_or_path: A spec name found in the ``envs`` folders, or a ``.toml`` path.
        validate: Build the env once and check every target and value against its model.

    Returns:
        The spec.

    Raises:
        SpecError: with the file, key and what was expected.
    """
    if isinstance(name_or_path, EnvSpec):
        return name_or_path
    path = resolve_spec_path(name_or_path, "envs")
    data = read_toml(path)
    f = str(path)
    check_keys(data, _ENV_KEYS, f)
    env_t = check_keys(data.get("env", {}), _ENV_TABLE_KEYS, f"{f}: env")
    if ("id" in env_t) == ("entry_point" in env_t):
        raise SpecError(f"{f}: env: expected exactly one of 'id' (a Gymnasium id) or 'entry_point' ('module:Class')")
    kwargs = check_keys(env_t.get("kwargs", {}), None, f"{f}: env.kwargs")
    max_steps = env_t.get("max_episode_steps")
    if max_steps is not None:
        _typed(max_steps, int, f"{f}: env.max_episode_steps", "a positive integer")
    rand_t = check_keys(data.get("randomization", {}), ("resample_every",), f"{f}: randomization")
    resample = int(_typed(rand_t.get("resample_every", 0), int, f"{f}: randomization.resample_every", "an integer >= 0"))
    if resample < 0:
        raise SpecError(f"{f}: randomization.resample_every: expected an integer >= 0, got {resample}")
    params_t = check_keys(data.get("params", {}), None, f"{f}: params")
    held_t = check_keys(data.get("heldout_params", {}), None, f"{f}: heldout_params")
    params = [p for n, t in params_t.items() for p in _parse_params(n, t, f"{f}: params.{n}", heldout=False)]
    held = [p for n, t in held_t.items() for p in _parse_params(n, t, f"{f}: heldout_params.{n}", heldout=True)]
    clash = sorted(set(params_t) & set(held_t))
    if clash:
        raise SpecError(f"{f}: heldout_params.{clash[0]}: name already used in params")
    spec = EnvSpec(
        name=path.stem,
        env_id=env_t.get("id"),
        entry_point=env_t.get("entry_point"),
        kwargs=kwargs,
        max_episode_steps=max_steps,
        params=ParamSpace(params),
        heldout_params=ParamSpace(held),
        resample_every=resample or None,
        description=str(data.get("description", env_t.get("description", ""))),
        path=path,
    )
    if "pixels" in data:
        spec.pixels = _parse_pixels(data["pixels"], f"{f}: pixels")
    elif any(p.parsed.kind == "image" for p in spec.all_params):
        name = next(p.name for p in spec.all_params if p.parsed.kind == "image")
        section = "params" if name in spec.params else "heldout_params"
        raise SpecError(f"{f}: {section}.{name}: image terms need pixel observations; add a [pixels] table")
    all_names = spec.all_params.names
    sets_t = check_keys(data.get("real_sets", {}), None, f"{f}: real_sets")
    for set_name, values in sets_t.items():
        where = f"{f}: real_sets.{set_name}"
        if not isinstance(values, Mapping):
            raise SpecError(f"{where}: expected a table of parameter = value")
        for k, v in values.items():
            if k not in all_names:
                raise SpecError(f"{where}: unknown parameter {k!r}; expected one of {', '.join(all_names)}")
            _typed(v, (int, float), f"{where}.{k}", "a number")
            _check_whole_delay(spec.all_params[k], v, f"{where}.{k}")
        spec.real_sets[set_name] = {k: float(v) for k, v in values.items()}
    eval_t = check_keys(data.get("evaluation", {}), _EVAL_KEYS, f"{f}: evaluation")
    if "success_return" in eval_t:
        spec.success_return = float(_typed(eval_t["success_return"], (int, float), f"{f}: evaluation.success_return", "a number"))
    if "color_max" in eval_t:
        top = _typed(eval_t["color_max"], (int, float), f"{f}: evaluation.color_max", "a number > 0")
        if not top > 0:
            raise SpecError(f"{f}: evaluation.color_max: expected a number > 0, got {top!r}")
        spec.color_max = float(top)
    if "grid" in eval_t:
        spec.grid = _parse_grid(eval_t["grid"], f"{f}: evaluation.grid", all_names)
    if validate:
        validate_env_spec(spec)
    return spec


def _check_whole_delay(param: Param, value: float, where: str) -> None:
    """An action delay is applied in whole control steps: a fixed delay must be one.

    A real-set value (or a fixed, zero-width range) of an ``action.delay`` term in mode
    ``add`` or ``abs`` that is not a whole number would be silently rounded (2.5 applied
    as 2); it is an error. A range ``[low, high]`` is fine: it is sampled, then rounded.
    """
    if param.parsed.field == "action.delay" and param.mode in ("add", "abs") and float(value) != round(float(value)):
        raise SpecError(f"{where}: expected a whole number of control steps for action.delay, got {value!r}")


def _parse_grid(table: Any, where: str, names: tuple[str, ...]) -> GridSpec:
    g = check_keys(table, _GRID_KEYS, where, required=_GRID_KEYS)
    for axis in ("x", "y"):
        if g[axis] not in names:
            raise SpecError(f"{where}.{axis}: unknown parameter {g[axis]!r}; expected one of {', '.join(names)}")
        vals = g[f"{axis}_values"]
        if not isinstance(vals, list) or not vals or not all(isinstance(v, (int, float)) for v in vals):
            raise SpecError(f"{where}.{axis}_values: expected a non-empty list of numbers")
    return GridSpec(g["x"], g["y"], tuple(map(float, g["x_values"])), tuple(map(float, g["y_values"])))


def validate_env_spec(spec: EnvSpec) -> None:
    """Build the env once and check every term and real-set value against it.

    Raises:
        SpecError: naming the spec file and the offending key.
    """
    from rlsim2real import mjfields
    from rlsim2real.factory import make_base_env
    from rlsim2real.wrappers import ActionDelay, ObservationNoise
    from rlsim2real.wrappers.pixels import IMAGE_NOMINAL, check_image_value

    f = spec.source
    env = make_base_env(spec)
    try:
        model = env.unwrapped.model
        checkers: dict[str, Any] = {}
        for section, space in (("params", spec.params), ("heldout_params", spec.heldout_params)):
            for p in space:
                where = f"{f}: {section}.{p.name}"
                try:
                    kind = p.parsed.kind
                    if kind == "model":
                        bound = mjfields.bind(model, p, where)
                        checkers[p.name] = bound.check_value
                        spec.nominal[p.name] = bound.nominal_value()
                    elif kind == "image":
                        for value in (*p.range, *(p.limits or ())):
                            check_image_value(p, value, where)
                        texture = p.parsed.element if p.parsed.field.startswith("texture.") else None
                        if texture is not None and mjfields.mujoco.mj_name2id(model, mjfields.mujoco.mjtObj.mjOBJ_TEXTURE, texture) < 0:
                            names = [model.texture(i).name for i in range(model.ntex)]
                            raise SpecError(f"{where}: unknown texture {texture!r}; the model has "
                                            f"{', '.join(n for n in names if n) or 'no named textures'}")
                        checkers[p.name] = (lambda q: lambda v, wh: check_image_value(q, v, wh))(p)
                        spec.nominal[p.name] = float(p.identity) if p.identity is not None else IMAGE_NOMINAL[p.parsed.field]
                    else:
                        wrapper = (ObservationNoise if kind == "obs" else ActionDelay)(env, [p])
                        checkers[p.name] = (lambda w, n: lambda v, wh: _recheck(w, n, v, wh))(wrapper, p.name)
                        spec.nominal[p.name] = wrapper.nominal_value(p.name)
                except SpecError as exc:
                    msg = str(exc)
                    raise SpecError(msg if msg.startswith(f) else f"{where}: {msg.split(': ', 1)[-1]}") from None
        for set_name, values in spec.real_sets.items():
            for k, v in values.items():
                checkers[k](v, f"{f}: real_sets.{set_name}.{k}")
    finally:
        env.close()


def _recheck(wrapper: Any, name: str, value: float, where: str) -> None:
    try:
        wrapper._check_value(name, value)
    except SpecError as exc:
        raise SpecError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None


def load_entry_point(entry_point: str, relative_to: Path | None = None) -> Any:
    """Import ``"package.module:Name"`` or ``"path/to/file.py:Name"``.

    Raises:
        SpecError: if the module or name cannot be found, or the module fails to import.
    """
    if ":" not in entry_point:
        raise SpecError(f"entry_point {entry_point!r}: expected 'package.module:Class' or 'file.py:Class'")
    module_part, _, attr = entry_point.rpartition(":")
    if module_part.endswith(".py"):
        file = Path(module_part)
        if not file.is_absolute() and relative_to is not None:
            file = relative_to / file
        if not file.is_file():
            raise SpecError(f"entry_point {entry_point!r}: no file {file}")
        # A stable name (not hash(), which changes per process) so pickled envs load elsewhere.
        digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
        mod_name = f"rlsim2real_user_{file.stem}_{digest}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]  # never keep a half-run module
                raise SpecError(f"entry_point {entry_point!r}: importing {file} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            raise SpecError(f"entry_point {entry_point!r}: cannot import {module_part!r}: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, attr):
        raise SpecError(f"entry_point {entry_point!r}: {module_part} has no attribute {attr!r}")
    return getattr(module, attr)


# ------------------------------------------------------------------------- agent specs
ALGORITHMS = ("recurrent_ppo", "ppo")
_AGENT_KEYS = ("agent", "hyperparameters", "policy_kwargs", "dann", "description")
_AGENT_TABLE_KEYS = ("algorithm", "policy", "description")


@dataclass
class AgentSpec:
    """An agent preset: algorithm, policy, constructor hyperparameters, DANN settings."""

    name: str
    algorithm: str = "recurrent_ppo"
    policy: str = "MlpLstmPolicy"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    dann: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "algorithm": self.algorithm,
            "policy": self.policy,
            "hyperparameters": self.hyperparameters,
            "policy_kwargs": self.policy_kwargs,
            "dann": self.dann,
        }


def algorithm_class(algorithm: str) -> type:
    """The SB3 class for an algorithm name (``recurrent_ppo`` or ``ppo``)."""
    if algorithm == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if algorithm == "recurrent_ppo":
        try:
            from rlsim2real.agents import RecurrentPPO
        except ImportError:  # the fast agent is optional at import time
            from sb3_contrib import RecurrentPPO
        return RecurrentPPO
    raise SpecError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")


_POSITIVE_INTS = ("n_steps", "batch_size", "n_epochs")
_UNIT_INTERVAL = ("gamma", "gae_lambda")
_NONNEGATIVE = ("learning_rate", "clip_range", "ent_coef", "vf_coef", "max_grad_norm")
_BOOLEANS = ("parallel_update", "normalize_advantage")
_RUNNER_OWNED = ("policy", "env", "policy_kwargs", "seed", "device", "tensorboard_log", "verbose", "_init_setup_model")


def check_hyperparameters(algorithm: str, hyper: Mapping[str, Any], where: str) -> None:
    """Raise :class:`SpecError` if a key is not a constructor argument of the algorithm."""
    cls = algorithm_class(algorithm)
    accepted: list[str] = []
    # A subclass may take (*args, dann=..., **kwargs): collect named arguments down the MRO
    # until a constructor that takes no **kwargs.
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__).parameters
        for n, prm in sig.items():
            if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY) and n not in ("self", *_RUNNER_OWNED):
                if n not in accepted:
                    accepted.append(n)
        if not any(prm.kind == prm.VAR_KEYWORD for prm in sig.values()):
            break
    for key, value in hyper.items():
        if key not in accepted:
            raise SpecError(f"{where}: unknown hyperparameter {key!r} for {algorithm}; expected one of {', '.join(accepted)}")
        if key in _POSITIVE_INTS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpecError(f"{where}.{key}: expected an integer >= 1, got {value!r}")
        if key in _UNIT_INTERVAL and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
            raise SpecError(f"{where}.{key}: expected a number in (0, 1], got {value!r}")
        if key in _NONNEGATIVE and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise SpecError(f"{where}.{key}: expected a number >= 0, got {value!r}")
        if key in _BOOLEANS and not isinstance(value, bool):
            raise SpecError(f"{where}.{key}: expected true or false, got {value!r}")


def load_agent_spec(name_or_path: str | os.PathLike, relative_to: Path | None = None) -> AgentSpec:
    """Load and validate an agent preset by name (``"recurrent_ppo"``) or path.

    Raises:
        SpecError: with the file, key and what was expected.
    """
    path = resolve_spec_path(name_or_path, "agents", relative_to)
    data = read_toml(path)
    f = str(path)
    check_keys(data, _AGENT_KEYS, f)
    a = check_keys(data.get("agent", {}), _AGENT_TABLE_KEYS, f"{f}: agent")
    algorithm = a.get("algorithm", "recurrent_ppo")
    if algorithm not in ALGORITHMS:
        raise SpecError(f"{f}: agent.algorithm: unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    hyper = check_keys(data.get("hyperparameters", {}), None, f"{f}: hyperparameters")
    check_hyperparameters(algorithm, hyper, f"{f}: hyperparameters")
    policy_kwargs = check_keys(data.get("policy_kwargs", {}), None, f"{f}: policy_kwargs")
    dann = check_keys(data.get("dann", {}), None, f"{f}: dann")
    if dann:
        if algorithm != "recurrent_ppo":
            raise SpecError(f"{f}: dann: DANN is available for algorithm 'recurrent_ppo' only, not {algorithm!r}")
        from rlsim2real.agents.dann_config import DannConfig

        try:
            DannConfig.from_any(dann)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{f}: {exc}") from None
    default_policy = "MlpLstmPolicy" if algorithm == "recurrent_ppo" else "MlpPolicy"
    return AgentSpec(path.stem, algorithm, a.get("policy", default_policy), hyper, policy_kwargs, dann, path)


# -------------------------------------------------------------------- experiment specs
VEC_ENVS = ("dummy", "subproc", "batched")
_EXP_KEYS = ("experiment", "strategy", "hyperparameters", "evaluation", "target", "description")
_TARGET_KEYS = ("set", "file", "episodes", "refresh_every")


@dataclass(frozen=True)
class TargetSpec:
    """Where the DANN encoder's unlabeled target observations come from.

    Attributes:
        set: A real set (or ``"nominal"``) whose episodes, run with the current policy,
            supply target observations.
        file: A trajectory ``.npz`` of logged observations instead (e.g. from a robot).
        episodes: Episodes per collection from ``set``.
        refresh_every: Re-collect every this many updates (0: collect once).
    """

    set: str | None = None
    file: Path | None = None
    episodes: int = 4
    refresh_every: int = 10

    def to_dict(self) -> dict[str, Any]:
        return {"set": self.set, "file": str(self.file) if self.file else None, "episodes": self.episodes,
                "refresh_every": self.refresh_every}
_EXP_TABLE_KEYS = (
    "name", "env", "agent", "strategy", "timesteps", "seed", "n_envs", "vec_env", "threads", "backend", "backend_options", "normalize",
    "checkpoint_every", "device", "max_episode_steps", "description",
)
_EXP_EVAL_KEYS = ("episodes", "sets", "grid", "enabled")


@dataclass
class ExperimentSpec:
    """One training run: env + agent + strategy + budget + seed + evaluation."""

    name: str
    env: EnvSpec
    agent: AgentSpec
    strategy: str = "uniform"
    strategy_settings: dict[str, Any] = field(default_factory=dict)
    timesteps: int = 100_000
    seed: int = 0
    n_envs: int = 4
    vec_env: str = "dummy"
    threads: int = 1
    backend: str = "mujoco_batch"
    backend_options: dict[str, Any] = field(default_factory=dict)
    normalize: bool = True
    checkpoint_every: int = 0
    device: str = "auto"
    eval_episodes: int = 10
    eval_sets: list[str] | None = None
    eval_grid: bool = False
    evaluate: bool = True
    target: TargetSpec | None = None
    max_episode_steps: int | None = None
    path: Path | None = None

    @property
    def train_env(self) -> EnvSpec:
        """The env spec the training workers run (with the experiment's time limit, if set);
        evaluation keeps :attr:`env`'s own."""
        if self.max_episode_steps is None:
            return self.env
        from dataclasses import replace

        return replace(self.env, max_episode_steps=self.max_episode_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": None if self.target is None else self.target.to_dict(),
            "path": str(self.path) if self.path else None,
            "strategy": self.strategy,
            "strategy_settings": self.strategy_settings,
            "max_episode_steps": self.max_episode_steps,
            "timesteps": self.timesteps,
            "seed": self.seed,
            "n_envs": self.n_envs,
            "vec_env": self.vec_env,
            # Only batched envs have threads; other runs' configs stay as they were (resume).
            **({"threads": self.threads} if self.vec_env == "batched" else {}),
            # Written only when not the default, so that runs made before backends were
            # selectable still resume.
            **({"backend": self.backend} if self.vec_env == "batched" and self.backend != "mujoco_batch" else {}),
            **({"backend_options": self.backend_options} if self.backend_options else {}),
            "normalize": self.normalize,
            "checkpoint_every": self.checkpoint_every,
            "device": self.device,
            "evaluation": {"episodes": self.eval_episodes, "sets": self.eval_sets, "grid": self.eval_grid, "enabled": self.evaluate},
            "env": self.env.to_dict(),
            "agent": self.agent.to_dict(),
        }


def _positive_int(value: Any, where: str, allow_zero: bool = False) -> int:
    _typed(value, int, where, "an integer")
    if value < 0 or (value == 0 and not allow_zero):
        raise SpecError(f"{where}: expected an integer {'>= 0' if allow_zero else '> 0'}, got {value}")
    return int(value)


def load_experiment_spec(name_or_path: str | os.PathLike) -> ExperimentSpec:
    """Load and validate an experiment (its env and agent specs too).

    Raises:
        SpecError: with the file, key and what was expected.
    """
    path = resolve_spec_path(name_or_path, "experiments")
    data = read_toml(path)
    f = str(path)
    check_keys(data, _EXP_KEYS, f)
    e = check_keys(data.get("experiment", {}), _EXP_TABLE_KEYS, f"{f}: experiment", required=("env",))
    env = _nested(lambda: load_env_spec(resolve_spec_path(e["env"], "envs", path.parent)), f, "experiment.env")
    agent = _nested(lambda: load_agent_spec(e.get("agent", "recurrent_ppo"), path.parent), f, "experiment.agent")
    hyper = check_keys(data.get("hyperparameters", {}), None, f"{f}: hyperparameters")
    check_hyperparameters(agent.algorithm, hyper, f"{f}: hyperparameters")
    agent.hyperparameters = {**agent.hyperparameters, **hyper}
    strategy, strategy_settings = _parse_strategy(e.get("strategy"), data.get("strategy"), f, env)
    vec_env = e.get("vec_env", "dummy")
    if vec_env not in VEC_ENVS:
        raise SpecError(f"{f}: experiment.vec_env: expected one of {', '.join(VEC_ENVS)}, got {vec_env!r}")
    if vec_env == "batched":
        from rlsim2real.batched import batched_support

        why = batched_support(env)
        if why is not None:
            raise SpecError(f"{f}: experiment.vec_env: batched: {why}")
    threads = _positive_int(e.get("threads", 1), f"{f}: experiment.threads", allow_zero=True)
    if "threads" in e and vec_env != "batched":
        raise SpecError(f"{f}: experiment.threads: only vec_env = \"batched\" has simulation threads; got vec_env = {vec_env!r}")
    backend, backend_options = _batched_backend(e, vec_env, f)
    device = e.get("device", "auto")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise SpecError(f"{f}: experiment.device: expected auto, cpu or cuda, got {device!r}")
    ev = check_keys(data.get("evaluation", {}), _EXP_EVAL_KEYS, f"{f}: evaluation")
    sets = ev.get("sets")
    if sets is not None:
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            raise SpecError(f"{f}: evaluation.sets: expected a list of real set names")
        for s in sets:
            if s != "nominal" and s not in env.real_sets:
                raise SpecError(f"{f}: evaluation.sets: unknown real set {s!r}; known: nominal, {', '.join(env.real_sets)}")
    target = _parse_target(data.get("target"), f, env, path.parent)
    if agent.dann.get("enabled") and target is None:
        raise SpecError(f"{f}: target: missing; the agent {agent.name!r} uses DANN and needs a [target] set or file")
    n_envs = _positive_int(e.get("n_envs", 4), f"{f}: experiment.n_envs")
    check_minibatches(agent, n_envs, f)
    return ExperimentSpec(
        target=target,
        name=str(e.get("name", path.stem)),
        env=env,
        agent=agent,
        strategy=strategy,
        strategy_settings=strategy_settings,
        max_episode_steps=(
            None if e.get("max_episode_steps") is None
            else _positive_int(e["max_episode_steps"], f"{f}: experiment.max_episode_steps")
        ),
        timesteps=_positive_int(e.get("timesteps", 100_000), f"{f}: experiment.timesteps"),
        seed=_positive_int(e.get("seed", 0), f"{f}: experiment.seed", allow_zero=True),
        n_envs=n_envs,
        vec_env=vec_env,
        threads=threads,
        backend=backend,
        backend_options=backend_options,
        normalize=bool(_typed(e.get("normalize", True), bool, f"{f}: experiment.normalize", "true or false")),
        checkpoint_every=_positive_int(e.get("checkpoint_every", 0), f"{f}: experiment.checkpoint_every", allow_zero=True),
        device=device,
        eval_episodes=_positive_int(ev.get("episodes", 10), f"{f}: evaluation.episodes"),
        eval_sets=sets,
        eval_grid=bool(_typed(ev.get("grid", False), bool, f"{f}: evaluation.grid", "true or false")),
        evaluate=bool(_typed(ev.get("enabled", True), bool, f"{f}: evaluation.enabled", "true or false")),
        path=path,
    )


def _batched_backend(e: dict[str, Any], vec_env: str, f: str) -> tuple[str, dict[str, Any]]:
    """``[experiment] backend`` (a name in the batched env's BACKENDS) and
    ``backend_options`` (that backend's own options), with vec_env = "batched" only."""
    keys = [key for key in ("backend", "backend_options") if key in e]
    if not keys:
        return "mujoco_batch", {}
    if vec_env != "batched":
        raise SpecError(f"{f}: experiment.{keys[0]}: only vec_env = \"batched\" has a simulation backend; got vec_env = {vec_env!r}")
    from rlsim2real.batched.backend import BACKENDS, check_backend_options

    backend = e.get("backend", "mujoco_batch")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise SpecError(f"{f}: experiment.backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "warp":
        from rlsim2real.batched.warp_backend import INSTALL_HINT, warp_available

        if not warp_available():
            raise SpecError(f"{f}: experiment.backend: {INSTALL_HINT}")
    return backend, check_backend_options(backend, e.get("backend_options", {}), f"{f}: experiment.backend_options")


def _parse_strategy(shorthand: Any, table: Any, f: str, env: EnvSpec) -> tuple[str, dict[str, Any]]:
    """``[experiment] strategy = "name"`` and/or a ``[strategy]`` table with ``name`` and
    that strategy's settings, checked against the strategy's typed settings and the env."""
    from rlsim2real.strategies import STRATEGIES

    if shorthand is not None:
        _typed(shorthand, str, f"{f}: experiment.strategy", f"one of {', '.join(STRATEGIES)}")
    settings = dict(check_keys(table, None, f"{f}: strategy")) if table is not None else {}
    name = settings.pop("name", None)
    if name is not None:
        _typed(name, str, f"{f}: strategy.name", f"one of {', '.join(STRATEGIES)}")
    if shorthand is not None and name is not None and shorthand != name:
        raise SpecError(f"{f}: strategy.name: {name!r} contradicts experiment.strategy = {shorthand!r}; give one")
    name = name or shorthand or "uniform"
    key = "strategy.name" if table is not None and "name" in table else "experiment.strategy"
    if name not in STRATEGIES:
        raise SpecError(f"{f}: {key}: unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    parsed = cls.Settings.from_table(settings, f"{f}: strategy", name)
    parsed.validate(f"{f}: strategy", env)
    return name, parsed.to_dict()


def _constructor_default(algorithm: str, name: str) -> Any:
    # The algorithm's own default, found down the MRO as check_hyperparameters does.
    for klass in algorithm_class(algorithm).__mro__:
        if "__init__" in vars(klass):
            prm = inspect.signature(klass.__init__).parameters.get(name)
            if prm is not None and prm.default is not prm.empty:
                return prm.default
    return None


def check_minibatches(agent: AgentSpec, n_envs: int, f: str) -> None:
    """Refuse minibatch settings that cannot work with the rollout.

    One rollout holds ``n_steps * n_envs`` transitions, cut into minibatches of
    ``batch_size``. A batch larger than the rollout silently shrinks to it; a minibatch of
    one transition makes the per-minibatch advantage normalization 0/0 (NaN weights a few
    updates in), whether ``batch_size`` is 1 or the rollout leaves a remainder of 1.

    Raises:
        SpecError: naming the file, ``hyperparameters.batch_size`` and the numbers.
    """
    hyper = agent.hyperparameters
    n_steps = hyper.get("n_steps", _constructor_default(agent.algorithm, "n_steps"))
    batch = hyper.get("batch_size", _constructor_default(agent.algorithm, "batch_size"))
    if not isinstance(n_steps, int) or not isinstance(batch, int):
        return
    rollout = n_steps * n_envs
    where = f"{f}: hyperparameters.batch_size"
    if batch > rollout:
        raise SpecError(
            f"{where}: {batch} is larger than one rollout, n_steps x n_envs = {n_steps} x {n_envs} = {rollout}; "
            f"expected at most {rollout}"
        )
    if hyper.get("normalize_advantage", True):
        if batch < 2:
            raise SpecError(
                f"{where}: expected an integer >= 2, got {batch} (advantages are normalized per minibatch, "
                f"and one transition has no spread: NaN)"
            )
        if rollout % batch == 1:
            raise SpecError(
                f"{where}: {batch} leaves a last minibatch of 1 transition (rollout {n_steps} x {n_envs} = {rollout}), "
                f"whose normalized advantage is NaN; choose a batch_size that divides {rollout}"
            )


def _parse_target(table: Any, f: str, env: EnvSpec, folder: Path) -> TargetSpec | None:
    if table is None:
        return None
    t = check_keys(table, _TARGET_KEYS, f"{f}: target")
    if ("set" in t) == ("file" in t):
        raise SpecError(f"{f}: target: expected exactly one of 'set' (a real set name) or 'file' (a trajectory .npz)")
    if "set" in t and t["set"] != "nominal" and t["set"] not in env.real_sets:
        known = ", ".join(["nominal", *env.real_sets])
        raise SpecError(f"{f}: target.set: unknown real set {t['set']!r}; expected one of {known}")
    file = None
    if "file" in t:
        file = Path(t["file"])
        file = file if file.is_absolute() else folder / file
        if not file.is_file():
            raise SpecError(f"{f}: target.file: no such file {file}")
    return TargetSpec(
        set=t.get("set"),
        file=file,
        episodes=_positive_int(t.get("episodes", 4), f"{f}: target.episodes"),
        refresh_every=_positive_int(t.get("refresh_every", 10), f"{f}: target.refresh_every", allow_zero=True),
    )


def _nested(fn, f: str, key: str) -> Any:
    try:
        return fn()
    except SpecError as exc:
        msg = str(exc)
        # An error inside the env/agent file already names that file; one about finding
        # it names this experiment's key.
        if "not found" in msg.split(";")[0]:
            raise SpecError(f"{f}: {key}: {msg}") from None
        raise
