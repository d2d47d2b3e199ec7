"""Dynamics randomization: write sampled physical parameters into the ``MjModel``."""

from __future__ import annotations

from collections.abc import Iterable

import gymnasium as gym
import mujoco
import numpy as np

from rlsim2real.distributions import Distribution
from rlsim2real.mjfields import FIELDS, BoundParam, bind, field_array, struct_attr, write_field
from rlsim2real.params import Param, ParamSpace, SpecError, apply_mode
from rlsim2real.wrappers.base import RandomizationWrapper


class DynamicsRandomization(RandomizationWrapper):
    """Randomize MuJoCo model fields (masses, friction, damping, gains, gravity, ...).

    Every sample is applied to the nominal values cached when the wrapper was built, so
    nothing compounds across resets. Scaling a body's mass scales its inertia by the same
    factor, and ``mujoco.mj_setConst`` recomputes derived constants after fields that need
    it. The values in force are in ``info["dr_params"]`` at reset and in the ``params``
    attribute (read it with ``env.get_wrapper_attr("params")``).

    Args:
        env: A MuJoCo Gymnasium env (``env.unwrapped.model`` is an ``MjModel``).
        space: Parameters whose targets are model fields, e.g. ``body_mass[torso]``.
        distribution: What to sample; defaults to each Param's own range and dist.
        seed: Seeds the sampler; ``reset(seed=s)`` re-seeds it.
        resample_every: Also re-sample every this many steps within an episode.

    Raises:
        SpecError: on an unknown field or element name, or a range that makes a mass,
            inertia or other positive quantity non-positive.

    Example:
        >>> import gymnasium as gym
        >>> from rlsim2real.params import Param
        >>> env = DynamicsRandomization(
        ...     gym.make("InvertedPendulum-v5"),
        ...     [Param("pole_mass", "body_mass[pole]", (0.5, 2.0))], seed=0)
        >>> obs, info = env.reset(seed=0)
        >>> 0.5 <= info["dr_params"]["pole_mass"] <= 2.0
        True
        >>> env.pin({"pole_mass": 2.0}); _ = env.reset()
        >>> float(env.unwrapped.model.body_mass[2] / env.get_wrapper_attr("nominal_model_value")("body_mass")[2])
        2.0
    """

    kind = "model"

    def __init__(
        self,
        env: gym.Env,
        space: ParamSpace | Iterable[Param] = (),
        distribution: Distribution | None = None,
        seed: int | None = None,
        resample_every: int | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, space=space, distribution=distribution, seed=seed, resample_every=resample_every
        )
        model = getattr(env.unwrapped, "model", None)
        if not isinstance(model, mujoco.MjModel):
            raise SpecError(f"DynamicsRandomization needs a MuJoCo env; {env.unwrapped!r} has no MjModel")
        space = space if isinstance(space, ParamSpace) else ParamSpace(space)
        self._model = model
        self._bound: list[BoundParam] = [bind(model, p) for p in space if p.parsed.kind == "model"]
        fields = {b.field for b in self._bound}
        if "body_mass" in fields:
            fields.add("body_inertia")
        # Cached once: every sample starts from these, never from the live model.
        self._nominal = {f: np.array(field_array(model, f), copy=True) for f in sorted(fields)}
        self._needs_const = any(FIELDS[f].set_const for f in fields)
        # Each term as (position in this layer's vector, mode, field, flat indices into the
        # field, nominal values of those entries).
        self._plan = [
            (k, b.param.mode, b.field, self._flat_index(b), b.nominal.reshape(-1)) for k, b in enumerate(self._bound)
        ]
        # Live views of the model's arrays; scalar options (opt.timestep, ...) have no view
        # and are written through a one-element buffer.
        self._live = {f: field_array(model, f) for f in self._nominal}
        self._scalar_opts = [f for f in self._live if "." in f and not isinstance(struct_attr(model, f), np.ndarray)]
        for f in self._scalar_opts:
            self._live[f] = np.array(self._nominal[f], copy=True)
        self._live_flat = {f: arr.reshape(-1) for f, arr in self._live.items()}
        if any(not np.shares_memory(self._live_flat[f], self._live[f]) for f in self._live):
            raise RuntimeError("MjModel field arrays are expected to be contiguous")
        self._plan_fields()
        # Colours and the like are clipped to their valid interval after every write.
        self._clipped = [(self._live[f], *FIELDS[f].clip) for f in self._nominal if FIELDS[f].clip is not None]
        if "body_mass" in fields:
            # Inertia follows mass: inertia = nominal inertia * (mass / nominal mass), for
            # bodies with a positive nominal mass (ratio 1 for the others, e.g. the world).
            nominal_mass = self._nominal["body_mass"]
            self._mass_positive = nominal_mass > 0
            self._mass_divisor = np.where(self._mass_positive, nominal_mass, 1.0)
            self._mass_ratio = np.ones_like(nominal_mass)  # entries outside the mask stay 1
            self._mass_ratio_column = self._mass_ratio[:, None]
        else:
            self._mass_positive = None
        # ``mj_setConst`` is needed only when a term on a field that derived constants
        # depend on takes a new value (friction or damping alone leave them valid).
        self._const_at = [k for k, b in enumerate(self._bound) if FIELDS[b.field].set_const]
        self._scratch = mujoco.MjData(model) if self._needs_const else None
        self._applied: list[float] | None = None
        super().__init__(env, space, distribution, seed, resample_every)
        self._join()

    def _plan_fields(self) -> None:
        """Decide, once, how each field is rebuilt from its nominal values at every sample.

        A field whose terms all scale is rebuilt in one multiplication: nominal values times a
        factor per element, gathered from the sampled values (factor 1 where no term writes;
        where terms overlap, the later one wins, as it would writing one after the other). A
        term that covers the whole field multiplies by its value directly. Fields with an
        ``add`` or ``abs`` term are restored to nominal and written term by term.
        """
        self._scale_at = np.array([k for k, mode, *_ in self._plan if mode == "scale"], dtype=np.intp)
        one = len(self._scale_at)  # index of the factor 1.0 after the sampled values
        position = {int(k): j for j, k in enumerate(self._scale_at)}
        self._factors = np.ones(one + 1)
        self._whole_fields: list[tuple[int, np.ndarray, np.ndarray]] = []  # (position, nominal, live)
        self._gathered_fields: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (owner, nominal, live)
        self._termwise_fields: list[tuple[str, list]] = []
        # Inertia without terms of its own is written from the mass ratio, after the masses.
        self._inertia_has_terms = any(t[2] == "body_inertia" for t in self._plan)
        for f in self._nominal:
            terms = [t for t in self._plan if t[2] == f]
            if not terms:
                continue
            if any(mode != "scale" for _, mode, *_ in terms) or f == "body_inertia":
                self._termwise_fields.append((f, terms))
                continue
            nominal, live = self._nominal[f].reshape(-1), self._live_flat[f]
            owner = np.full(nominal.size, one, dtype=np.intp)
            for k, _, _, index, _ in terms:
                owner[index] = position[k]
            owners = set(owner.tolist())
            if len(owners) == 1 and one not in owners:
                self._whole_fields.append((int(self._scale_at[owners.pop()]), nominal, live))
            else:
                self._gathered_fields.append((owner, nominal, live))

    def nominal_model_value(self, field: str) -> np.ndarray:
        """A copy of ``field`` as it was when the wrapper was built."""
        if field in self._nominal:
            return self._nominal[field].copy()
        return np.array(field_array(self._model, field), copy=True)

    def nominal_value(self, name: str) -> float:
        return self._bound[self.space.index(name)].nominal_value()

    def _steps_work(self) -> bool:
        return False  # the model is written at reset; nothing happens per step

    def _check_value(self, name: str, value: float) -> None:
        self._bound[self.space.index(name)].check_value(value, f"param {name!r}")

    def _flat_index(self, b: BoundParam) -> np.ndarray:
        shape = self._nominal[b.field].shape
        return np.arange(int(np.prod(shape)), dtype=np.intp).reshape(shape)[b.index].reshape(-1)

    def _apply(self, values: np.ndarray) -> None:
        # A list compare is the cheapest equality test for a handful of floats.
        listed = values.tolist()
        applied = self._applied
        if listed == applied:
            return
        # Every field is rebuilt from its cached nominal values, straight into the model's
        # arrays: this runs at every reset, so as few numpy calls as the terms allow.
        if self._gathered_fields:
            factors = self._factors
            factors[:-1] = values[self._scale_at]
            for owner, nominal, live in self._gathered_fields:
                np.multiply(nominal, factors.take(owner), out=live)
        for k, nominal, live in self._whole_fields:
            np.multiply(nominal, values[k], out=live)
        for f, terms in self._termwise_fields:
            flat = self._live_flat[f]
            flat[...] = self._nominal[f].reshape(-1)
            for k, mode, _, index, nominal in terms:
                flat[index] = apply_mode(mode, nominal, float(values[k]))
        live = self._live
        if self._mass_positive is not None:
            np.divide(live["body_mass"], self._mass_divisor, out=self._mass_ratio, where=self._mass_positive)
            if self._inertia_has_terms:  # already rebuilt from nominal, term by term
                live["body_inertia"] *= self._mass_ratio_column
            else:
                np.multiply(self._nominal["body_inertia"], self._mass_ratio_column, out=live["body_inertia"])
        for arr, lo, hi in self._clipped:
            np.clip(arr, lo, hi, out=arr)
        for f in self._scalar_opts:
            write_field(self._model, f, live[f])
        if self._needs_const:
            if applied is None or any(listed[k] != applied[k] for k in self._const_at):
                mujoco.mj_setConst(self._model, self._scratch)
        self._applied = listed

