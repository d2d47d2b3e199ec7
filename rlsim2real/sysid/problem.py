"""A system-identification problem: a log checked against an env, cut into windows.

Everything a fit needs is checked here, before any simulation: the log's arrays and
metadata, their sizes against the env, whether the state can be set for replay, the
parameter names and the truth set. Bad input raises one :class:`SpecError` naming the file
(or option) and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlsim2real.mjfields import ModelWriter
from rlsim2real.params import ParamSpace, SpecError
from rlsim2real.specs import EnvSpec, load_env_spec
from rlsim2real.sysid.discrepancy import observation_scale
from rlsim2real.sysid.fit import Windows
from rlsim2real.sysid.observe import StateMap, state_map
from rlsim2real.trajectories import Trajectories, load_trajectories

MODES = ("replay", "closed-loop")


@dataclass
class SysIdProblem:
    """A checked log, the parameters to fit, and the windows to compare.

    Build it with :meth:`SysIdProblem.build`.

    Attributes:
        spec: The env spec.
        space: The fitted parameters (model fields only).
        log: The real trajectories.
        log_path: Where they came from.
        mode: ``"replay"`` or ``"closed-loop"``.
        windows: The real data to compare with.
        scale: Per-dimension observation scale, shape (obs_dim,).
        state_map: The env's observation function.
        writer: Binds the parameters to the model.
        model: The env's nominal model.
        frame_skip: MuJoCo steps per env step.
        truth: True values of the fitted parameters (``None`` if unknown).
        truth_name: Name of the truth set.
        skipped: Start steps left out (episode too short, state not recoverable).
        model_path: The env's model file (``None`` if the env has none).
    """

    spec: EnvSpec
    space: ParamSpace
    log: Trajectories
    log_path: Path
    mode: str
    windows: Windows
    scale: np.ndarray
    state_map: StateMap
    writer: ModelWriter
    model: Any
    frame_skip: int
    truth: np.ndarray | None = None
    truth_name: str | None = None
    skipped: int = 0
    model_path: str | None = None

    @classmethod
    def build(
        cls,
        env: EnvSpec | str | os.PathLike,
        trajectories: str | os.PathLike,
        params: list[str] | None = None,
        mode: str = "replay",
        steps: int = 1,
        truth: str | None = None,
        horizon: int = 100,
        max_windows: int = 256,
    ) -> "SysIdProblem":
        """Check a log against an env and cut it into windows.

        Args:
            env: Spec, spec name or path.
            trajectories: The ``.npz`` log (see :func:`~rlsim2real.trajectories.load_trajectories`).
            params: Names of the parameters to fit (default: the spec's training box).
            mode: ``"replay"`` (state-reset replay of ``steps`` real actions) or
                ``"closed-loop"`` (the policy from each episode's first state).
            steps: Replay window length k, in env steps.
            truth: A real set of the spec holding the true values (reported, never used to fit).
            horizon: Closed-loop steps per episode at most.
            max_windows: Windows used at most, evenly spaced over the log.

        Raises:
            SpecError: on any bad input, in one line naming the file or option and the field.
        """
        from rlsim2real.factory import make_base_env

        spec = load_env_spec(env)
        if mode not in MODES:
            raise SpecError(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if steps < 1:
            raise SpecError(f"--steps: expected a window of at least 1 step, got {steps}")
        space = _fitted_space(spec, params)
        truth_values = None
        if truth is not None:
            values = spec.real_set(truth) if truth != "nominal" or "nominal" in spec.real_sets else {}
            truth_values = np.array(
                [values.get(p.name, p.identity if p.identity is not None else np.nan) for p in space]
            )
        path = Path(trajectories)
        log = load_trajectories(path)
        base = make_base_env(spec)
        try:
            _check_sizes(log, base, path)
            smap = state_map(base)
            qpos, qvel, known = _states(log, smap, base, path, mode)
        finally:
            base.close()
        unwrapped = base.unwrapped
        if smap is None:
            raise SpecError(
                f"{spec.source}: env {spec.env_id or spec.entry_point} has no observation function "
                f"(define obs_from_state on {type(unwrapped).__name__}) to compare simulated with real observations"
            )
        writer = ModelWriter(unwrapped.model, space)
        if mode == "replay":
            windows, skipped = _replay_windows(log, qpos, qvel, known, steps, path, max_windows)
        else:
            windows, skipped = _closed_loop_windows(log, qpos, qvel, known, horizon, path)
        return cls(
            spec=spec, space=space, log=log, log_path=path, mode=mode, windows=windows,
            scale=observation_scale(log.obs), state_map=smap, writer=writer, model=unwrapped.model,
            frame_skip=int(unwrapped.frame_skip), truth=truth_values, truth_name=truth, skipped=skipped,
            model_path=getattr(unwrapped, "fullpath", None),
        )

    @property
    def low(self) -> np.ndarray:
        """Lower limits of each parameter, normalized (the prior box is [0, 1])."""
        return self._limits()[0]

    @property
    def high(self) -> np.ndarray:
        return self._limits()[1]

    def _limits(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([p.limits[0] if p.limits is not None else p.low for p in self.space])
        hi = np.array([p.limits[1] if p.limits is not None else p.high for p in self.space])
        return self.space.normalize(lo), self.space.normalize(hi)


def _fitted_space(spec: EnvSpec, params: list[str] | None) -> ParamSpace:
    if not params:
        space = spec.params.select("model")
        if not len(space):
            raise SpecError(f"{spec.source}: the training box has no model parameters to fit; name them with --params")
        return space
    known = spec.all_params
    unknown = [n for n in params if n not in known]
    if unknown:
        raise SpecError(
            f"--params: unknown parameter {unknown[0]!r} for env {spec.name}; expected some of {', '.join(known.names)}"
        )
    space = known.subset(params)
    not_model = [p.name for p in space if p.parsed.kind != "model"]
    if not_model:
        raise SpecError(
            f"--params: {not_model[0]!r} ({space[not_model[0]].target}) is not an MjModel field; "
            "sysid fits model fields (masses, friction, damping, gears, ...)"
        )
    return space


def _check_sizes(log: Trajectories, env: Any, path: Path) -> None:
    obs_shape = tuple(env.observation_space.shape or ())
    if tuple(log.obs.shape[1:]) != obs_shape:
        raise SpecError(f"{path}: 'obs' has shape {tuple(log.obs.shape[1:])} per step; the env observes {obs_shape}")
    act_shape = tuple(env.action_space.shape or ())
    got = tuple(log.actions.shape[1:]) if log.actions.ndim > 1 else (1,)
    if got != act_shape:
        raise SpecError(f"{path}: 'actions' has shape {got} per step; the env takes {act_shape}")
    model = env.unwrapped.model
    for name, size in (("qpos", model.nq), ("qvel", model.nv)):
        arr = getattr(log, name)
        if arr is not None and arr.shape[1] != size:
            raise SpecError(f"{path}: '{name}' has {arr.shape[1]} values per step; the model has {size}")


def _states(
    log: Trajectories, smap: StateMap | None, env: Any, path: Path, mode: str,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Simulator states of every step, from the log or recovered from the observations."""
    if log.qpos is not None and log.qvel is not None:
        return log.qpos, log.qvel, np.ones(len(log.obs), dtype=bool)
    if smap is None or smap.state_from_obs is None:
        name = type(env.unwrapped).__name__
        raise SpecError(
            f"{path}: no 'qpos'/'qvel', and {name}'s observation does not determine its state "
            "(define state_from_obs on the env class); state-reset replay and closed-loop starts need one of them"
        )
    obs = log.obs.reshape(len(log.obs), -1)
    qpos, qvel = smap.state_from_obs(obs)
    return qpos, qvel, np.asarray(smap.recoverable(obs), dtype=bool)


def _episode_bounds(log: Trajectories) -> list[tuple[int, int]]:
    stops = np.cumsum(log.lengths)
    return [(int(s - n), int(s)) for s, n in zip(stops, log.lengths)]


def _replay_windows(log, qpos, qvel, known, k, path, max_windows) -> tuple[Windows, int]:
    starts, skipped = [], 0
    for a, b in _episode_bounds(log):
        for t in range(a, b - k):
            if known[t]:
                starts.append(t)
            else:
                skipped += 1
        skipped += min(k, b - a)
    if not starts:
        longest = int(np.max(log.lengths))
        if longest <= k:
            raise SpecError(
                f"{path}: 'obs': every episode is shorter than {k + 1} steps (longest {longest}); "
                f"replay of {k} step(s) needs a start and {k} next observation(s)"
            )
        raise SpecError(f"{path}: 'obs': no step's state can be recovered (velocities at the clip bound); log qpos/qvel")
    starts = np.array(starts)
    if len(starts) > max_windows:
        starts = starts[np.round(np.linspace(0, len(starts) - 1, max_windows)).astype(int)]
    offsets = np.arange(k)
    obs = log.obs.reshape(len(log.obs), -1)
    actions = log.actions.reshape(len(log.actions), -1).astype(np.float64)
    windows = Windows(
        qpos=qpos[starts], qvel=qvel[starts],
        target=obs[starts[:, None] + 1 + offsets], mask=np.ones((len(starts), k), dtype=bool),
        actions=actions[starts[:, None] + offsets],
    )
    return windows, skipped


def _closed_loop_windows(log, qpos, qvel, known, horizon, path) -> tuple[Windows, int]:
    bounds = [(a, b) for a, b in _episode_bounds(log) if b - a >= 2 and known[a]]
    if not bounds:
        raise SpecError(f"{path}: 'obs': no episode with 2 or more steps and a recoverable first state")
    h = min(horizon, max(b - a - 1 for a, b in bounds))
    obs = log.obs.reshape(len(log.obs), -1)
    target = np.zeros((len(bounds), h, obs.shape[1]))
    mask = np.zeros((len(bounds), h), dtype=bool)
    for i, (a, b) in enumerate(bounds):
        n = min(h, b - a - 1)
        target[i, :n] = obs[a + 1 : a + 1 + n]
        mask[i, :n] = True
    starts = np.array([a for a, _ in bounds])
    windows = Windows(qpos=qpos[starts], qvel=qvel[starts], target=target, mask=mask, obs0=obs[starts])
    return windows, log.n_episodes - len(bounds)
