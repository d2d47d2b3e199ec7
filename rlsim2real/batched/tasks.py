"""The built-in tasks, vectorized over worlds: observations, rewards, terminations, reset noise.

Each task reproduces one Gymnasium MuJoCo v5 env (same formulas, same floating-point
operations, same draws from the env's generator at reset), read from a built instance of
that env so that its constructor arguments (an env spec's ``kwargs``) carry over. The tests
compare them with the Gymnasium envs step for step.

Supported: ``Hopper-v5``, ``Walker2d-v5``, ``HalfCheetah-v5``, ``InvertedPendulum-v5``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class TaskStep(NamedTuple):
    """What a task computes after a step.

    Attributes:
        obs: Shape (n_worlds, obs_dim), float64.
        reward: Shape (n_worlds,), float64.
        terminated: Shape (n_worlds,), bool.
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray


class BatchedTask:
    """Base class: one Gymnasium MuJoCo env's step semantics, on arrays over worlds.

    Args:
        env: The unwrapped Gymnasium env (``gym.make(...).unwrapped``) to reproduce.
    """

    def __init__(self, env: Any) -> None:
        self.frame_skip = int(env.frame_skip)
        self.init_qpos = env.init_qpos.copy()
        self.init_qvel = env.init_qvel.copy()
        self.nq, self.nv = env.model.nq, env.model.nv
        self.noise_scale = float(env._reset_noise_scale)

    def reset_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One world's initial ``(qpos, qvel)``, drawn as the env's ``reset_model`` does."""
        qpos, qvel = self.reset_states([rng])
        return qpos[0], qvel[0]

    def reset_states(self, rngs: list[np.random.Generator]) -> tuple[np.ndarray, np.ndarray]:
        """Initial ``(qpos, qvel)`` of several worlds, shapes (k, nq) and (k, nv): row ``j``
        drawn from ``rngs[j]`` as the env's ``reset_model`` draws (the noise row by row, the
        additions, the same for every element, over all rows at once)."""
        low, high = -self.noise_scale, self.noise_scale
        # ``uniform(low, high, nq)`` then ``uniform(low, high, nv)`` is ``low + (high - low) * u``
        # over the next nq + nv doubles of the stream: one call per world, the arithmetic once.
        noise = np.empty((len(rngs), self.nq + self.nv))
        for row, rng in zip(noise, rngs):
            rng.random(out=row)
        noise *= high - low
        noise += low
        return noise[:, : self.nq] + self.init_qpos, noise[:, self.nq :] + self.init_qvel

    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Observations, shape (n, obs_dim), from states of shape (n, nq) and (n, nv)."""
        raise NotImplementedError

    def step(self, x_before: np.ndarray, qpos: np.ndarray, qvel: np.ndarray, action: np.ndarray, dt: np.ndarray) -> TaskStep:
        """Observations, rewards and terminations after a step.

        Args:
            x_before: ``qpos[:, 0]`` before the step, shape (n,).
            qpos: Shape (n, nq), after the step.
            qvel: Shape (n, nv), after the step.
            action: The actions the env received, shape (n, nu) (their dtype, as the env's
                control cost sees them).
            dt: Each world's control period (``opt.timestep * frame_skip``), shape (n,).
        """
        raise NotImplementedError


class _Planar(BatchedTask):
    """Hopper, Walker2d and HalfCheetah: forward velocity reward minus control cost;
    observations skip the x position and (Hopper, Walker2d) clip velocities to +-10."""

    clip_velocity = True
    healthy = True

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.forward_weight = env._forward_reward_weight
        self.ctrl_weight = env._ctrl_cost_weight
        self.skip = int(bool(env._exclude_current_positions_from_observation))
        if self.healthy:
            self.healthy_reward = env._healthy_reward
            self.terminate_unhealthy = bool(env._terminate_when_unhealthy)
            self.z_range = env._healthy_z_range
            self.angle_range = env._healthy_angle_range

    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        # np.clip is minimum(maximum(x, lo), hi) (NaN kept), called here without its wrappers.
        velocity = np.minimum(np.maximum(qvel, -10.0), 10.0) if self.clip_velocity else qvel
        return np.concatenate((qpos[:, self.skip:], velocity), axis=1)

    def is_healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        z, angle = qpos[:, 1], qpos[:, 2]
        (min_z, max_z), (min_angle, max_angle) = self.z_range, self.angle_range
        return (min_z < z) & (z < max_z) & (min_angle < angle) & (angle < max_angle)

    def step(self, x_before, qpos, qvel, action, dt) -> TaskStep:
        x_velocity = (qpos[:, 0] - x_before) / dt
        forward = self.forward_weight * x_velocity
        # Summed in the action's dtype, as the env's ``np.sum(np.square(action))`` is.
        ctrl_cost = self.ctrl_weight * np.add.reduce(np.square(action), axis=1)
        if not self.healthy:
            return TaskStep(self.observe(qpos, qvel), forward - ctrl_cost, np.zeros(len(qpos), dtype=bool))
        healthy = self.is_healthy(qpos, qvel)
        reward = (forward + healthy * self.healthy_reward) - ctrl_cost
        terminated = ~healthy if self.terminate_unhealthy else np.zeros(len(qpos), dtype=bool)
        return TaskStep(self.observe(qpos, qvel), reward, terminated)


