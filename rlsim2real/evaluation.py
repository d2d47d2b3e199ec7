"""Transfer evaluation on held-out "real" sets, 2-D grids, and report rendering.

``evaluate_transfer(run)`` runs deterministic episodes of a trained policy on the nominal
sim and on every real set of the run's env spec, with observation normalization frozen,
and writes ``transfer.json`` / ``transfer.md`` (and ``transfer.png`` for a grid) into the
run directory. It evaluates the run's final ``model.zip`` only; a checkpoint is evaluated
when one is chosen explicitly (``checkpoint=`` / ``step=``), and its report goes into that
checkpoint's folder, so the run's own ``transfer.*`` are never replaced by a checkpoint's.

Everything that can be checked is checked before the first episode: the episode count,
the device, the set names, the model and normalization files, and that the report can be
written (the run's lock is free and the folder writable).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlsim2real.episodes import EpisodeJob, EpisodeResult, EpisodeRunner, seeded_jobs
from rlsim2real.io import atomic_write, write_json, write_text
from rlsim2real.params import SpecError
from rlsim2real.runs import Run, RunLock, check_device, check_writable, load_normalizer
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
        """Load a run's policy and its normalization statistics.

        Args:
            run: A :class:`Run` or its directory.
            folder: Where ``model.zip`` (and ``vecnormalize.pkl``) are: the run root by
                default (see :meth:`Run.model_dir`; there is no silent fallback to a
                checkpoint), or a checkpoint folder.
            device: Torch device.

        Raises:
            SpecError: naming the file, if ``model.zip`` is missing or either file is empty,
                truncated or corrupt; or if the run was normalized and its statistics are gone.
        """
        run = run if isinstance(run, Run) else Run.open(run)
        folder = Path(folder) if folder is not None else run.model_dir()
        stats = folder / "vecnormalize.pkl"
        if run.config.get("normalize") and not stats.exists():
            # Without its statistics a normalized policy sees raw observations and fails
            # quietly: refuse instead.
            raise SpecError(f"{stats}: no such file; the run was trained with normalize = true and needs it")
        obs_rms = load_normalizer(stats) if stats.exists() else None
        model = run.load_model(folder, device=device)
        if obs_rms is not None:
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
    color_max: float | None = None
    """Top of the heat map's colour scale (see :func:`plot_grid`)."""

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
    saved: dict[str, Path] = field(default_factory=dict, compare=False, repr=False)
    """Files :meth:`save` wrote (``json``, ``md``, ``png``); not part of ``to_dict()``."""

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
        self.saved = out
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


def color_scale(grid: GridResult, color_max: float | None = None) -> tuple[float, float, bool]:
    """The heat map's colour scale ``(vmin, vmax, fixed)``.

    The scale is fixed, so that two maps can be compared cell by cell: from 0 to
    ``color_max`` (the argument, else ``grid.color_max``, which evaluation sets from the env
    spec's ``evaluation.color_max``, else its ``evaluation.success_return``). Only when none
    is known does it follow this grid's own largest mean (``fixed`` is then ``False`` and the
    map says so). Returns below 0 or above the top take the end colours.
    """
    top = color_max if color_max is not None else grid.color_max
    if top is not None and top > 0:
        return 0.0, float(top), True
    data = np.asarray(grid.mean_return, dtype=float)
    return 0.0, float(max(np.nanmax(data), 0.0)) or 1.0, False


