"""Shared machinery of the randomization wrappers: sampling, seeding, pinning, reporting.

Each concrete wrapper (dynamics, observation noise, action delay) owns the parameters of
one kind, samples them from its :class:`~rlsim2real.distributions.Distribution` with its own
seeded generator, and applies them. Calls that concern every layer (``set_distribution``,
``pin``, ``unpin``, ``params``) are answered by the outermost randomization wrapper and
passed down, so a user or a VecEnv talks to the stack as one thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from rlsim2real.distributions import BoxDistribution, Distribution, Fixed
from rlsim2real.params import Param, ParamSpace, SpecError


# Distributions whose ``sample`` returns Python floats for names of the layer's own subset
# only (``subset`` keeps just those), so their samples need no filtering or conversion.
# Exact types: a subclass may override ``sample``.
_EXACT_SAMPLERS = (BoxDistribution, Fixed)


class RandomizationWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Base class: samples this layer's parameters at reset (or every N steps) and applies them.

    Subclasses set :attr:`kind` and :attr:`salt`, and implement :meth:`_apply` and
    :meth:`nominal_value`.

    Args:
        env: The env to wrap.
        space: This layer's parameters (all of kind :attr:`kind`).
        distribution: What to sample from; defaults to each Param's own range and dist.
        seed: Seeds the sampler (and the first ``reset`` if it is called without a seed).
        resample_every: Draw new values every this many steps within an episode as well
            (``None``: only at reset).
    """

    kind: str = "model"
    salt: int = 0

    def __init__(
        self,
        env: gym.Env,
        space: ParamSpace | Iterable[Param] = (),
        distribution: Distribution | None = None,
        seed: int | None = None,
        resample_every: int | None = None,
    ) -> None:
        gym.Wrapper.__init__(self, env)
        space = space if isinstance(space, ParamSpace) else ParamSpace(space)
        wrong = [p.name for p in space if p.parsed.kind != self.kind]
        if wrong:
            raise SpecError(f"{type(self).__name__} takes {self.kind} parameters only, got {', '.join(wrong)}")
        if resample_every is not None and int(resample_every) < 1:
            raise SpecError(f"resample_every must be a positive number of steps, got {resample_every}")
        self.space = space
        self.resample_every = None if resample_every is None else int(resample_every)
        self._distribution: Distribution = (
            distribution.subset(space.names) if distribution is not None else BoxDistribution(space)
        )
        self._pinned: dict[str, float] | None = None
        self._pending_seed = seed
        self._rng = self._make_rng(seed)
        self._values: dict[str, float] = {}
        # This layer's values and those of every layer inside it, as reported in
        # ``info["dr_params"]`` at the last reset (see ``reset``).
        self._reset_params: dict[str, float] | None = None
        self._nominal_values: dict[str, float] | None = None
        self._steps = 0
        # The next randomization layer inside, found once: calls that concern every layer
        # are passed to it (``has_wrapper_attr`` would evaluate ``params`` at every level).
        inner = env
        while isinstance(inner, gym.Wrapper) and not isinstance(inner, RandomizationWrapper):
            inner = inner.env
        self._inner_layer: RandomizationWrapper | None = inner if isinstance(inner, RandomizationWrapper) else None

    # -- seeding -----------------------------------------------------------------------
    def _make_rng(self, seed: int | None) -> np.random.Generator:
        # Each layer draws from its own stream, derived from the episode seed and a salt, so
        # adding a layer never changes what another layer samples.
        if seed is None:
            return np.random.default_rng()
        return np.random.default_rng([int(seed) & 0xFFFFFFFF, self.salt])

    # -- what to run on --------------------------------------------------------------
    @property
    def distribution(self) -> Distribution:
        """This layer's current distribution (its own parameters only)."""
        return self._distribution

    def set_distribution(self, distribution: Distribution) -> None:
        """Sample from ``distribution`` from the next reset on (every layer takes its part)."""
        self._distribution = distribution.subset(self.space.names)
        inner = self._inner("set_distribution")
        if inner is not None:
            inner(distribution)

    def pin(self, values: Mapping[str, float]) -> None:
        """Run on fixed values from the next reset on; parameters not named stay nominal.

        Raises:
            SpecError: if a name is not a parameter of any layer.
        """
        unknown = sorted(set(values) - set(self.all_param_names))
        if unknown:
            raise SpecError(
                f"pin: unknown parameters {', '.join(unknown)}; known: {', '.join(self.all_param_names) or '(none)'}"
            )
        own = {k: float(v) for k, v in values.items() if k in self.space}
        for name, value in own.items():
            self._check_value(name, value)
        self._pinned = own
        inner = self._inner("pin")
        if inner is not None:
            inner({k: v for k, v in values.items() if k not in self.space})

    def unpin(self) -> None:
        """Go back to sampling the distribution from the next reset on."""
        self._pinned = None
        inner = self._inner("unpin")
        if inner is not None:
            inner()

    @property
    def pinned(self) -> bool:
        return self._pinned is not None

    @property
    def all_param_names(self) -> tuple[str, ...]:
        """Names of the parameters of this layer and every randomization layer inside it."""
        inner = self._inner("all_param_names")
        return tuple(inner or ()) + self.space.names

    @property
    def params(self) -> dict[str, float]:
        """Values in force this episode, by name, for this layer and the layers inside it."""
        inner = self._inner("params")
        out = dict(inner) if inner else {}
        out.update(self._values)
        return out

    def _inner(self, name: str) -> Any:
        return None if self._inner_layer is None else getattr(self._inner_layer, name)

    # -- the gym API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        if seed is not None:
            self._rng = self._make_rng(seed)
        self._resample()
        self._steps = 0
        obs, info = self.env.reset(seed=seed, options=options)
        # Routed again now that the layers inside have re-routed their own ``step`` in that
        # reset: a passive layer binds the inner ``step`` it finds, and the one bound in
        # ``_resample`` was the previous episode's (a delay of 0 then would skip a delay now).
        self._route_step()
        obs = self._observe(obs)
        # The layer inside has just been reset too and kept the dict it reported: extend a
        # copy of it with this layer's values, rather than asking ``params`` (which would
        # rebuild the dicts of every inner layer again, at every level).
        inner = self._inner_layer
        inner_params = None if inner is None else inner._reset_params
        if inner_params is None and inner is not None:  # a wrapper between did not pass reset on
            inner_params = inner.params
        params = {**inner_params, **self._values} if inner_params else dict(self._values)
        self._reset_params = params
        info["dr_params"] = params
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(self._act(action))
        obs = self._observe(obs)
        self._steps += 1
        if self.resample_every and self._steps % self.resample_every == 0 and self._pinned is None:
            self._resample()
            info["dr_params"] = self.params
        return obs, reward, terminated, truncated, info

    def _route_step(self) -> None:
        # A layer with nothing to do per step (dynamics already written, zero delay, no
        # sensor corruption) hands ``step`` straight to the env inside: the instance
        # attribute shadows the method, so a passive layer costs no Python frame on the
        # hot path. Decided again after every sample.
        if self.resample_every:
            self.__dict__.pop("step", None)
        elif not self._steps_work():
            self.step = self.env.step
        else:
            self.step = self._fast_step

    def _fast_step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """``step`` without the resampling bookkeeping; subclasses may specialize it."""
        obs, reward, terminated, truncated, info = self.env.step(self._act(action))
        return self._observe(obs), reward, terminated, truncated, info

    def _resample(self) -> None:
        if self._nominal_values is None:  # nominal values never change: look them up once
            self._nominal_values = {p.name: self.nominal_value(p.name) for p in self.space}
        nominal = self._nominal_values
        if self._pinned is not None:
            drawn, exact = self._pinned, True
        else:
            drawn = self._distribution.sample(self._rng)
            exact = type(self._distribution) in _EXACT_SAMPLERS
        if exact:
            # Python floats for a subset of this layer's names: overlaying them on the
            # nominal values gives the same dict, in the same order, in one step.
            values = {**nominal, **drawn}
        else:  # any other Distribution: keep only our names, as floats
            values = {name: float(drawn[name]) if name in drawn else value for name, value in nominal.items()}
        self._apply(values)
        self._values = values
        self._route_step()

    # -- hooks for subclasses ---------------------------------------------------------
    def nominal_value(self, name: str) -> float:
        """The value of parameter ``name`` that leaves this layer at its nominal state."""
        raise NotImplementedError

    def _check_value(self, name: str, value: float) -> None:
        """Raise :class:`SpecError` if ``value`` is unphysical for parameter ``name``."""

    def _apply(self, values: dict[str, float]) -> None:
        raise NotImplementedError

    def _steps_work(self) -> bool:
        """Whether :meth:`_act` or :meth:`_observe` must run on every step now."""
        return True

    def _act(self, action: Any) -> Any:
        return action

    def _observe(self, obs: Any) -> Any:
        return obs
