"""Figures of training state: ADR's ranges over training (``ranges.png``), Active DR's
particles (``particles.png``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlsim2real.io import atomic_write


def plot_ranges(
    path: str | os.PathLike,
    names: Sequence[str],
    history: Sequence[tuple[int, Sequence[Sequence[float]]]],
    limits: np.ndarray,
    initial: np.ndarray,
) -> Path:
    """Draw each parameter's range over training as a band, with its limits and initial range.

    Args:
        path: Where the PNG goes (written atomically).
        names: Parameter names, one panel each.
        history: ``(timesteps, ranges)`` snapshots, ranges of shape (n_params, 2).
        limits: Limits per parameter, shape (n_params, 2).
        initial: Initial ranges, shape (n_params, 2).
    """
    plt = _pyplot()

    steps = np.array([t for t, _ in history], dtype=float)
    ranges = np.array([r for _, r in history], dtype=float)  # (snapshots, n, 2)
    n = len(names)
    cols = min(3, max(1, n))
    rows = int(np.ceil(n / cols)) if n else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        lo, hi = ranges[:, k, 0], ranges[:, k, 1]
        ax.fill_between(steps, lo, hi, step="post", alpha=0.35, color="tab:blue", label="current range")
        ax.step(steps, lo, where="post", color="tab:blue", linewidth=1)
        ax.step(steps, hi, where="post", color="tab:blue", linewidth=1)
        for bound in limits[k]:
            ax.axhline(bound, color="tab:red", linestyle="--", linewidth=1)
        ax.axhspan(initial[k, 0], initial[k, 1], color="grey", alpha=0.25, label="initial")
        span = limits[k, 1] - limits[k, 0]
        ax.set_ylim(limits[k, 0] - 0.05 * span, limits[k, 1] + 0.05 * span)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("timesteps", fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    if n:
        axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("ADR ranges over training (dashed: limits)", fontsize=10)
    return _save(fig, path)


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi), suffix=".png")
    finally:
        plt.close(fig)


def plot_particles(
    path: str | os.PathLike,
    names: Sequence[str],
    history: Sequence[tuple[int, Sequence[Sequence[float]]]],
    limits: np.ndarray,
    box: np.ndarray,
) -> Path:
    """Draw each particle's proposals over training in the two parameters whose proposals
    spread most (relative to their limits), against the limits and the training box; with
    one parameter, its value over training.

    Args:
        path: Where the PNG goes (written atomically).
        names: The searched parameters.
        history: ``(timesteps, values)`` per round, values of shape (particles, n_params).
        limits: Limits per parameter, shape (n_params, 2).
        box: Training box per parameter, shape (n_params, 2).
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    steps = np.array([t for t, _ in history], dtype=float)
    values = np.array([v for _, v in history], dtype=float)  # (rounds, particles, n)
    width = np.maximum(limits[:, 1] - limits[:, 0], 1e-12)
    spread = (values / width).reshape(-1, values.shape[-1]).std(axis=0)
    order = np.argsort(-spread, kind="stable")
    colors = plt.cm.viridis(np.linspace(0, 1, values.shape[1]))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if len(names) >= 2:
        a, b = int(order[0]), int(order[1])
        for i in range(values.shape[1]):
            ax.plot(values[:, i, a], values[:, i, b], "-", color=colors[i], alpha=0.35, linewidth=0.8)
            ax.plot(values[-1, i, a], values[-1, i, b], "o", color=colors[i], markersize=5)
        ax.add_patch(Rectangle((box[a, 0], box[b, 0]), box[a, 1] - box[a, 0], box[b, 1] - box[b, 0],
                               fill=False, edgecolor="grey", linestyle=":", label="training box"))
        ax.add_patch(Rectangle((limits[a, 0], limits[b, 0]), width[a], width[b],
                               fill=False, edgecolor="tab:red", linestyle="--", label="limits"))
        ax.set_xlim(limits[a, 0] - 0.05 * width[a], limits[a, 1] + 0.05 * width[a])
        ax.set_ylim(limits[b, 0] - 0.05 * width[b], limits[b, 1] + 0.05 * width[b])
        ax.set_xlabel(names[a])
        ax.set_ylabel(names[b])
        ax.set_title(f"Active DR particles over {len(steps)} rounds (dots: last)", fontsize=10)
    else:
        for i in range(values.shape[1]):
            ax.plot(steps, values[:, i, 0], "-", color=colors[i], alpha=0.6, linewidth=0.8)
        for bound in limits[0]:
            ax.axhline(bound, color="tab:red", linestyle="--", linewidth=1, label="limits")
        ax.axhspan(box[0, 0], box[0, 1], color="grey", alpha=0.2, label="training box")
        ax.set_xlabel("timesteps")
        ax.set_ylabel(names[0] if names else "")
        ax.set_title("Active DR particles over training", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_fit(
    path: str | os.PathLike,
    names: Sequence[str],
    fit,
    prior_unit: np.ndarray,
    limit_unit: np.ndarray,
    to_values,
    truth: np.ndarray | None = None,
) -> Path:
    """Draw each fitted marginal against its prior box (and the truth when known).

    Args:
        path: Where the PNG goes (written atomically).
        names: Parameter names, one panel each.
        fit: The fitted :class:`~rlsim2real.sysid.fit.Gaussian` over normalized parameters.
        prior_unit: Prior box per parameter, normalized, shape (n, 2).
        limit_unit: Limits per parameter, normalized, shape (n, 2) (the marginal is truncated there).
        to_values: Normalized vectors (m, n) -> values in the Params' units.
        truth: True values, shape (n,), or ``None``.
    """
    plt = _pyplot()

    n = len(names)
    cols = min(3, max(1, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        lo, hi = limit_unit[i]
        u = np.linspace(lo, hi, 400)
        density = np.exp(-0.5 * ((u - fit.mean[i]) / fit.std[i]) ** 2)
        grid = np.tile(fit.mean, (len(u), 1))
        grid[:, i] = u
        x = to_values(grid)[:, i]
        box = to_values(np.tile(prior_unit[:, 0], (2, 1)))[0, i], to_values(np.tile(prior_unit[:, 1], (2, 1)))[0, i]
        ax.axvspan(*box, color="0.85", label="prior box")
        ax.plot(x, density, color="C0", label="fit")
        ax.fill_between(x, density, color="C0", alpha=0.25)
        if truth is not None and np.isfinite(truth[i]):
            ax.axvline(truth[i], color="C3", linestyle="--", label="truth")
        # Zoom to where the fit and the box are, not the whole limits.
        span = [min(box[0], x[density > 1e-3].min()), max(box[1], x[density > 1e-3].max())]
        if truth is not None and np.isfinite(truth[i]):
            span = [min(span[0], truth[i]), max(span[1], truth[i])]
        pad = 0.05 * (span[1] - span[0] or 1.0)
        ax.set_xlim(span[0] - pad, span[1] + pad)
        ax.set_title(name)
        ax.set_yticks([])
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    return _save(fig, path, dpi=100)


def plot_render_grid(path: str | os.PathLike, spec, n: int = 8, seed: int = 0) -> Path:
    """What a pixel policy sees: ``n`` randomized frames of the training distribution, then
    one frame of the nominal look and of each held-out real set, labelled.

    Args:
        path: Where the PNG goes (written atomically).
        spec: An env spec with ``[pixels]`` (an :class:`~rlsim2real.specs.EnvSpec`, a name or a path).
        n: Randomized frames (episode starts seeded ``seed``, ``seed + 1``, ...).
        seed: First seed.

    Raises:
        SpecError: if the spec has no ``[pixels]`` table, or ``n < 1``.
    """
    from rlsim2real.factory import make_env, make_real_env
    from rlsim2real.params import SpecError
    from rlsim2real.specs import load_env_spec

    spec = load_env_spec(spec)
    if spec.pixels is None:
        raise SpecError(f"{spec.source}: render-grid needs a pixel env spec (a [pixels] table)")
    if n < 1:
        raise SpecError(f"render-grid: --n must be >= 1, got {n}")
    frames: list[tuple[str, np.ndarray]] = []
    env = make_env(spec, seed=seed)
    try:
        for k in range(n):
            obs, _ = env.reset(seed=seed + k)
            frames.append((f"randomized {seed + k}", obs["image"] if isinstance(obs, dict) else obs))
    finally:
        env.close()
    for name in ["nominal", *spec.real_sets]:
        env = make_real_env(spec, name, seed=seed)
        try:
            obs, _ = env.reset(seed=seed)
        finally:
            env.close()
        frames.append((name, obs["image"] if isinstance(obs, dict) else obs))
    plt = _pyplot()
    cols = min(8, len(frames))
    rows = int(np.ceil(len(frames) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 2.1 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(frames):
            label, image = frames[k]
            ax.imshow(image[..., -3:])  # the newest frame of a stack
            ax.set_title(label, fontsize=7)
    fig.suptitle(f"{spec.name}: randomized training frames, then the nominal look and each real set", fontsize=9)
    return _save(fig, path, dpi=100)
