"""Shared machinery of the randomization layers: joining the joint sampler, reset, step.

Each concrete layer (dynamics, observation noise, action delay) owns the parameters of one
kind and applies the slice of the joint sample that belongs to them. Sampling itself is not
theirs: all layers of one env join one :class:`~rlsim2real.wrappers.randomizer.Randomizer`,
and the outermost layer draws ONE vector over the whole space per episode. Calls that
concern every layer (``set_distribution``, ``pin``, ``unpin``, ``params``,
``sampler_state``) are answered by the randomizer, so a user or a VecEnv talks to the stack
as one thing, from any layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from rlsim2real.distributions import Distribution
from rlsim2real.params import Param, ParamSpace, SpecError
from rlsim2real.wrappers.randomizer import EpisodeSample, Randomizer


class RandomizationWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Base class: applies this layer's slice of the env's joint sample.

    Subclasses set :attr:`kind` and implement :meth:`_apply` (which receives this layer's
    values as a vector ordered like :attr:`space`) and :meth:`nominal_value`.

    The outermost layer drives the shared sampler: it draws at reset (and every
    ``resample_every`` steps), reports ``info["dr_params"]`` at reset, and on the last step
    of an episode puts what the episode ran on in ``info["dr_episode"]`` (an
    :class:`~rlsim2real.wrappers.randomizer.EpisodeSample`), for the strategy's feedback.

    Args:
        env: The env to wrap.
        space: This layer's parameters (all of kind :attr:`kind`).
        distribution: What to sample (it may name parameters of other layers of this env);
            defaults to each Param's own range and dist.
        seed: Seeds the sampler (and the first ``reset`` if it is called without a seed).
        resample_every: Draw new values every this many steps within an episode as well
            (``None``: only at reset).
    """

    kind: str = "model"

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
        self._steps = 0
        self._episode: EpisodeSample | None = None
        # The randomization layer inside (through any other wrappers): its sampler is ours.
        inner = env
        while isinstance(inner, gym.Wrapper) and not isinstance(inner, RandomizationWrapper):
            inner = inner.env
        self._randomizer = inner._randomizer if isinstance(inner, RandomizationWrapper) else Randomizer()
        self._join_args = (distribution, seed, resample_every)

    def _join(self) -> None:
        """Join the env's joint sampler; subclasses call it last in ``__init__``, once they
        are valid, so a layer that fails to build leaves the layers inside untouched."""
        distribution, seed, resample_every = self._join_args
        self._randomizer.join(self, distribution, seed, resample_every)
        self._seed_streams(self._randomizer.pending_seed)

    # -- what to run on (answered by the shared sampler) -------------------------------
    @property
    def randomizer(self) -> Randomizer:
        return self._randomizer

    @property
    def distribution(self) -> Distribution:
        """The env's current distribution (over the whole joint space)."""
        return self._randomizer.distribution

    def set_distribution(self, distribution: Distribution) -> None:
        """Sample from ``distribution`` from the next reset on (every layer takes its part).

        Raises:
            SpecError: on an unknown parameter, a support outside a parameter's limits, or
                values that break the physics.
        """
        self._randomizer.set_distribution(distribution)

    def pin(self, values: Mapping[str, float]) -> None:
        """Run on fixed values from the next reset on; parameters not named stay nominal.

        Raises:
            SpecError: if a name is not a parameter of any layer, or a value is unphysical.
        """
        self._randomizer.pin(values)

    def unpin(self) -> None:
        """Go back to sampling the distribution from the next reset on."""
        self._randomizer.unpin()

    @property
    def pinned(self) -> bool:
        return self._randomizer.pinned

    @property
    def all_param_names(self) -> tuple[str, ...]:
        """Names of the parameters of every layer of this env (the joint vector's order)."""
        return self._randomizer.space.names

    @property
    def param_names(self) -> tuple[str, ...]:
        """Alias of :attr:`all_param_names`: the order of ``info["dr_episode"].vector``."""
        return self._randomizer.space.names

    @property
    def params(self) -> dict[str, float]:
        """Values in force this episode, by name, for every layer of this env."""
        return self._randomizer.params()

    def sampler_state(self) -> dict[str, Any]:
        """Everything that decides this env's future samples (and the env's own initial
        state noise), for a checkpoint: restoring it continues the stream exactly."""
        state = self._randomizer.state_dict()
        state["env_rng"] = self.unwrapped.np_random.bit_generator.state
        return state

    def load_sampler_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`sampler_state` output; takes effect from the next reset, which
        continues the saved streams even if it is given a seed (SB3 re-seeds a VecEnv when
        it builds or loads a model: that must not replay the run's first parameters)."""
        self._randomizer.load_state_dict(state)
        if state.get("env_rng") is not None:
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = state["env_rng"]
            self.unwrapped.np_random = rng

    # -- the gym API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        randomizer = self._randomizer
        if randomizer.driver is not self:  # an inner layer: the outermost one has drawn
            obs, info = self.env.reset(seed=seed, options=options)
            self._start_episode()
            return self._observe(obs), info
        if randomizer.restored:  # continue a restored stream (see load_sampler_state)
            seed, randomizer.restored = None, False
        if seed is None:
            seed = randomizer.pending_seed
        randomizer.pending_seed = None
        if seed is not None:
            randomizer.seed(seed)
        randomizer.draw()
        self._episode = randomizer.sample()
        self._steps = 0
        obs, info = self.env.reset(seed=seed, options=options)
        self._start_episode()
        info["dr_params"] = randomizer.params()
        return self._observe(obs), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._randomizer.driver is self:
            return self._drive_step(action)
        return self._layer_step(action)

    def _layer_step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """This layer's own work on one step (no sampling, no reporting)."""
        obs, reward, terminated, truncated, info = self.env.step(self._act(action))
        return self._observe(obs), reward, terminated, truncated, info

    def _drive_step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._step_work(action)
        if terminated or truncated:
            info["dr_episode"] = self._episode
        elif self._randomizer.resample_every:
            self._steps += 1
            if self._steps % self._randomizer.resample_every == 0 and not self._randomizer.pinned:
                self._randomizer.draw()
                info["dr_params"] = self._randomizer.params()
        return obs, reward, terminated, truncated, info

    def _route_step(self) -> None:
        # A layer with nothing to do per step (dynamics already written, zero delay, no
        # sensor corruption) hands its work straight to the env inside: the instance
        # attribute shadows the method, so a passive inner layer costs no Python frame on
        # the hot path. Decided again after every sample (layers route inside out, so an
        # outer layer binds the step its inner layer has just chosen).
        works = self._steps_work()
        route = (works, self._randomizer.driver is self, self.env.step)
        if route == self.__dict__.get("_route"):
            return  # nothing changed since the last sample
        self._route = route
        work = self._fast_step if works else self.env.step
        if self._randomizer.driver is self:
            self._step_work = work
            self.__dict__.pop("step", None)
            self.step = self._drive_step
        else:
            self.step = work

    def _fast_step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """This layer's per-step work; subclasses may specialize it."""
        obs, reward, terminated, truncated, info = self.env.step(self._act(action))
        return self._observe(obs), reward, terminated, truncated, info

    def _step_work(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        return self._layer_step(action)

    # -- hooks for subclasses ---------------------------------------------------------
    def nominal_value(self, name: str) -> float:
        """The value of parameter ``name`` that leaves this layer at its nominal state."""
        raise NotImplementedError

    def _check_value(self, name: str, value: float) -> None:
        """Raise :class:`SpecError` if ``value`` is unphysical for parameter ``name``."""

    def _apply(self, values: np.ndarray) -> None:
        """Apply this layer's values, shape (len(space),), ordered like :attr:`space`."""
        raise NotImplementedError

    def _steps_work(self) -> bool:
        """Whether :meth:`_act` or :meth:`_observe` must run on every step now."""
        return True

    def _start_episode(self) -> None:
        """Clear per-episode state (queued actions); the values were applied just before."""

    def _seed_streams(self, seed: int | None) -> None:
        """Re-seed this layer's own random streams (sensor noise), if it has any."""

    def _stream_state(self) -> Any:
        """The state of this layer's own random streams, for :meth:`sampler_state`."""
        return None

    def _load_stream_state(self, state: Any) -> None:
        """Restore :meth:`_stream_state` output."""

    def _act(self, action: Any) -> Any:
        return action

    def _observe(self, obs: Any) -> Any:
        return obs
