"""Dynamics randomization: write sampled physical parameters into the ``MjModel``."""

from __future__ import annotations

from collections.abc import Iterable

import gymnasium as gym
import mujoco
import numpy as np

from rlsim2real.distributions import Distribution
from rlsim2real.mjfields import FIELDS, BoundParam, bind, field_array, write_field
from rlsim2real.params import Param, ParamSpace, SpecError
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
    salt = 0x5EED01

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
        super().__init__(env, space, distribution, seed, resample_every)
        model = getattr(env.unwrapped, "model", None)
        if not isinstance(model, mujoco.MjModel):
            raise SpecError(f"DynamicsRandomization needs a MuJoCo env; {env.unwrapped!r} has no MjModel")
        self._model = model
        self._bound: list[BoundParam] = [bind(model, p) for p in self.space]
        fields = {b.field for b in self._bound}
        if "body_mass" in fields:
            fields.add("body_inertia")
        # Cached once: every sample starts from these, never from the live model.
        self._nominal = {f: np.array(field_array(model, f), copy=True) for f in sorted(fields)}
        self._needs_const = any(FIELDS[f].set_const for f in fields)
        # Each term as flat indices into its field, element order as in ``b.nominal``, so
        # applying a sample is one assignment per term (this runs at every reset).
        self._plan = [
            (b.param.name, b.param.mode, b.field, self._flat_index(b), b.nominal.reshape(-1)) for b in self._bound
        ]
        if "body_mass" in fields:
            nominal_mass = self._nominal["body_mass"]
            self._mass_positive = nominal_mass > 0
            self._mass_divisor = np.where(self._mass_positive, nominal_mass, 1.0)
        else:
            self._mass_positive = None
        # Live views of the model's arrays; scalar options (opt.timestep, ...) have no view
        # and are written through a one-element buffer.
        self._live = {f: field_array(model, f) for f in self._nominal}
        self._scalar_opts = [
            f for f in self._live if f.startswith("opt.") and not isinstance(getattr(model.opt, f[4:]), np.ndarray)
        ]
        for f in self._scalar_opts:
            self._live[f] = np.array(self._nominal[f], copy=True)
        self._live_flat = {f: arr.reshape(-1) for f, arr in self._live.items()}
        if any(not np.shares_memory(self._live_flat[f], self._live[f]) for f in self._live):
            raise RuntimeError("MjModel field arrays are expected to be contiguous")
        self._scratch = mujoco.MjData(model) if self._needs_const else None
        self._applied: dict[str, float] | None = None

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

    def _apply(self, values: dict[str, float]) -> None:
        if values == self._applied:
            return
        # Restore the nominal values, then write each term, straight into the model's arrays.
        live = self._live
        for f, nominal in self._nominal.items():
            live[f][...] = nominal
        live_flat = self._live_flat
        for name, mode, f, index, nominal in self._plan:
            value = values[name]
            flat = live_flat[f]
            if mode == "scale":
                flat[index] = nominal * value
            elif mode == "add":
                flat[index] = nominal + value
            else:
                flat[index] = value
        if self._mass_positive is not None:
            live["body_inertia"] *= np.where(self._mass_positive, live["body_mass"] / self._mass_divisor, 1.0)[:, None]
        for f in self._scalar_opts:
            write_field(self._model, f, live[f])
        if self._needs_const:
            mujoco.mj_setConst(self._model, self._scratch)
        self._applied = dict(values)