def plot_grid(grid: GridResult, path: str | os.PathLike, color_max: float | None = None) -> Path:
    """Draw the grid as a heat map of mean return, with the training box outlined.

    Args:
        grid: The grid result.
        path: The ``.png`` to write (atomically).
        color_max: Top of the colour scale; default ``grid.color_max`` (see :func:`color_scale`).

    Returns:
        ``path`` as a :class:`Path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    data = np.asarray(grid.mean_return, dtype=float)
    vmin, vmax, fixed = color_scale(grid, color_max)
    fig, ax = plt.subplots(figsize=(1.1 * len(grid.x_values) + 2.5, 0.9 * len(grid.y_values) + 1.8))
    im = ax.imshow(data, origin="lower", cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(grid.x_values)), [f"{v:g}" for v in grid.x_values])
    ax.set_yticks(range(len(grid.y_values)), [f"{v:g}" for v in grid.y_values])
    ax.set_xlabel(grid.x)
    ax.set_ylabel(grid.y)
    scale = "" if fixed else "; scaled to this grid: set evaluation.color_max"
    ax.set_title(f"mean return ({grid.episodes} episodes per cell{scale})", fontsize=9 if scale else None)
    for j in range(data.shape[0]):
        for i in range(data.shape[1]):
            dark = (data[j, i] - vmin) / (vmax - vmin) < 0.5
            ax.text(i, j, f"{data[j, i]:.0f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    rect = _box_rect(grid)
    if rect is not None:
        ax.add_patch(Rectangle(rect[:2], rect[2], rect[3], fill=False, edgecolor="red", linewidth=2, label="training box"))
        ax.legend(loc="upper right", fontsize=8)
    below, above = bool(np.nanmin(data) < vmin), bool(np.nanmax(data) > vmax)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[below, above]
    bar = fig.colorbar(im, ax=ax, extend=extend)
    bar.set_label("mean return")
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
    checkpoint: str | os.PathLike | None = None,
    step: int | None = None,
    progress: bool | None = None,
) -> TransferReport:
    """Evaluate a trained run on the nominal sim and its env spec's held-out real sets.

    Args:
        run: A :class:`Run` (as returned by :func:`rlsim2real.train`) or its directory.
        episodes: Deterministic episodes per set (>= 1).
        sets: Set names (``"nominal"`` and real sets); default all.
        grid: ``True`` for the spec's default grid, or a :class:`GridSpec`.
        grid_episodes: Episodes per grid cell (default ``min(episodes, 5)``).
        seed: Base seed of the evaluation episodes (distinct from training seeds).
        device: Torch device for the policy (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        save: Write ``transfer.json`` / ``.md`` / ``.png``: into the run directory, or into
            the checkpoint's folder when a checkpoint is chosen. Saving holds the run's
            :class:`~rlsim2real.runs.RunLock` (purpose ``"evaluate"``) throughout.
        checkpoint: Evaluate this checkpoint folder (or its ``model.zip``) instead of the
            run's final model.
        step: Evaluate the checkpoint saved at this step instead of the final model.
        progress: Show a progress bar on stderr (default: when stderr is a terminal;
            otherwise one line says what is being evaluated). ``False``: silent.

    Returns:
        The report.

    Raises:
        SpecError: before any episode runs, in one line: a bad episode count, device, set
            name or grid; a missing, empty or corrupt model or normalization file; both
            ``checkpoint`` and ``step``; a run another process holds, or a folder the report
            cannot be written to.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    _check_count(episodes, "episodes (--episodes)")
    if grid_episodes is not None:
        _check_count(grid_episodes, "grid_episodes")
    check_device(device)
    spec = run.env_spec
    names = list(sets) if sets else ["nominal", *spec.real_sets]
    for name in names:
        if name != "nominal":
            spec.real_set(name)  # unknown names fail before any episode runs
    if grid is True and spec.grid is None:
        raise SpecError(f"{spec.source}: evaluation.grid is not set; add one to evaluate a grid")
    if checkpoint is not None and step is not None:
        raise SpecError("--checkpoint and --step both given; expected one of them")
    if checkpoint is not None or step is not None:
        folder = run.checkpoint(step=step, path=checkpoint)
    else:
        folder = run.model_dir()
    gspec = (spec.grid if grid is True else grid) or None
    n_grid = grid_episodes or min(episodes, 5)
    with RunLock(run.path, "evaluate") if save else contextlib.nullcontext():
        if save:
            check_writable(folder)
        report = _evaluate_folder(run, folder, names, episodes, gspec, n_grid, seed, device, progress)
        if save:
            report.save(folder)
    return report


def _evaluate_folder(
    run: Run,
    folder: Path,
    names: list[str],
    episodes: int,
    gspec: GridSpec | None,
    n_grid: int,
    seed: int,
    device: str,
    progress: bool | None,
) -> TransferReport:
    from rlsim2real.agents.threads import limit_torch_threads

    spec = run.env_spec
    limit_torch_threads()
    policy = RunPolicy.from_run(run, folder, device=device)
    jobs = [job for name in names for job in seeded_jobs(name, episodes, seed)]
    if gspec is not None:
        jobs += _grid_jobs(gspec, n_grid, seed)
    # Sets and grid cells run together, so the policy's forward passes are shared.
    label = f"evaluate {run.path if folder == run.path else folder}"
    done = _run_with_progress(policy, spec, jobs, progress, label, device)
    results = {name: _summarize(done[k * episodes : (k + 1) * episodes]) for k, name in enumerate(names)}
    grid_result = None
    if gspec is not None:
        grid_result = _grid_result(spec, gspec, n_grid, done[len(names) * episodes :])
        grid_result.color_max = spec.color_max if spec.color_max is not None else spec.success_return
    cfg = run.config
    return TransferReport(
        env=spec.name,
        strategy=cfg.get("strategy", "uniform"),
        dann=bool(cfg.get("agent", {}).get("dann", {}).get("enabled", False)),
        timesteps=int(policy.model.num_timesteps),
        seed=int(cfg.get("seed", 0)),
        sets=results,
        grid=grid_result,
    )


def _check_count(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SpecError(f"{where}: expected an integer >= 1, got {value!r}")


# Episodes per runner call: its own lockstep batch, so chunking changes nothing
# but lets a progress bar move.
_PROGRESS_CHUNK = 128


class _StepCounter:
    """Forwards ``predict`` and moves a progress bar by one step per batched call.

    The bar counts lockstep steps: each chunk of episodes is worth ``horizon`` steps (the
    time limit), and snaps to its full worth when its episodes are done.
    """

    def __init__(self, policy: Any, bar: Any, horizon: int) -> None:
        self._policy = policy
        self._bar = bar
        self._horizon = horizon
        self._calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        if self._calls < self._horizon - 1:
            self._calls += 1
            self._bar.update(1)
        return self._policy.predict(*args, **kwargs)

    def finish_chunk(self) -> None:
        self._bar.update(self._horizon - self._calls)
        self._calls = 0


def _horizon(spec: EnvSpec) -> int:
    if spec.max_episode_steps:
        return int(spec.max_episode_steps)
    if spec.env_id:
        import gymnasium as gym

        try:
            return int(gym.spec(spec.env_id).max_episode_steps or 1000)
        except gym.error.Error:
            pass
    return 1000


def _run_with_progress(
    policy: Any, spec: EnvSpec, jobs: list[EpisodeJob], progress: bool | None, label: str, device: str
) -> list[EpisodeResult]:
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        if progress is None:
            print(f"{label}: {len(jobs)} episodes on {device}", file=sys.stderr, flush=True)
        return _run(policy, spec, jobs)
    from tqdm import tqdm

    chunks = range(0, len(jobs), _PROGRESS_CHUNK)
    horizon = _horizon(spec)
    done: list[EpisodeResult] = []
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"
    with tqdm(total=len(chunks) * horizon, desc=label, bar_format=bar_format, file=sys.stderr, dynamic_ncols=True) as bar:
        counter = _StepCounter(policy, bar, horizon)
        for lo in chunks:
            done.extend(_run(counter, spec, jobs[lo : lo + _PROGRESS_CHUNK]))
            counter.finish_chunk()
            bar.set_postfix_str(f"{len(done)}/{len(jobs)} episodes")
    return done
