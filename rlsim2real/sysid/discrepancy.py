"""Discrepancy between real and simulated observation sequences (SimOpt's objective).

Each observation dimension is divided by a scale (by default the real data's standard
deviation per dimension, so a joint angle and a velocity count alike), optionally smoothed
along time with a Gaussian kernel, and the weighted L1 and L2 norms of the difference are
averaged over the steps compared.
"""

from __future__ import annotations

import numpy as np


def observation_scale(obs: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Per-dimension standard deviation of ``obs`` (T, obs_dim), at least ``floor``."""
    obs = np.asarray(obs, dtype=np.float64).reshape(len(obs), -1)
    return np.maximum(obs.std(axis=0), floor)


def gaussian_smooth(x: np.ndarray, sigma: float, axis: int = -2) -> np.ndarray:
    """Smooth ``x`` along ``axis`` (time) with a Gaussian of ``sigma`` steps (edges: nearest).

    ``sigma <= 0`` returns ``x`` unchanged.
    """
    if sigma <= 0:
        return x
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(x, dtype=np.float64), sigma, axis=axis, mode="nearest")


def discrepancy(
    real: np.ndarray,
    sim: np.ndarray,
    scale: np.ndarray | None = None,
    l1: float = 1.0,
    l2: float = 1.0,
    smooth: float = 0.0,
    weights: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted, normalized L1 + L2 discrepancy of simulated against real observations.

    For differences ``d = (smooth(sim) - smooth(real)) / scale`` over ``k`` steps::

        D = l1 * mean_t sum_i w_i |d_ti|  +  l2 * mean_t sqrt(sum_i w_i d_ti^2)

    Args:
        real: Real observations, shape (..., k, obs_dim); broadcast against ``sim``.
        sim: Simulated observations, shape (..., k, obs_dim).
        scale: Per-dimension scale, shape (obs_dim,) (default 1).
        l1: Weight of the L1 term.
        l2: Weight of the L2 term.
        smooth: Gaussian smoothing along the k steps, in steps (0: none).
        weights: Per-dimension weights, shape (obs_dim,) (default 1).
        mask: Which steps count, shape (..., k) broadcast like the leading axes (default all);
            the means run over the steps that count.

    Returns:
        The discrepancy per leading index, shape ``broadcast(real, sim).shape[:-2]``.

    Example, worked by hand: two steps of a 2-D observation, scale (1, 2), weights (1, 1).
    The differences are (0.5, 1)/(1, 2) = (0.5, 0.5) and (-1, 0)/(1, 2) = (-1, 0); the L1
    norms are 1.0 and 1.0 (mean 1.0), the L2 norms sqrt(0.5) = 0.7071 and 1.0 (mean 0.8536).

        >>> real = np.array([[0.0, 0.0], [1.0, 2.0]])
        >>> sim = np.array([[0.5, 1.0], [0.0, 2.0]])
        >>> float(discrepancy(real, sim, scale=np.array([1.0, 2.0]), l1=1.0, l2=0.0))
        1.0
        >>> round(float(discrepancy(real, sim, scale=np.array([1.0, 2.0]), l1=0.0, l2=1.0)), 4)
        0.8536
        >>> round(float(discrepancy(real, sim, scale=np.array([1.0, 2.0]))), 4)
        1.8536
        >>> float(discrepancy(real, real))
        0.0
    """
    real = np.asarray(real, dtype=np.float64)
    sim = np.asarray(sim, dtype=np.float64)
    diff = gaussian_smooth(sim, smooth) - gaussian_smooth(real, smooth)
    if scale is not None:
        diff = diff / scale
    w = np.ones(diff.shape[-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if mask is None:
        mask = np.ones(diff.shape[-2])
    mask = np.broadcast_to(np.asarray(mask, dtype=np.float64), diff.shape[:-1])
    steps = np.maximum(mask.sum(axis=-1), 1.0)
    out = np.zeros(diff.shape[:-2])
    if l1:
        out = out + l1 * np.sum(mask * np.sum(w * np.abs(diff), axis=-1), axis=-1) / steps
    if l2:
        out = out + l2 * np.sum(mask * np.sqrt(np.sum(w * diff**2, axis=-1)), axis=-1) / steps
    return out
