"""Sensor and actuator terms: observation noise/bias/scale and action latency.

Their magnitudes are ordinary parameters with targets ``obs.noise_std[...]``,
``obs.bias[...]``, ``obs.scale[...]`` (elements are observation indices: ``*``, ``3``,
``0|2|5`` or a slice ``0:5``) and ``action.delay`` (control steps), so they can be randomized
in training or shifted in a held-out set like any physical parameter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from rlsim2real.distributions import Distribution
from rlsim2real.params import Param, ParamSpace, SpecError, apply_mode
from rlsim2real.wrappers.base import RandomizationWrapper

OBS_FIELDS = ("obs.noise_std", "obs.bias", "obs.scale")
MAX_DELAY = 1000
# Rows of noise per generator call. Noise has a generator of its own (separate from the one
# that samples parameters), and unused rows carry over from one episode to the next, so the
# block size changes neither the parameters drawn nor the cost of a reset.
NOISE_BLOCK = 64
_FLOAT64 = np.dtype(np.float64)


def _obs_indices(element: str | None, dim: int, where: str) -> np.ndarray:
    if element is None or element == "*":
        return np.arange(dim)
    out: list[int] = []
    for token in element.split("|"):
        token = token.strip().lstrip("#")
        try:
            if ":" in token:
                start, stop = (int(t) if t else None for t in token.split(":", 1))
                out.extend(range(dim)[slice(start, stop)])
            else:
                out.append(int(token))
        except ValueError:
            raise SpecError(f"{where}: observation element {token!r} must be an index, a|b or a slice a:b") from None
    bad = [i for i in out if not 0 <= i < dim]
    if bad or not out:
        raise SpecError(f"{where}: observation indices {bad or element} out of range 0..{dim - 1}")
    return np.array(sorted(set(out)), dtype=np.intp)


class ObservationNoise(RandomizationWrapper):
    """Corrupt observations as a sensor would: ``obs * scale + bias + N(0, noise_std^2)``.

    All three are per-dimension vectors whose nominal values are given here and whose
    entries can be randomized by parameters (``obs.noise_std[*]``, ``obs.bias[0:3]``, ...).
    Noise is drawn from this wrapper's own seeded generator, so seeded episodes repeat.

    Args:
        env: Env with a ``Box`` observation space.
        space: Parameters with ``obs.*`` targets.
        noise_std: Nominal noise standard deviation (scalar or per dimension).
        bias: Nominal bias (scalar or per dimension).
        scale: Nominal gain (scalar or per dimension).
        distribution: What to sample; defaults to each Param's own range and dist.
        seed: Seeds the sampler and the noise (two streams); ``reset(seed=s)`` re-seeds both.
        resample_every: Also re-sample the magnitudes every this many steps.

    Example:
        >>> import gymnasium as gym
        >>> env = ObservationNoise(gym.make("InvertedPendulum-v5"),
        ...                        [Param("bias", "obs.bias[0]", (0.1, 0.1), mode="abs")], seed=0)
        >>> shifted, _ = env.reset(seed=1)
        >>> clean, _ = gym.make("InvertedPendulum-v5").reset(seed=1)
        >>> round(float(shifted[0] - clean[0]), 6)
        0.1
    """

    kind = "obs"
    # Salt of the noise stream (the joint sample has a stream of its own).
    noise_salt = 0x5EED02

    def __init__(
        self,
        env: gym.Env,
        space: ParamSpace | Iterable[Param] = (),
        noise_std: float | np.ndarray = 0.0,
        bias: float | np.ndarray = 0.0,
        scale: float | np.ndarray = 1.0,
        distribution: Distribution | None = None,
        seed: int | None = None,
        resample_every: int | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, space=space, noise_std=noise_std, bias=bias, scale=scale, distribution=distribution,
            seed=seed, resample_every=resample_every,
        )
        super().__init__(env, space, distribution, seed, resample_every)
        box = env.observation_space
        if not isinstance(box, gym.spaces.Box):
            raise SpecError(f"ObservationNoise needs a Box observation space, got {box}")
        shape = box.shape
        self._nominal = {
            "obs.noise_std": np.broadcast_to(np.asarray(noise_std, dtype=np.float64), shape).copy(),
            "obs.bias": np.broadcast_to(np.asarray(bias, dtype=np.float64), shape).copy(),
            "obs.scale": np.broadcast_to(np.asarray(scale, dtype=np.float64), shape).copy(),
        }
        if np.any(self._nominal["obs.noise_std"] < 0):
            raise SpecError("ObservationNoise: noise_std must be >= 0")
        flat_dim = int(np.prod(shape))
        self._targets: list[tuple[Param, str, np.ndarray]] = []
        for p in self.space:
            where = f"param {p.name!r}"
            if p.parsed.field not in OBS_FIELDS:
                raise SpecError(f"{where}: unknown sensor field {p.parsed.field!r}; expected one of {', '.join(OBS_FIELDS)}")
            idx = _obs_indices(p.parsed.element, flat_dim, where)
            self._targets.append((p, p.parsed.field, idx))
            for value in (*p.range, *(p.limits or ())):
                self._check_value(p.name, value)
        self._nominal_flat = {k: v.reshape(-1) for k, v in self._nominal.items()}
        self._plan = [(k, p.mode, field, idx, self._nominal_flat[field][idx]) for k, (p, field, idx) in enumerate(self._targets)]
        self._field_plans = [self._plan_field(field) for field in OBS_FIELDS]
        self._noise_z = np.empty((NOISE_BLOCK, *shape))  # standard normals
        self._noise_buffer = np.empty((NOISE_BLOCK, *shape))  # bias + std * z, row by row
        self._noise_row = NOISE_BLOCK  # drawn when first needed
        self._applied: list[float] | None = None
        self._set_current(None)  # nominal until the first sample
        self._join()

    def _plan_field(self, field: str) -> tuple[str, str, list, float | None]:
        """How ``field`` is computed from the sampled values, decided once.

        ``"nominal"``: no term. ``"whole"``: one term has the last word on every element,
        so the vector is one operation on the nominal one. ``"termwise"``: a copy of
        nominal, written term by term in order. When every nominal element is the same
        number ``c`` (a scalar ``noise_std``/``bias``/``scale``, the usual case), the first
        two give a uniform vector, kept as one float64 scalar: numpy broadcasts it alike,
        and a reset then makes no arrays at all.
        """
        nominal = self._nominal_flat[field]
        terms = [t for t in self._plan if t[2] == field]
        owner = np.full(nominal.size, -1, dtype=np.intp)
        for k, (_, _, _, idx, _) in enumerate(terms):
            owner[idx] = k
        how = "nominal" if not terms else "whole" if set(owner.tolist()) == {len(terms) - 1} else "termwise"
        uniform = float(nominal[0]) if nominal.size and bool((nominal == nominal[0]).all()) else None
        return field, how, terms[-1:] if how == "whole" else terms, uniform

    def nominal_value(self, name: str) -> float:
        p, field, idx = self._targets[self.space.index(name)]
        if p.identity is not None:
            return p.identity
        return float(np.mean(self._nominal[field].reshape(-1)[idx]))

    def _check_value(self, name: str, value: float) -> None:
        p, field, idx = self._targets[self.space.index(name)]
        if field == "obs.noise_std":
            new = apply_mode(p.mode, self._nominal[field].reshape(-1)[idx], value)
            if np.any(new < 0):
                raise SpecError(f"param {name!r}: {p.mode} {value:g} makes the noise std negative; expected >= 0")

    def _seed_streams(self, seed: int | None) -> None:
        self._noise_rng = np.random.default_rng(None if seed is None else [int(seed) & 0xFFFFFFFF, self.noise_salt, 1])
        self._noise_row = NOISE_BLOCK  # re-seeded: the next step starts a fresh block

    def _stream_state(self) -> Any:
        return {"rng": self._noise_rng.bit_generator.state, "z": self._noise_z.copy(), "row": self._noise_row}

    def _load_stream_state(self, state: Any) -> None:
        self._noise_rng.bit_generator.state = state["rng"]
        self._noise_z[...] = state["z"]
        self._noise_row = int(state["row"])
        self._applied = None  # the next sample rescales the restored leftover rows

    def _apply(self, values: np.ndarray) -> None:
        listed = values.tolist()
        if listed == self._applied:
            return
        self._set_current(values)
        self._applied = listed
        if self._noise_row < NOISE_BLOCK:  # rows left over: rescale them to the new std/bias
            np.multiply(self._noise_z, self._std, out=self._noise_buffer)
            self._noise_buffer += self._bias

    def _set_current(self, values: np.ndarray | None) -> None:
        # Unpacked once per sample so that the per-step path is plain arithmetic.
        # ``values=None``: the nominal vectors, whatever the terms.
        current: dict[str, np.float64 | np.ndarray] = {}
        for field, how, terms, uniform in self._field_plans:
            nominal = self._nominal_flat[field]
            if values is None:
                how, terms = "nominal", []
            if how == "termwise":
                vector = nominal.copy()
                for k, mode, _, idx, nominal_part in terms:
                    vector[idx] = apply_mode(mode, nominal_part, float(values[k]))
                current[field] = vector.reshape(self._nominal[field].shape)
            elif uniform is not None:  # the same IEEE operation as on each element
                current[field] = np.float64(apply_mode(terms[0][1], uniform, float(values[terms[0][0]])) if terms else uniform)
            else:  # never written in place, so "nominal" can share the cached vector
                vector = apply_mode(terms[0][1], nominal, float(values[terms[0][0]])) if terms else nominal
                current[field] = vector.reshape(self._nominal[field].shape)
        self._current = current
        self._std, self._bias, self._scale = current["obs.noise_std"], current["obs.bias"], current["obs.scale"]
        self._noisy = _any_nonzero(self._std)
        self._identity = not self._noisy and not _any_nonzero(self._bias) and not _any_nonzero(self._scale - 1.0)

    def _draw_noise(self) -> None:
        # bias + std * N(0, 1), drawn in blocks: one generator call and one vectorized
        # multiply-add per NOISE_BLOCK steps instead of per step, written into one buffer
        # (each row is consumed by one step's addition before the buffer is drawn again).
        self._noise_rng.standard_normal(out=self._noise_z)
        np.multiply(self._noise_z, self._std, out=self._noise_buffer)
        self._noise_buffer += self._bias
        self._noise_row = 0

    def _steps_work(self) -> bool:
        return not self._identity

    def _fast_step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._noisy and type(obs) is np.ndarray and obs.dtype is _FLOAT64:
            # The common case, inlined (this runs at every step): float64 in, float64 out.
            if self._noise_row == NOISE_BLOCK:
                self._draw_noise()
            out = obs * self._scale
            out += self._noise_buffer[self._noise_row]
            self._noise_row += 1
            return out, reward, terminated, truncated, info
        return self._observe(obs), reward, terminated, truncated, info

    def _observe(self, obs: Any) -> Any:
        if self._identity:
            return obs
        dtype = obs.dtype if isinstance(obs, np.ndarray) else np.asarray(obs).dtype
        # Computed in (at least) float64, whatever the observation's dtype, then cast back.
        out = np.multiply(obs, self._scale, dtype=np.result_type(dtype, np.float64))
        if self._noisy:
            if self._noise_row == NOISE_BLOCK:
                self._draw_noise()
            out += self._noise_buffer[self._noise_row]
            self._noise_row += 1
        else:
            out += self._bias
        return out if out.dtype == dtype else out.astype(dtype)


def _any_nonzero(x: np.float64 | np.ndarray) -> bool:
    # A scalar is tested directly; for arrays count_nonzero is the cheapest test numpy has.
    return bool(x) if type(x) is np.float64 else np.count_nonzero(x) > 0


class ActionDelay(RandomizationWrapper):
    """Apply each action ``delay`` control steps late, as a slow actuator or bus would.

    Until ``delay`` actions have been queued in an episode, the env receives zeros (clipped
    into the action space). The delay is a parameter with target ``action.delay`` (rounded
    to whole steps), so it can be randomized per episode.

    Args:
        env: Env with a ``Box`` action space.
        space: At most one parameter, with target ``action.delay``.
        delay: Nominal delay in control steps.
        distribution: What to sample; defaults to the Param's own range and dist.
        seed: Seeds the sampler; ``reset(seed=s)`` re-seeds it.

    Example:
        >>> import gymnasium as gym
        >>> env = ActionDelay(gym.make("InvertedPendulum-v5"), delay=2, seed=0)
        >>> _ = env.reset(seed=0)
        >>> env.get_wrapper_attr("delay")
        2
    """

    kind = "action"

    def __init__(
        self,
        env: gym.Env,
        space: ParamSpace | Iterable[Param] = (),
        delay: int = 0,
        distribution: Distribution | None = None,
        seed: int | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, space=space, delay=delay, distribution=distribution, seed=seed)
        super().__init__(env, space, distribution, seed)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise SpecError(f"ActionDelay needs a Box action space, got {env.action_space}")
        if len(self.space) > 1 or any(p.parsed.field != "action.delay" for p in self.space):
            raise SpecError(f"ActionDelay takes one parameter with target 'action.delay', got {list(self.space.names)}")
        self._nominal_delay = int(delay)
        for p in self.space:
            for value in (*p.range, *(p.limits or ())):
                self._check_value(p.name, value)
        self._check_delay(self._nominal_delay, "ActionDelay: delay")
        low, high = env.action_space.low, env.action_space.high
        self._neutral = np.clip(np.zeros(env.action_space.shape, dtype=env.action_space.dtype), low, high)
        self.delay = self._nominal_delay
        self._queue: deque = deque()
        self._delay_param = next(iter(self.space), None)
        self._join()

    @staticmethod
    def _check_delay(delay: float, where: str) -> None:
        if not 0 <= round(delay) <= MAX_DELAY:
            raise SpecError(f"{where}: delay {delay:g} must be between 0 and {MAX_DELAY} control steps")

    def nominal_value(self, name: str) -> float:
        identity = self.space[name].identity
        return float(self._nominal_delay) if identity is None else identity

    def _check_value(self, name: str, value: float) -> None:
        self._check_delay(self._delay_for(name, value), f"param {name!r}")

    def _delay_for(self, name: str, value: float) -> float:
        # On Python floats: what numpy would compute, without its call costs.
        return apply_mode(self.space[name].mode, float(self._nominal_delay), value)

    def _apply(self, values: np.ndarray) -> None:
        delay = self._nominal_delay
        if self._delay_param is not None:  # at most one: this layer's own parameter
            delay = int(round(self._delay_for(self._delay_param.name, float(values[0]))))
        queue = self._queue
        # Mid-episode (``resample_every``): keep the actions in flight; a longer delay holds
        # the next ones back with neutral actions, a shorter one drops the oldest.
        while len(queue) < delay:
            queue.appendleft(self._neutral.copy())
        while len(queue) > delay:
            queue.popleft()
        self.delay = delay

    def _start_episode(self) -> None:
        self._queue = deque([self._neutral.copy() for _ in range(self.delay)])

    def _steps_work(self) -> bool:
        return self.delay > 0

    def _fast_step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        queue = self._queue
        # A copy, so that a caller reusing its action array cannot change a queued action
        # (``ndarray.copy`` is the cheaper call for the usual plain array).
        queue.append(action.copy() if type(action) is np.ndarray else np.array(action, copy=True))
        return self.env.step(queue.popleft())

    def _act(self, action: Any) -> Any:
        if self.delay == 0:
            return action
        self._queue.append(action.copy() if type(action) is np.ndarray else np.array(action, copy=True))
        return self._queue.popleft()
