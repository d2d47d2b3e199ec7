"""Fit a log: build the simulator and objective for a :class:`SysIdProblem`, run CMA-ES
(or, with ``fitter="lm"``, Levenberg–Marquardt from MuJoCo's toolbox, see
:mod:`rlsim2real.sysid.lm`), and report the fit as a table, ``FIT.json`` and ``FIT.png``.

Example:
    >>> import rlsim2real as rs, tempfile, os
    >>> real = rs.make_real_env("inverted_pendulum", "heavy_pole", seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "real.npz")
    >>> _ = rs.collect_trajectories(real, policy=None, episodes=5, seed=0).save(path)
    >>> problem = SysIdProblem.build("inverted_pendulum", path, params=["pole_mass"], truth="heavy_pole")
    >>> result = identify(problem, budget=120, seed=0, nthread=0)
    >>> bool(abs(result.mean[0] - 2.0) < 0.1)
    True
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlsim2real.io import write_json
from rlsim2real.params import SpecError
from rlsim2real.sysid.fit import CMAFitter, Gaussian, Generation, Objective
from rlsim2real.sysid.lm import FITTERS, fit_lm
from rlsim2real.sysid.problem import SysIdProblem
from rlsim2real.sysid.simulate import BatchSimulator


@dataclass
class SysIdResult:
    """A fitted distribution, in the Params' units and normalized.

    Attributes:
        names: Parameter names, shape (n,).
        mean: Fitted means in the Params' units, shape (n,).
        std: Fitted stds in the Params' units (half the image of mean ± std), shape (n,).
        fit: The fitted Gaussian, normalized.
        prior: Each parameter's prior range (the spec's training range), shape (n, 2).
        limits: Each parameter's limits, shape (n, 2).
        truth: True values, shape (n,), or ``None``.
        history: One record per CMA-ES generation.
        info: What ran: env, log, mode, objective, budget, seed, windows, wall time.
    """

    names: list[str]
    mean: np.ndarray
    std: np.ndarray
    fit: Gaussian
    prior: np.ndarray
    limits: np.ndarray
    truth: np.ndarray | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_error(self) -> np.ndarray | None:
        """|mean - truth| / |truth| per parameter (``None`` without a truth; NaN where the
        truth is 0, an ``add`` term at its nominal, or unknown)."""
        if self.truth is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(self.mean - self.truth) / np.abs(self.truth)
        return np.where(np.isfinite(rel), rel, np.nan)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{name: {mean, std, normalized_mean, normalized_std, prior, limits[, truth, relative_error]}}``."""
        out = {}
        rel = self.relative_error
        for i, name in enumerate(self.names):
            entry = {
                "mean": float(self.mean[i]), "std": float(self.std[i]),
                "normalized_mean": float(self.fit.mean[i]), "normalized_std": float(self.fit.std[i]),
                "prior": self.prior[i].tolist(), "limits": self.limits[i].tolist(),
            }
            if self.truth is not None:
                entry["truth"] = float(self.truth[i]) if np.isfinite(self.truth[i]) else None
                entry["relative_error"] = float(rel[i]) if np.isfinite(rel[i]) else None
            out[name] = entry
        return out

    def table(self) -> str:
        """Mean ± std per parameter with the prior range (and truth, relative error)."""
        wn = max(len(n) for n in self.names) + 2
        head = f"{'parameter':<{wn}}{'prior':<18}{'fit (mean ± std)':<24}"
        if self.truth is not None:
            head += f"{'truth':<10}{'rel. error':>10}"
        lines = [head, "-" * len(head)]
        rel = self.relative_error
        for i, name in enumerate(self.names):
            prior = f"[{self.prior[i, 0]:.4g}, {self.prior[i, 1]:.4g}]"
            row = f"{name:<{wn}}{prior:<18}{f'{self.mean[i]:.4g} ± {self.std[i]:.3g}':<24}"
            if self.truth is not None:
                err = f"{100 * rel[i]:>9.2f}%" if np.isfinite(rel[i]) else f"{'n/a':>10}"
                row += f"{self.truth[i]:<10.4g}{err}"
            lines.append(row)
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> dict[str, Path]:
        """Write ``path`` (the fit), ``<stem>.run.json`` (what ran, per-generation progress)
        and ``<stem>.png`` (the marginals)."""
        from rlsim2real.plots import plot_fit

        path = Path(path)
        run = path.with_name(path.stem + ".run.json")
        png = path.with_suffix(".png")
        write_json(run, {**self.info, "history": self.history})
        plot_fit(png, self.names, self.fit, self.prior_unit, self.limit_unit, self.to_values,
                 self.truth)
        write_json(path, self.to_dict())
        return {"fit": path, "run": run, "plot": png}

    # Set by identify(): normalized prior/limits and the map back to units, for the plot.
    prior_unit: np.ndarray | None = None
    limit_unit: np.ndarray | None = None
    to_values: Callable[[np.ndarray], np.ndarray] | None = None


