"""Transfer evaluation on held-out "real" sets, 2-D grids, and report rendering.

``evaluate_transfer(run)`` runs deterministic episodes of a trained policy on the nominal
sim and on every real set of the run's env spec, with observation normalization frozen,
and writes ``transfer.json`` / ``transfer.md`` (and ``transfer.png`` for a grid) into the
run directory.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlsim2real.episodes import EpisodeJob, EpisodeResult, EpisodeRunner, seeded_jobs
from rlsim2real.io import atomic_write, write_json, write_text
from rlsim2real.params import SpecError
from rlsim2real.runs import Run
from rlsim2real.specs import EnvSpec, GridSpec


class RunPolicy:
    """A trained policy with its frozen observation normalization, ready to act.

    ``predict`` has SB3's signature and works for recurrent and feed-forward models.

    Args:
        model: An SB3 model (PPO or RecurrentPPO).
        obs_rms: SB3 ``VecNormalize`` whose statistics normalize observations, or ``None``.
    """

    def __init__(self, model: Any, obs_rms: Any = None) -> None:
        self.model = model
        self.obs_rms = obs_rms
        self.recurrent = hasattr(model.policy, "lstm_actor")

    @classmethod
    def from_run(cls, run: Run | str | os.PathLike, folder: Path | None = None, device: str = "cpu") -> "RunPolicy":
        """Load the run's newest policy and its normalization statistics."""
        run = run if isinstance(run, Run) else Run.open(run)
        folder = folder or run.model_dir()
        model = run.load_model(folder, device=device)
        obs_rms = None
        stats = folder / "vecnormalize.pkl"
        if stats.is_file():
            with open(stats, "rb") as fh:
                obs_rms = pickle.load(fh)
            obs_rms.training = False
            obs_rms.norm_reward = False
        return cls(model, obs_rms)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        return self.obs_rms.normalize_obs(obs) if self.obs_rms is not None else obs

    def predict(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Actions for a batch of observations, shape (n, *obs_shape) -> (n, *action_shape)."""
        obs = self.normalize(np.asarray(obs, dtype=np.float32))
        if self.recurrent:
            return self.model.predict(obs, state=state, episode_start=episode_start, deterministic=deterministic)
        action, _ = self.model.predict(obs, deterministic=deterministic)
        return action, None


@dataclass
class SetResult:
    """Returns of one configuration.

    Attributes:
        mean_return: Mean undiscounted return over the episodes.
        std_return: Standard deviation of the returns.
        episodes: Number of episodes.
        success_rate: Fraction of successful episodes (see :attr:`EnvSpec.success_return`).
        params: The parameter values the episodes ran on.
        returns: Each episode's return.
        lengths: Each episode's length.
    """

    mean_return: float
    std_return: float
    episodes: int
    success_rate: float
    params: dict[str, float]
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_return": self.mean_return,
            "std_return": self.std_return,
            "episodes": self.episodes,
            "success_rate": self.success_rate,
            "params": self.params,
        }


@dataclass
class GridResult:
    """Mean return over a 2-D grid of two parameters; ``mean_return[j][i]`` is at (x_i, y_j)."""

    x: str
    y: str
    x_values: list[float]
    y_values: list[float]
    mean_return: list[list[float]]
    success_rate: list[list[float]]
    episodes: int
    train_box: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TransferReport:
    """Transfer results of one trained policy; ``to_dict()`` is the ``transfer.json`` contract."""

    env: str
    strategy: str
    dann: bool
    timesteps: int
    seed: int
    sets: dict[str, SetResult]
    grid: GridResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "env": self.env,
            "strategy": self.strategy,
            "dann": self.dann,
            "timesteps": self.timesteps,
            "seed": self.seed,
            "sets": {name: r.to_dict() for name, r in self.sets.items()},
        }
        if self.grid is not None:
            out["grid"] = self.grid.to_dict()
        return out

    def table(self) -> str:
        """A Markdown table: one row per set."""
        lines = [
            f"Transfer of `{self.env}` ({self.strategy}{' + DANN' if self.dann else ''}, "
            f"{self.timesteps} steps, seed {self.seed})",
            "",
            "| set | mean return | std | success | episodes | differs from nominal |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, r in self.sets.items():
            changed = ", ".join(f"{k}={v:g}" for k, v in r.params.items() if k in self._changed(name)) or "-"
            lines.append(
                f"| {name} | {r.mean_return:.1f} | {r.std_return:.1f} | {r.success_rate:.0%} | {r.episodes} | {changed} |"
            )
        return "\n".join(lines) + "\n"

    def _changed(self, name: str) -> set[str]:
        base = self.sets.get("nominal")
        if base is None:
            return set(self.sets[name].params)
        return {k for k, v in self.sets[name].params.items() if base.params.get(k) != v}

    def save(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write ``transfer.json``, ``transfer.md`` and (with a grid) ``transfer.png`` atomically."""
        folder = Path(folder)
        out = {"json": write_json(folder / "transfer.json", self.to_dict())}
        md = self.table()
        if self.grid is not None:
            out["png"] = plot_grid(self.grid, folder / "transfer.png")
            md += f"\n![transfer grid: {self.grid.x} x {self.grid.y}](transfer.png)\n"
        out["md"] = write_text(folder / "transfer.md", md)
        return out


def _run(policy: Any, spec: EnvSpec, jobs: Sequence[EpisodeJob], deterministic: bool = True) -> list[EpisodeResult]:
    # Sets and grid cells of one call share the runner's envs and its batched forward passes.
    with EpisodeRunner(spec) as runner:
        return runner.run(policy, jobs, deterministic)


def _summarize(episodes: Sequence[EpisodeResult]) -> SetResult:
    returns = np.array([e.episode_return for e in episodes])
    return SetResult(
        mean_return=float(returns.mean()),
        std_return=float(returns.std()),
        episodes=len(episodes),
        success_rate=float(np.mean([e.success for e in episodes])),
        params=episodes[0].params,
        returns=returns.tolist(),
        lengths=[e.length for e in episodes],
    )


def evaluate_policy(
    policy: Any,
    spec: EnvSpec,
    values: str | Mapping[str, float],
    episodes: int = 10,
    seed: int = 0,
    deterministic: bool = True,
) -> SetResult:
    """Run ``episodes`` episodes of ``policy`` on one fixed configuration, batched.

    Episode ``i`` is seeded ``seed + i``.

    Args:
        policy: A :class:`RunPolicy`, an SB3 model, or anything with SB3's ``predict``.
        spec: The env spec.
        values: A real set's name, ``"nominal"``, or ``{param: value}``.
        episodes: Number of episodes.
        seed: Base seed.
        deterministic: Act with the mode of the action distribution.

    Returns:
        The returns, lengths and success rate.
    """
    return _summarize(_run(policy, spec, seeded_jobs(values, episodes, seed), deterministic))


def _grid_jobs(grid: GridSpec, episodes: int, seed: int) -> list[EpisodeJob]:
    return [
        EpisodeJob({grid.x: xv, grid.y: yv}, seed + k)
        for yv in grid.y_values
        for xv in grid.x_values
        for k in range(episodes)
    ]


def _grid_result(spec: EnvSpec, grid: GridSpec, episodes: int, results: Sequence[EpisodeResult]) -> GridResult:
    nx = len(grid.x_values)
    means = [[0.0] * nx for _ in grid.y_values]
    succ = [[0.0] * nx for _ in grid.y_values]
    for cell in range(nx * len(grid.y_values)):
        r = _summarize(results[cell * episodes : (cell + 1) * episodes])
        means[cell // nx][cell % nx], succ[cell // nx][cell % nx] = r.mean_return, r.success_rate
    box = {p.name: list(p.range) for p in spec.params if p.name in (grid.x, grid.y)}
    return GridResult(grid.x, grid.y, list(grid.x_values), list(grid.y_values), means, succ, episodes, box)


def evaluate_grid(
    policy: Any, spec: EnvSpec, grid: GridSpec, episodes: int = 5, seed: int = 0
) -> GridResult:
    """Mean return over every (x, y) pair of ``grid``; other parameters stay nominal."""
    return _grid_result(spec, grid, episodes, _run(policy, spec, _grid_jobs(grid, episodes, seed)))


def plot_grid(grid: GridResult, path: str | os.PathLike) -> Path:
    """Draw the grid as a heat map (mean return), with the training box outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    data = np.asarray(grid.mean_return)
    fig, ax = plt.subplots(figsize=(1.1 * len(grid.x_values) + 2.5, 0.9 * len(grid.y_values) + 1.8))
    im = ax.imshow(data, origin="lower", cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(grid.x_values)), [f"{v:g}" for v in grid.x_values])
    ax.set_yticks(range(len(grid.y_values)), [f"{v:g}" for v in grid.y_values])
    ax.set_xlabel(grid.x)
    ax.set_ylabel(grid.y)
    ax.set_title(f"mean return ({grid.episodes} episodes per cell)")
    span = float(np.ptp(data)) or 1.0
    for j in range(data.shape[0]):
        for i in range(data.shape[1]):
            dark = (data[j, i] - data.min()) / span < 0.5
            ax.text(i, j, f"{data[j, i]:.0f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    rect = _box_rect(grid)
    if rect is not None:
        ax.add_patch(Rectangle(rect[:2], rect[2], rect[3], fill=False, edgecolor="red", linewidth=2, label="training box"))
        ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()

    def write(p: Path) -> None:
        fig.savefig(p, format="png", dpi=100)

    try:
        return atomic_write(path, write, suffix=".png")
    finally:
        plt.close(fig)


def _box_rect(grid: GridResult) -> tuple[float, float, float, float] | None:
    # The box in grid-cell coordinates, interpolated between the swept values.
    def to_cell(values: Sequence[float], lo: float, hi: float) -> tuple[float, float] | None:
        if len(values) < 2:
            return None
        idx = np.arange(len(values), dtype=float)
        a, b = np.interp([lo, hi], values, idx)
        return a, b

    xr = grid.train_box.get(grid.x)
    yr = grid.train_box.get(grid.y)
    xs = to_cell(grid.x_values, *xr) if xr else (-0.5, len(grid.x_values) - 0.5)
    ys = to_cell(grid.y_values, *yr) if yr else (-0.5, len(grid.y_values) - 0.5)
    if xs is None or ys is None:
        return None
    return xs[0], ys[0], xs[1] - xs[0], ys[1] - ys[0]


def evaluate_transfer(
    run: Run | str | os.PathLike,
    episodes: int = 10,
    sets: Sequence[str] | None = None,
    grid: bool | GridSpec = False,
    grid_episodes: int | None = None,
    seed: int = 10_000,
    device: str = "cpu",
    save: bool = True,
) -> TransferReport:
    """Evaluate a trained run on the nominal sim and its env spec's held-out real sets.

    Args:
        run: A :class:`Run` (as returned by :func:`rlsim2real.train`) or its directory.
        episodes: Deterministic episodes per set.
        sets: Set names (``"nominal"`` and real sets); default all.
        grid: ``True`` for the spec's default grid, or a :class:`GridSpec`.
        grid_episodes: Episodes per grid cell (default ``min(episodes, 5)``).
        seed: Base seed of the evaluation episodes (distinct from training seeds).
        device: Torch device for the policy.
        save: Write ``transfer.json`` / ``.md`` / ``.png`` into the run directory.

    Returns:
        The report.

    Raises:
        SpecError: on an unknown set name or a run without a model.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    spec = run.env_spec
    names = list(sets) if sets else ["nominal", *spec.real_sets]
    for name in names:
        if name != "nominal":
            spec.real_set(name)  # unknown names fail before any episode runs
    if grid is True and spec.grid is None:
        raise SpecError(f"{spec.source}: evaluation.grid is not set; add one to evaluate a grid")
    from rlsim2real.training import limit_torch_threads

    limit_torch_threads()
    policy = RunPolicy.from_run(run, device=device)
    jobs = [job for name in names for job in seeded_jobs(name, episodes, seed)]
    gspec = (spec.grid if grid is True else grid) or None
    n_grid = grid_episodes or min(episodes, 5)
    if gspec is not None:
        jobs += _grid_jobs(gspec, n_grid, seed)
    # Sets and grid cells run together, so the policy's forward passes are shared.
    done = _run(policy, spec, jobs)
    results = {name: _summarize(done[k * episodes : (k + 1) * episodes]) for k, name in enumerate(names)}
    grid_result = None
    if gspec is not None:
        grid_result = _grid_result(spec, gspec, n_grid, done[len(names) * episodes :])
    cfg = run.config
    report = TransferReport(
        env=spec.name,
        strategy=cfg.get("strategy", "uniform"),
        dann=bool(cfg.get("agent", {}).get("dann", {}).get("enabled", False)),
        timesteps=int(policy.model.num_timesteps),
        seed=int(cfg.get("seed", 0)),
        sets=results,
        grid=grid_result,
    )
    if save:
        report.save(run.path)
    return report
