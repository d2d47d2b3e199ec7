"""The observation as a function of the simulator state, and back where the observation allows.

State-reset replay sets the simulator to each real state; a real robot rarely logs
``qpos``/``qvel``, so the state is recovered from the observation where the observation
determines it. The built-in Hopper, Walker2d and HalfCheetah observe ``qpos[1:]`` and
``qvel`` (Hopper and Walker2d clip ``qvel`` to [-10, 10]), and their dynamics do not depend on
the x position, which recovery sets to 0; InvertedPendulum observes all of ``qpos`` and
``qvel``. A custom env says how by defining, on its class::

    @staticmethod
    def obs_from_state(qpos, qvel):     # (n, nq), (n, nv) -> (n, obs_dim)
    @staticmethod
    def state_from_obs(obs):            # (n, obs_dim) -> ((n, nq), (n, nv))

and, if some observations do not pin the state down, ``state_recoverable(obs) -> (n,) bool``.
Without ``state_from_obs`` a log without ``qpos``/``qvel`` cannot be replayed from its states;
closed-loop fitting needs only ``obs_from_state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np

# The velocity bound of Hopper's and Walker2d's observations.
_CLIP = 10.0


@dataclass(frozen=True)
class StateMap:
    """How an env's observation follows from ``(qpos, qvel)``, and back.

    Attributes:
        nq: Position size.
        nv: Velocity size.
        obs_from_state: ``(qpos (n, nq), qvel (n, nv)) -> obs (n, obs_dim)``, vectorized.
        state_from_obs: ``obs (n, obs_dim) -> (qpos, qvel)``, or ``None`` if the observation
            does not determine the state.
        recoverable: ``obs (n, obs_dim) -> (n,) bool``: rows whose state the observation pins
            down (a clipped velocity does not).
        name: What the map is, for messages.
    """

    nq: int
    nv: int
    obs_from_state: Callable[[np.ndarray, np.ndarray], np.ndarray]
    state_from_obs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None
    recoverable: Callable[[np.ndarray], np.ndarray]
    name: str


def state_map(env: gym.Env) -> StateMap | None:
    """The :class:`StateMap` of ``env`` (a built-in env or a class with the hooks), or ``None``."""
    base = env.unwrapped
    model = base.model
    nq, nv = int(model.nq), int(model.nv)
    cls = type(base)
    if hasattr(cls, "obs_from_state"):
        to_state = getattr(cls, "state_from_obs", None)
        check = getattr(cls, "state_recoverable", None)
        return StateMap(
            nq, nv, cls.obs_from_state, to_state,
            check if check is not None else (lambda obs: np.ones(len(obs), dtype=bool)),
            f"{cls.__name__}.obs_from_state",
        )
    from rlsim2real.batched.tasks import task_for

    # The built-in envs' observation functions are the batched env's (one copy of each).
    task = task_for(base)
    if task is None:
        return None
    skip = int(getattr(task, "skip", 0))
    clip = _CLIP if getattr(task, "clip_velocity", False) else None
    return _position_velocity_map(nq, nv, skip, clip, task.observe, f"{cls.__name__} (qpos[{skip}:], qvel)")


def _position_velocity_map(
    nq: int, nv: int, skip: int, clip: float | None,
    obs_from_state: Callable[[np.ndarray, np.ndarray], np.ndarray], name: str,
) -> StateMap:
    """The inverse of an observation ``(qpos[skip:], clip(qvel))``, and which rows it pins down."""
    npos = nq - skip

    def state_from_obs(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        obs = np.asarray(obs, dtype=np.float64)
        # The skipped positions (the x of a planar walker) do not enter the dynamics: 0.
        qpos = np.concatenate([np.zeros((len(obs), skip)), obs[:, :npos]], axis=1)
        return qpos, obs[:, npos:npos + nv].copy()

    def recoverable(obs: np.ndarray) -> np.ndarray:
        if clip is None:
            return np.ones(len(obs), dtype=bool)
        # A velocity at the clip bound may have been larger: that state is not known.
        return np.all(np.abs(obs[:, npos:npos + nv]) < clip, axis=1)

    return StateMap(nq, nv, obs_from_state, state_from_obs, recoverable, name)