class Hopper(_Planar):
    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.state_range = env._healthy_state_range

    def is_healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        low, high = self.state_range
        state = np.concatenate((qpos[:, 2:], qvel), axis=1)  # state_vector()[2:]
        if low == -high:  # the default (-100, 100): low < x < high is |x| < high, NaN false in both
            in_range = np.logical_and.reduce(np.abs(state) < high, axis=1)
        else:
            in_range = np.logical_and.reduce((low < state) & (state < high), axis=1)
        return in_range & super().is_healthy(qpos, qvel)


class Walker2d(_Planar):
    pass


class HalfCheetah(_Planar):
    clip_velocity = False
    healthy = False

    def reset_states(self, rngs: list[np.random.Generator]) -> tuple[np.ndarray, np.ndarray]:
        low, high = -self.noise_scale, self.noise_scale
        noise_q, noise_v = np.empty((len(rngs), self.nq)), np.empty((len(rngs), self.nv))
        for j, rng in enumerate(rngs):
            rng.random(out=noise_q[j])  # uniform(low, high) is low + (high - low) * u
            rng.standard_normal(out=noise_v[j])
        noise_q *= high - low
        noise_q += low
        noise_q += self.init_qpos
        noise_v *= self.noise_scale
        noise_v += self.init_qvel
        return noise_q, noise_v


class InvertedPendulum(BatchedTask):
    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        return np.concatenate((qpos, qvel), axis=1)

    def step(self, x_before, qpos, qvel, action, dt) -> TaskStep:
        obs = self.observe(qpos, qvel)
        terminated = ~np.isfinite(obs).all(axis=1) | (np.abs(obs[:, 1]) > 0.2)
        return TaskStep(obs, (~terminated).astype(np.float64), terminated)


# Gymnasium env class name -> task. Ant-v5 is not here: its observations and contact cost
# need ``cfrc_ext`` (``mj_rnePostConstraint``), which a batch step does not compute.
TASKS: dict[str, type[BatchedTask]] = {
    "HopperEnv": Hopper,
    "Walker2dEnv": Walker2d,
    "HalfCheetahEnv": HalfCheetah,
    "InvertedPendulumEnv": InvertedPendulum,
}
SUPPORTED_IDS = ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "InvertedPendulum-v5")


def task_for(env: Any) -> BatchedTask | None:
    """The task that reproduces the unwrapped Gymnasium env ``env``, or ``None``."""
    cls = TASKS.get(type(env).__name__)
    if cls is None or not type(env).__module__.startswith("gymnasium.envs.mujoco"):
        return None
    return cls(env)


def batched_support(spec: Any) -> str | None:
    """Why ``spec`` cannot run batched (one line), or ``None`` if it can."""
    if spec.env_id not in SUPPORTED_IDS:
        what = spec.env_id or spec.entry_point
        return f"env {what!r} has no batched backend (supported: {', '.join(SUPPORTED_IDS)}); use vec_env = \"dummy\" or \"subproc\""
    if getattr(spec, "pixels", None) is not None:
        return "pixel observations are rendered per env: the batched env computes state observations only; use vec_env = \"dummy\" or \"subproc\""
    if spec.resample_every:
        return "randomization.resample_every is not supported by the batched env (it samples at reset only)"
    return None
