"""Figures of training state: ADR's ranges over training (``ranges.png``)."""

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=90), suffix=".png")
    finally:
        plt.close(fig)