def identify(
    problem: SysIdProblem,
    objective: str | None = None,
    budget: int = 300,
    seed: int = 0,
    samples: int | None = None,
    nthread: int | None = None,
    policy: Any = None,
    popsize: int | None = None,
    previous: Gaussian | None = None,
    kl_weight: float = 0.0,
    smooth: float = 0.0,
    fit_std: bool | None = None,
    progress: Callable[[Generation], None] | None = None,
    fitter: str = "cma",
) -> SysIdResult:
    """Fit the problem's parameters with CMA-ES (or Levenberg–Marquardt).

    Args:
        problem: A checked log and its windows.
        objective: ``"discrepancy"`` (SimOpt, the default) or ``"likelihood"`` (DROPO).
        budget: Candidate distributions evaluated (rounded up to whole generations).
        seed: Seeds CMA-ES and the common draws.
        samples: Parameter draws per candidate distribution (default 10; a point fit scores
            the mean alone).
        nthread: Rollout threads (default: every CPU).
        policy: The policy for closed-loop mode.
        popsize: CMA-ES candidates per generation.
        previous: A previous distribution for the KL penalty.
        kl_weight: Weight of the KL penalty.
        smooth: Gaussian smoothing of the discrepancy, in steps.
        fit_std: Search the std as well as the mean (see :class:`CMAFitter`). Default: for
            the likelihood, or with a KL penalty; the expected discrepancy alone is smallest
            at a point mass, so it searches the mean and reports CMA-ES's spread as the std.
        progress: Called after every generation (every iteration for ``"lm"``).
        fitter: ``"cma"`` (CMA-ES, any objective and mode) or ``"lm"``: a point fit of the
            replay windows by Levenberg–Marquardt with ``mujoco.sysid`` (the extra
            ``mujoco[sysid]``); ``budget`` caps its simulated candidates, and ``seed``,
            ``samples``, ``popsize`` do not apply.

    Returns:
        The fit.

    Raises:
        SpecError: ``"lm"`` without the toolbox, with another objective, a KL penalty or
            closed-loop mode.
    """
    if fitter not in FITTERS:
        raise SpecError(f"--fitter: expected one of {', '.join(FITTERS)}, got {fitter!r}")
    if fitter == "lm":
        return _identify_lm(problem, objective, budget, nthread, previous, kl_weight, smooth, fit_std, progress)
    objective = objective or "discrepancy"
    if fit_std is None:
        fit_std = objective == "likelihood" or (previous is not None and kl_weight > 0)
    if objective == "likelihood" and not fit_std:
        raise ValueError("the likelihood fits a distribution: fit_std must be True")
    if samples is None or not fit_std:
        samples = 10 if fit_std else 1
    if problem.mode == "closed-loop" and policy is None:
        raise ValueError("closed-loop sysid needs a policy")
    space = problem.space
    simulator = BatchSimulator(problem.model, problem.writer, problem.state_map, problem.frame_skip, nthread)
    low, high = problem.low, problem.high
    score = Objective(
        simulator, problem.windows, space.from_normalized, low, high, problem.scale, kind=objective,
        samples=samples, seed=seed, policy=policy, previous=previous, kl_weight=kl_weight, smooth=smooth,
        point=not fit_std,
    )
    fitter = CMAFitter(score, low, high, initial=previous, seed=seed, popsize=popsize, fit_std=fit_std)
    history: list[dict[str, float]] = []
    started = time.perf_counter()

    def record(gen: Generation) -> None:
        history.append({
            "generation": gen.generation, "evaluations": gen.evaluations, "best_loss": gen.best_loss,
            "median_loss": gen.median_loss, "wall_s": time.perf_counter() - started,
        })
        if progress is not None:
            progress(gen)

    try:
        best = fitter.run(budget, record)
    finally:
        simulator.close()
    wall = time.perf_counter() - started
    n_sim = int(problem.windows.mask.size)
    info = {
        "fitter": "cma", "objective": objective, "fit_std": fit_std, "budget": budget, "seed": seed,
        "samples": samples, "generations": fitter.generation, "evaluations": fitter.evaluations, "wall_s": wall,
        "simulated_env_steps": int(fitter.evaluations * samples * n_sim),
    }
    return _result(problem, best, history, info)


def _identify_lm(problem, objective, budget, nthread, previous, kl_weight, smooth, fit_std, progress) -> SysIdResult:
    if objective not in (None, "discrepancy"):
        raise SpecError(f"--fitter lm: fits a point by least squares; --objective {objective} needs --fitter cma")
    if fit_std or (previous is not None and kl_weight > 0):
        raise SpecError("--fitter lm: fits a point; a std or a KL penalty needs --fitter cma")
    if smooth:
        raise SpecError("--fitter lm: compares unsmoothed observations; --smooth needs --fitter cma")
    started = time.perf_counter()
    run = fit_lm(problem, budget=budget, nthread=nthread, progress=progress)
    info = {
        "fitter": "lm", "objective": "least squares", "fit_std": False, "budget": budget, "seed": None,
        "samples": 1, "generations": run.iterations, "evaluations": run.evaluations,
        "wall_s": time.perf_counter() - started,
        "simulated_env_steps": int(run.evaluations * problem.windows.mask.size),
    }
    return _result(problem, run.best, run.history, info)


def _result(
    problem: SysIdProblem, best: Gaussian, history: list[dict[str, float]], info: dict[str, Any],
) -> SysIdResult:
    space, low, high = problem.space, problem.low, problem.high
    mean = space.from_normalized(best.mean)
    std = 0.5 * np.abs(space.from_normalized(best.mean + best.std) - space.from_normalized(best.mean - best.std))
    info = {
        "env": problem.spec.name, "trajectories": str(problem.log_path), "mode": problem.mode, **info,
        "windows": int(len(problem.windows.qpos)), "steps_per_window": int(problem.windows.target.shape[1]),
        "skipped_starts": problem.skipped, "truth_set": problem.truth_name,
    }
    return SysIdResult(
        names=list(space.names), mean=mean, std=std, fit=best,
        prior=np.stack([space.low, space.high], axis=1),
        limits=np.stack([space.from_normalized(low), space.from_normalized(high)], axis=1),
        truth=problem.truth, history=history, info=info,
        prior_unit=np.stack([np.zeros(len(low)), np.ones(len(low))], axis=1),
        limit_unit=np.stack([low, high], axis=1), to_values=space.from_normalized,
    )
