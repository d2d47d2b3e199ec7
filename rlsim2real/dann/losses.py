"""Domain losses: adversarial BCE (DANN), multi-kernel MMD and CORAL."""

from __future__ import annotations

from collections.abc import Sequence

import torch as th
import torch.nn.functional as F


def _select(logits: th.Tensor, mask: th.Tensor | None) -> th.Tensor:
    if mask is None:
        return logits
    if mask.shape != logits.shape:
        raise ValueError(f"source_mask shape {tuple(mask.shape)} != logits shape {tuple(logits.shape)}")
    return logits[mask.bool()]


def dann_loss(
    source_logits: th.Tensor,
    target_logits: th.Tensor,
    source_mask: th.Tensor | None = None,
) -> th.Tensor:
    """Binary cross-entropy domain loss, source labelled 0 and target labelled 1.

    Both domains get equal weight (the mean over each domain, averaged), so an
    unbalanced pair of batches does not bias the discriminator.

    Args:
        source_logits: Discriminator logits for source samples, shape (N_s,).
        target_logits: Discriminator logits for target samples, shape (N_t,).
        source_mask: Optional validity mask, shape (N_s,); False entries (padding) are
            ignored.

    Returns:
        Scalar loss tensor.

    Raises:
        ValueError: If the mask does not match the logits or a domain has no sample.
    """
    source = _select(source_logits, source_mask)
    if source.numel() == 0 or target_logits.numel() == 0:
        raise ValueError("dann_loss needs at least one valid source and one target sample")
    loss_s = F.binary_cross_entropy_with_logits(source, th.zeros_like(source))
    loss_t = F.binary_cross_entropy_with_logits(target_logits, th.ones_like(target_logits))
    return 0.5 * (loss_s + loss_t)


def discriminator_accuracy(
    source_logits: th.Tensor,
    target_logits: th.Tensor,
    source_mask: th.Tensor | None = None,
) -> tuple[float, float, float]:
    """Accuracy of the domain discriminator (logit > 0 means "target").

    Args:
        source_logits: Logits for source samples, shape (N_s,).
        target_logits: Logits for target samples, shape (N_t,).
        source_mask: Optional validity mask for the source, shape (N_s,).

    Returns:
        ``(balanced, source, target)`` accuracies in [0, 1]; ``balanced`` is their mean,
        0.5 for a discriminator that cannot tell the domains apart.
    """
    with th.no_grad():
        source = _select(source_logits, source_mask)
        acc_s = (source <= 0).float().mean().item()
        acc_t = (target_logits > 0).float().mean().item()
    return 0.5 * (acc_s + acc_t), acc_s, acc_t


def mmd_loss(
    x: th.Tensor,
    y: th.Tensor,
    bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
) -> th.Tensor:
    """Biased (V-statistic) multi-kernel Gaussian MMD^2 between two samples.

    ``k(a, b) = sum_s exp(-||a - b||^2 / (2 * s^2 * m))`` over the bandwidths ``s``, where
    ``m`` is the mean pairwise squared distance of the pooled sample (detached), so
    the bandwidths are relative to the data's scale. The biased estimator includes the
    diagonal terms, is always >= 0 and is exactly 0 when ``x`` and ``y`` are the same sample.

    Args:
        x: Source sample, shape (N, D).
        y: Target sample, shape (M, D).
        bandwidths: Relative kernel widths.

    Returns:
        Scalar MMD^2 estimate.

    Raises:
        ValueError: If the samples are empty, not 2-D, or differ in width.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or len(x) == 0 or len(y) == 0:
        raise ValueError(f"mmd_loss expects (N, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not bandwidths:
        raise ValueError("mmd_loss needs at least one bandwidth")
    pooled = th.cat([x, y])
    sq_dist = th.cdist(pooled, pooled).pow(2)
    scale = sq_dist.detach().mean().clamp_min(1e-12)
    kernel = sum(th.exp(-sq_dist / (2.0 * s * s * scale)) for s in bandwidths)
    n = len(x)
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return (k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean()).clamp_min(0.0)


def coral_loss(x: th.Tensor, y: th.Tensor) -> th.Tensor:
    """CORAL loss (Sun & Saenko, 2016): ``||C_s - C_t||_F^2 / (4 d^2)``.

    ``C`` is the unbiased feature covariance (divided by ``n - 1``).

    Args:
        x: Source features, shape (N, D), N >= 2.
        y: Target features, shape (M, D), M >= 2.

    Returns:
        Scalar loss.

    Raises:
        ValueError: If either sample has fewer than two rows or the widths differ.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"coral_loss expects (N>=2, D) and (M>=2, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    d = x.shape[1]
    return (_covariance(x) - _covariance(y)).pow(2).sum() / (4.0 * d * d)


def _covariance(x: th.Tensor) -> th.Tensor:
    centered = x - x.mean(dim=0, keepdim=True)
    return centered.T @ centered / (len(x) - 1)
