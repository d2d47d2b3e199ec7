"""An SB3 ``VecEnv`` of N worlds stepped together on a :class:`SimBackend`.

It behaves like ``DummyVecEnv`` over ``Monitor(make_env(spec, seed=seed + i))`` workers:
the same observations, rewards, terminations, time limits, physics guard, randomization
(dynamics, observation noise/bias/scale, action delay) and ``info`` keys (``episode``,
``dr_episode``, ``TimeLimit.truncated``, ``terminal_observation``, ``instability``;
``dr_params`` in ``reset_infos``), and it answers the same ``env_method``/``get_attr`` calls
(``set_distribution``, ``pin``, ``param_names``, ``sampler_state``, ...), so training,
strategies, checkpoints and resume run on it unchanged. Only the per-step reward terms of
the Gymnasium envs' ``info`` (``x_velocity``, ``reward_ctrl``, ...) are left out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from rlsim2real.batched.backend import BACKENDS, check_backend_options
from rlsim2real.batched.randomization import BatchedRandomization
from rlsim2real.batched.tasks import batched_support, task_for
from rlsim2real.distributions import Distribution
from rlsim2real.params import SpecError
from rlsim2real.specs import EnvSpec, load_env_spec


class BatchedVecEnv(VecEnv):
    """``n_envs`` randomized worlds of a built-in task, stepped together on ``threads`` threads.

    Args:
        spec: An :class:`EnvSpec`, a spec name (``"hopper"``) or a path.
        n_envs: Number of worlds.
        seed: World ``i`` samples and resets as a Gymnasium env seeded ``seed + i``.
        distribution: What every world samples first (default: the spec's training box).
        threads: Simulation threads, the caller's included (0: all CPUs; ``mujoco_batch`` only).
        backend: A name in :data:`~rlsim2real.batched.backend.BACKENDS`: ``"mujoco_batch"``
            (``mujoco.batch`` on CPU threads) or ``"warp"`` (MuJoCo Warp on a GPU, or on
            Warp's CPU device where there is none; needs ``pip install "rlsim2real[warp]"``).
        backend_options: The backend's own options (see
            :data:`~rlsim2real.batched.backend.BACKEND_OPTIONS`; ``warp``: ``device``,
            ``nconmax``, ``njmax``, ``deterministic``).

    Raises:
        SpecError: for an env or setting the batched env does not support.
        ImportError: for ``backend="warp"`` where ``mujoco_warp`` is not installed.

    Example:
        >>> venv = BatchedVecEnv("hopper", n_envs=4, seed=0, threads=1)
        >>> _ = venv.seed(0)
        >>> obs = venv.reset()
        >>> obs.shape, obs.dtype
        ((4, 11), dtype('float64'))
        >>> obs, rewards, dones, infos = venv.step(np.zeros((4, 3), dtype=np.float32))
        >>> rewards.shape, dones.dtype
        ((4,), dtype('bool'))
    """

    def __init__(
        self,
        spec: EnvSpec | str | os.PathLike,
        n_envs: int,
        seed: int | None = None,
        distribution: Distribution | None = None,
        threads: int = 1,
        backend: str = "mujoco_batch",
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        from rlsim2real.factory import make_env

        spec = load_env_spec(spec)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise SpecError(f"{spec.source}: backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        options = check_backend_options(backend, backend_options or {}, f"{spec.source}: backend_options")
        why = batched_support(spec)
        if why is not None:
            raise SpecError(f"{spec.source}: {why}")
        # One Gymnasium training env of the spec, never stepped: its MuJoCo env gives the
        # task's constants and the nominal model, its sampler the checks and nominal values.
        self._template = make_env(spec, distribution=distribution)
        base = self._template.unwrapped
        self.task = task_for(base)
        if self.task is None or self._template.observation_space != base.observation_space:
            # e.g. a spec whose wrappers render pixels: the tasks compute state observations only
            self._template.close()
            raise SpecError(f"{spec.source}: env {spec.env_id!r} with these settings has no batched backend")
        self.spec = spec
        self.max_episode_steps = _time_limit(self._template)
        try:
            self.backend = BACKENDS[backend](base.model, n_envs, threads, **options)
        except BaseException:
            self._template.close()
            raise
        self._timestep = self.backend.model_field("opt.timestep")[:, 0]  # per world, live
        action_space = base.action_space
        neutral = np.clip(np.zeros(action_space.shape, dtype=action_space.dtype), action_space.low, action_space.high)
        sampler = self._template.get_wrapper_attr("randomizer")
        self.randomization = BatchedRandomization(
            self.backend, sampler, base.observation_space.shape[0], neutral, distribution, seed
        )
        self._worlds = [WorldView(self, w) for w in range(n_envs)]
        super().__init__(n_envs, base.observation_space, action_space)
        self._np_random: list[np.random.Generator | None] = [None] * n_envs
        self._episodes: list[Any] = [None] * n_envs
        self._elapsed = np.zeros(n_envs, dtype=np.int64)
        self._returns = np.zeros(n_envs)
        self._lengths = np.zeros(n_envs, dtype=np.int64)
        self._last_obs = np.zeros((n_envs, *base.observation_space.shape))
        self._actions: np.ndarray | None = None
        self._t_start = time.time()
        self.unstable_steps = 0

    @property
    def threads(self) -> int:
        return self.backend.threads

    # -- the VecEnv API ------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        ids = np.arange(self.num_envs)
        obs = self._reset_worlds(ids, list(self._seeds))
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs, *self.action_space.shape)

    def step_wait(self) -> VecEnvStepReturn:
        randomization, backend = self.randomization, self.backend
        applied = randomization.delay.act(self._actions)
        x_before = backend.qpos[:, 0].copy()
        backend.step(applied, self.task.frame_skip)
        dt = self._timestep * self.task.frame_skip
        raw, reward, terminated = self.task.step(x_before, backend.qpos, backend.qvel, applied, dt)
        # PhysicsGuard: a world that diverged ends truncated, with its last finite
        # observation and reward 0.
        finite = np.logical_and.reduce(np.isfinite(raw), axis=1)
        finite &= np.isfinite(reward)
        unstable = backend.unstable_since_last_call()
        unstable |= ~finite
        if unstable.any():
            raw[unstable] = self._last_obs[unstable]
            reward[unstable] = 0.0
            self.unstable_steps += int(unstable.sum())
        self._last_obs = raw
        self._elapsed += 1
        truncated = unstable | (self._elapsed >= self.max_episode_steps)
        obs = randomization.noise.observe(raw)
        self._returns += reward
        self._lengths += 1
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        done_ids = np.flatnonzero(dones)
        if done_ids.size:
            now = round(time.time() - self._t_start, 6)
            # Read once for the worlds that ended, as Python values.
            ended = zip(done_ids.tolist(), obs[done_ids], (truncated & ~terminated)[done_ids].tolist(),
                        self._returns[done_ids].tolist(), self._lengths[done_ids].tolist(), unstable[done_ids].tolist())
            for w, terminal, time_limit, ret, length, diverged in ended:
                info = infos[w]
                info["TimeLimit.truncated"] = time_limit
                info["terminal_observation"] = terminal
                info["episode"] = {"r": round(ret, 6), "l": length, "t": now}
                info["dr_episode"] = self._episodes[w]
                if diverged:
                    info["instability"] = f"diverging state (MuJoCo warning or non-finite values) at step {length}"
            obs[done_ids] = self._reset_worlds(done_ids, [None] * done_ids.size)
        return obs, reward.astype(np.float32), dones, infos

    def _reset_worlds(self, ids: np.ndarray, seeds: Sequence[int | None]) -> np.ndarray:
        """Draw each world's parameters and initial state (as ``RandomizationWrapper.reset``
        and ``MujocoEnv.reset`` do, in that order), apply them all, return the observations.

        Each world draws from its own streams; what is done once for all of them is the
        drawing call (:meth:`BatchedRandomization.draw`), the arithmetic and the writes."""
        randomization, task = self.randomization, self.task
        worlds = ids.tolist()
        samplers = [randomization.samplers[w] for w in worlds]
        for w, sampler, seed in zip(worlds, samplers, seeds):
            if sampler.restored:  # continue a restored stream (see load_sampler_state)
                seed, sampler.restored = None, False
            if seed is None:
                seed = sampler.pending_seed
            sampler.pending_seed = None
            if seed is not None:
                sampler.seed(seed)
            if seed is not None or self._np_random[w] is None:
                self._np_random[w], _ = seeding.np_random(seed)
        episodes, params = randomization.draw(ids)
        for w, episode, values in zip(worlds, episodes, params):
            self._episodes[w] = episode
            self.reset_infos[w] = {"dr_params": values}
        qpos, qvel = task.reset_states([self._np_random[w] for w in worlds])
        randomization.apply(ids)
        self.backend.reset(ids, qpos, qvel)
        randomization.delay.start_episode(ids)
        raw = task.observe(self.backend.qpos[ids], self.backend.qvel[ids])
        self._last_obs[ids] = raw
        self._elapsed[ids] = 0
        self._returns[ids] = 0.0
        self._lengths[ids] = 0
        return randomization.noise.observe(raw, ids)

    def close(self) -> None:
        self.backend.close()
        self._template.close()

    # -- what SB3 and the strategy loop ask of workers ------------------------------------
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self._worlds[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self._worlds[i], attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        return [getattr(self._worlds[i], method_name)(*method_args, **method_kwargs) for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        # Each world reports episodes as SB3's Monitor does (evaluate_policy asks).
        return [issubclass(Monitor, wrapper_class) for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        raise NotImplementedError("BatchedVecEnv does not render; use make_env for videos")


class WorldView:
    """One world as ``env_method``/``get_attr`` see it: the calls a Gymnasium worker's
    randomization stack answers (``set_distribution``, ``pin``, ``sampler_state``, ...)."""

    render_mode = None

    def __init__(self, venv: BatchedVecEnv, world: int) -> None:
        self._venv = venv
        self._world = world

    @property
    def _sampler(self):
        return self._venv.randomization.samplers[self._world]

    @property
    def randomizer(self):
        return self._sampler

    @property
    def distribution(self) -> Distribution:
        return self._sampler.distribution

    def set_distribution(self, distribution: Distribution) -> None:
        self._sampler.set_distribution(distribution)

    def pin(self, values: dict[str, float]) -> None:
        self._sampler.pin(values)

    def unpin(self) -> None:
        self._sampler.unpin()

    @property
    def pinned(self) -> bool:
        return self._sampler.pinned

    @property
    def param_names(self) -> tuple[str, ...]:
        return self._sampler.space.names

    all_param_names = param_names

    @property
    def params(self) -> dict[str, float]:
        return self._sampler.params()

    def sampler_state(self) -> dict[str, Any]:
        state = self._sampler.state_dict()
        rng = self._venv._np_random[self._world]
        state["env_rng"] = None if rng is None else rng.bit_generator.state
        return state

    def load_sampler_state(self, state: dict[str, Any]) -> None:
        self._sampler.load_state_dict(state)
        if state.get("env_rng") is not None:
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = state["env_rng"]
            self._venv._np_random[self._world] = rng

    def mujoco_warning_count(self) -> tuple[int, int]:
        """``(pid, diverged steps of the batch)``: one process, one count."""
        return os.getpid(), self._venv.unstable_steps


def _time_limit(env: gym.Env) -> int:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return int(env._max_episode_steps)
        env = env.env
    return 1000
