"""Simulate many candidate models at once with MuJoCo's multi-threaded ``mujoco.rollout``.

A :class:`BatchSimulator` keeps one model copy per candidate parameter vector, writes the
candidates' values through :class:`~rlsim2real.mjfields.ModelWriter` (the bindings the
wrappers use), and runs every (candidate, window) pair in one ``Rollout.rollout`` call on a
thread pool. An env step is ``frame_skip`` MuJoCo steps with the action held, as in
Gymnasium's ``MujocoEnv.do_simulation``; observations come from the env's
:class:`~rlsim2real.sysid.observe.StateMap`, vectorized.

Two ways to simulate, after DROPO and SimOpt:

- :meth:`BatchSimulator.replay`: set the simulator to a real state, replay the real actions
  for ``k`` steps (open loop, one rollout call);
- :meth:`BatchSimulator.closed_loop`: from a real initial state, let a policy act on the
  simulated observations (one rollout call per env step, batched over everything).
"""

from __future__ import annotations

import os
from typing import Any

import mujoco
import mujoco.rollout
import numpy as np

from rlsim2real.mjfields import ModelWriter
from rlsim2real.sysid.observe import StateMap

_FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS


class BatchSimulator:
    """Candidate models of one env, simulated in batches.

    Args:
        model: The env's nominal ``MjModel`` (not modified).
        writer: Binds the fitted parameters to the model's fields.
        state_map: The env's observation function (and its inverse, for recovery).
        frame_skip: MuJoCo steps per env step.
        nthread: Rollout threads (default: every CPU; 0 runs on the calling thread).
    """

    def __init__(
        self, model: mujoco.MjModel, writer: ModelWriter, state_map: StateMap, frame_skip: int,
        nthread: int | None = None,
    ) -> None:
        self.model = model
        self.writer = writer
        self.state_map = state_map
        self.frame_skip = int(frame_skip)
        self.nthread = (os.cpu_count() or 1) if nthread is None else int(nthread)
        self._models: list[mujoco.MjModel] = []
        self._scratch = mujoco.MjData(model)
        self._datas = [mujoco.MjData(model) for _ in range(max(1, self.nthread))]
        self._rollout = mujoco.rollout.Rollout(nthread=self.nthread)
        data = mujoco.MjData(model)
        mujoco.mj_resetData(model, data)
        self._template = np.empty(mujoco.mj_stateSize(model, _FULL))
        mujoco.mj_getState(model, data, self._template, _FULL)
        self._qpos_at = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_TIME)
        self._qvel_at = self._qpos_at + model.nq

    def close(self) -> None:
        self._rollout.close()

    def models_for(self, values: np.ndarray) -> list[mujoco.MjModel]:
        """One model per row of ``values`` (n_candidates, n_params), written in place."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        while len(self._models) < len(values):
            self._models.append(self.writer.copy_model())
        for m, v in zip(self._models, values):
            self.writer.write(m, v, self._scratch)
        return self._models[: len(values)]

    def initial_states(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Full physics states (n, nstate) at the given positions and velocities."""
        states = np.tile(self._template, (len(qpos), 1))
        states[:, self._qpos_at:self._qpos_at + self.model.nq] = qpos
        states[:, self._qvel_at:self._qvel_at + self.model.nv] = qvel
        return states

    def _observe(self, states: np.ndarray) -> np.ndarray:
        flat = states.reshape(-1, states.shape[-1])
        qpos = flat[:, self._qpos_at:self._qpos_at + self.model.nq]
        qvel = flat[:, self._qvel_at:self._qvel_at + self.model.nv]
        obs = self.state_map.obs_from_state(qpos, qvel)
        return obs.reshape(*states.shape[:-1], obs.shape[-1])

    def replay(self, values: np.ndarray, qpos: np.ndarray, qvel: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """State-reset replay: every candidate from every real state, the real actions.

        Args:
            values: Candidate parameter vectors in the Params' units, shape (C, n_params).
            qpos: Start positions, shape (W, nq).
            qvel: Start velocities, shape (W, nv).
            actions: The real actions of each window, shape (W, k, nu).

        Returns:
            Simulated observations after each of the k steps, shape (C, W, k, obs_dim).
        """
        models = self.models_for(values)
        n_c, n_w, k = len(models), len(qpos), actions.shape[1]
        control = np.repeat(np.asarray(actions, dtype=np.float64), self.frame_skip, axis=1)
        start = self.initial_states(qpos, qvel)
        batch_models = [m for m in models for _ in range(n_w)]
        state, _ = self._rollout.rollout(
            batch_models, self._datas, np.tile(start, (n_c, 1)), np.tile(control, (n_c, 1, 1)),
            nstep=k * self.frame_skip,
        )
        steps = state[:, self.frame_skip - 1 :: self.frame_skip]  # after each env step
        return self._observe(steps).reshape(n_c, n_w, k, -1)

    def closed_loop(
        self, values: np.ndarray, qpos: np.ndarray, qvel: np.ndarray, obs0: np.ndarray, policy: Any, horizon: int,
    ) -> np.ndarray:
        """Closed loop: a policy acts on the simulated observations from each real start.

        Args:
            values: Candidate parameter vectors, shape (C, n_params).
            qpos: Start positions, shape (E, nq).
            qvel: Start velocities, shape (E, nv).
            obs0: The real first observations, shape (E, obs_dim) (what the policy sees first).
            policy: Anything with SB3's ``predict(obs, state, episode_start, deterministic)``
                (a :class:`~rlsim2real.evaluation.RunPolicy`) or a callable
                ``obs (n, obs_dim) -> actions (n, nu)``.
            horizon: Env steps to simulate.

        Returns:
            Simulated observations after each step, shape (C, E, horizon, obs_dim).
        """
        models = self.models_for(values)
        n_c, n_e = len(models), len(qpos)
        batch_models = [m for m in models for _ in range(n_e)]
        state = np.tile(self.initial_states(qpos, qvel), (n_c, 1))
        obs = np.tile(np.asarray(obs0, dtype=np.float64), (n_c, 1))
        out = np.empty((n_c * n_e, horizon, obs.shape[-1]))
        memory, starts = None, np.ones(len(obs), dtype=bool)
        for t in range(horizon):
            if hasattr(policy, "predict"):
                action, memory = policy.predict(obs.astype(np.float32), memory, starts, True)
            else:
                action = policy(obs)
            starts = np.zeros(len(obs), dtype=bool)
            control = np.repeat(np.asarray(action, dtype=np.float64).reshape(len(obs), 1, -1), self.frame_skip, axis=1)
            states, _ = self._rollout.rollout(batch_models, self._datas, state, control, nstep=self.frame_skip)
            state = states[:, -1]
            obs = self._observe(state)
            out[:, t] = obs
        return out.reshape(n_c, n_e, horizon, -1)
