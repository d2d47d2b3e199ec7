"""A point fit by Levenberg–Marquardt with MuJoCo's system-identification toolbox.

``mujoco.sysid`` (the optional extra ``mujoco[sysid]``) fits a vector of parameters by
nonlinear least squares: it builds a model per candidate, rolls every measured sequence
out from its initial state with ``mujoco.rollout``, and minimizes the stacked residuals
with MuJoCo's Levenberg–Marquardt (``mujoco.minimize``, finite-difference Jacobians whose
columns run in one batched rollout). Here it gets the same problem as the CMA-ES fitter:

- parameters: one ``mujoco.sysid.Parameter`` per fitted Param, in the normalized box (the
  prior range is [0, 1]) bounded by the Params' ``limits``, starting at the middle of the
  prior box, as CMA-ES does;
- models: built by the same :class:`~rlsim2real.mjfields.ModelWriter` the simulator and
  the wrappers use (so a mass scales its inertia, and every field's side effects follow);
- data: the problem's replay windows, each one sequence (its real start state and actions,
  each action held for ``frame_skip`` MuJoCo steps as the env does);
- residual: the env's observation after each env step minus the real one, divided by the
  problem's per-dimension scale (the L2 counterpart of SimOpt's discrepancy).

It fits a point, not a distribution: the reported std is the toolbox's linearized
standard error at the optimum (``mujoco.sysid.calculate_intervals``), in normalized units.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

from rlsim2real.params import SpecError
from rlsim2real.sysid.fit import STD_BOUNDS, Gaussian, Generation
from rlsim2real.sysid.simulate import BatchSimulator

FITTERS = ("cma", "lm")


def toolbox() -> Any:
    """``mujoco.sysid`` with its optional dependencies, or one :class:`SpecError` saying what to install.

    Raises:
        SpecError: when the toolbox or one of its dependencies is missing.
    """
    try:
        # The package imports without its extra (it swallows the missing module); its
        # modules do not.
        from mujoco.sysid._src import optimize  # noqa: F401
        from mujoco import sysid
    except ModuleNotFoundError as exc:
        raise SpecError(
            f"--fitter lm: needs MuJoCo's system-identification toolbox, the optional extra mujoco[sysid] "
            f"(missing module {exc.name!r}); install it with: pip install 'mujoco[sysid]'"
        ) from None
    return sysid


@dataclass
class LMRun:
    """What a Levenberg–Marquardt fit found and spent.

    Attributes:
        best: The fitted point (mean) and its standard error (std), normalized.
        iterations: Levenberg–Marquardt iterations.
        evaluations: Candidate models simulated (every Jacobian column counts).
        history: One record per iteration: iteration, evaluations, loss, wall time.
    """

    best: Gaussian
    iterations: int
    evaluations: int
    history: list[dict[str, float]]


@contextmanager
def _toolbox_warnings_off() -> Iterator[None]:
    """absl at ERROR while the toolbox runs (it warns once per sequence whose data are the
    env's observations rather than model sensors), then as the caller had it."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # the toolbox's extra is missing too: fit_lm says so
        yield
        return
    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


@_toolbox_warnings_off()
def fit_lm(
    problem: Any, budget: int = 300, nthread: int | None = None, initial: np.ndarray | None = None,
    progress: Callable[[Generation], None] | None = None,
) -> LMRun:
    """Fit the replay windows of ``problem`` (a :class:`~rlsim2real.sysid.SysIdProblem`) by least squares.

    Args:
        problem: A problem in replay mode.
        budget: Candidate models to simulate at most, counted in whole iterations
            (each costs one Jacobian, ``n_params`` models, and at least one trial step).
        nthread: Rollout threads (default: every CPU).
        initial: Start point, normalized, shape (n_params,) (default: the middle of the prior box).
        progress: Called after every iteration with a :class:`Generation` record.

    Returns:
        The fit.

    Raises:
        SpecError: when the toolbox is missing, or the problem is not a replay problem.
    """
    sysid = toolbox()
    if problem.mode != "replay":
        raise SpecError(f"--fitter lm: fits replay windows; --mode {problem.mode} needs --fitter cma")
    space, writer, model = problem.space, problem.writer, problem.model
    low, high = problem.low, problem.high
    n = len(space)
    x0 = np.clip(np.full(n, 0.5) if initial is None else np.asarray(initial, dtype=np.float64), low, high)
    params = sysid.ParameterDict()
    for i, p in enumerate(space):
        params.add(sysid.Parameter(p.name, x0[i], low[i], high[i]))
    scratch = mujoco.MjData(model)

    def build_model(values: Any, spec: Any) -> mujoco.MjModel:
        copy = writer.copy_model()
        writer.write(copy, space.from_normalized(values.as_vector()), scratch)
        return copy

    sequences = replay_sequences(sysid, problem)
    evaluations = 0

    def counted(x: np.ndarray, values: Any, **kwargs: Any) -> Any:
        nonlocal evaluations
        evaluations += 1 if np.ndim(x) == 1 else int(np.shape(x)[1])
        return residual(x, values, **kwargs)

    residual = sysid.build_residual_fn(
        models_sequences=[sequences], build_model=build_model, modify_residual=observation_residual(problem),
        n_threads=(os.cpu_count() or 1) if nthread is None else max(1, int(nthread)),
    )
    history: list[dict[str, float]] = []
    started = time.perf_counter()

    def record(trace: list[Any]) -> None:
        entry = trace[-1]
        history.append({
            "generation": len(trace), "evaluations": evaluations, "best_loss": float(entry.objective),
            "median_loss": float(entry.objective), "wall_s": time.perf_counter() - started,
        })
        if progress is not None:
            x = np.asarray(entry.candidate, dtype=np.float64).reshape(-1)
            progress(Generation(len(trace), evaluations, float(entry.objective), float(entry.objective),
                                Gaussian(x, np.full(n, STD_BOUNDS[0]))))

    max_iters = max(1, int(budget) // (n + 2))
    fitted, result = sysid.optimize(
        params, counted, optimizer="mujoco", verbose=False, max_iters=max_iters, output=io.StringIO(),
        iter_callback=record,
    )
    mean = np.asarray(fitted.as_vector(), dtype=np.float64)
    return LMRun(Gaussian(mean, _standard_error(sysid, residual, fitted, result, n)), len(history), evaluations,
                 history)


def _standard_error(sysid: Any, residual: Any, fitted: Any, result: Any, n: int) -> np.ndarray:
    """Linearized standard error of each parameter at the optimum, within the CMA-ES std bounds."""
    jac = np.asarray(result.jac, dtype=np.float64)
    final, _, _ = residual(fitted.as_vector(), fitted.copy())
    if jac.ndim != 2 or jac.shape[1] != n or jac.shape[0] <= n:
        return np.full(n, STD_BOUNDS[1])
    with np.errstate(all="ignore"):
        cov, _ = sysid.calculate_intervals(final, jac)
        std = np.sqrt(np.abs(np.diag(cov)))
    return np.clip(np.nan_to_num(std, nan=STD_BOUNDS[1], posinf=STD_BOUNDS[1]), *STD_BOUNDS)


def replay_sequences(sysid: Any, problem: Any) -> Any:
    """The problem's replay windows as one ``mujoco.sysid.ModelSequences`` (one sequence per window)."""
    model, fs, w = problem.model, problem.frame_skip, problem.windows
    dt = model.opt.timestep
    sim = BatchSimulator(model, problem.writer, problem.state_map, fs, 0)
    try:
        starts = sim.initial_states(w.qpos, w.qvel)
    finally:
        sim.close()
    k = w.actions.shape[1]
    controls, targets = [], []
    for actions, target in zip(w.actions, w.target):
        held = np.repeat(actions, fs, axis=0)
        # The toolbox simulates one step fewer than it is given controls (the last has no
        # measurement after it).
        held = np.vstack([held, held[-1:]])
        controls.append(sysid.TimeSeries(np.arange(len(held)) * dt, held))
        targets.append(sysid.TimeSeries(np.arange(1, k + 1) * fs * dt, np.asarray(target, dtype=np.float64)))
    return sysid.ModelSequences(
        problem.spec.name, model_spec(problem), [f"window_{i}" for i in range(len(starts))], list(starts), controls,
        targets, allow_missing_sensors=True,
    )


def observation_residual(problem: Any) -> Callable[..., tuple[np.ndarray, Any, Any]]:
    """The toolbox's ``modify_residual`` hook: the env's observations, scaled like the discrepancy."""
    from mujoco import sysid

    model, fs, scale, smap = problem.model, problem.frame_skip, problem.scale, problem.state_map
    qpos_at = 1  # the rollout's full-physics state starts with the time
    qvel_at = qpos_at + model.nq

    def modify(params: Any, predicted: Any, measured: Any, model_: Any, return_pred_all: bool,
               state: np.ndarray | None = None, **_: Any) -> tuple[np.ndarray, Any, Any]:
        after = state[fs - 1 :: fs]  # the state after each env step
        obs = smap.obs_from_state(after[:, qpos_at:qvel_at], after[:, qvel_at:qvel_at + model.nv])
        res = (obs - measured.data) / scale
        return res, sysid.TimeSeries(measured.times, obs), measured

    return modify


def model_spec(problem: Any) -> mujoco.MjSpec:
    """The env's ``MjSpec`` (the toolbox checks sizes against it; models come from the writer)."""
    path = getattr(problem, "model_path", None)
    if not path:
        raise SpecError(f"--fitter lm: env {problem.spec.name}: its model file is unknown (the env has no fullpath)")
    return mujoco.MjSpec.from_file(str(path))
