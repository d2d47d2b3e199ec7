"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, ``-lambda * grad`` backward."""

from __future__ import annotations

import torch as th
from torch import nn


class _GradReverse(th.autograd.Function):
    """Autograd function behind :func:`grad_reverse`."""

    @staticmethod
    def forward(ctx, x: th.Tensor, lambda_: float) -> th.Tensor:  # type: ignore[override]
        ctx.lambda_ = float(lambda_)
        # view_as so autograd sees a new node even though the values are untouched.
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: th.Tensor) -> tuple[th.Tensor, None]:  # type: ignore[override]
        return grad_output.neg() * ctx.lambda_, None


def grad_reverse(x: th.Tensor, lambda_: float = 1.0) -> th.Tensor:
    """Return ``x`` unchanged; multiply the gradient flowing back through it by ``-lambda_``.

    Args:
        x: Any tensor, shape (*).
        lambda_: Scale of the reversed gradient (0 blocks it, 1 is a pure sign flip).

    Returns:
        A tensor equal to ``x``, shape (*).

    Example:
        >>> x = th.ones(3, requires_grad=True)
        >>> grad_reverse(x, 0.5).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000, -0.5000])
    """
    return _GradReverse.apply(x, lambda_)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse` with a settable ``lambda_``.

    The training loop sets ``lambda_`` from a schedule before each update.

    Args:
        lambda_: Initial scale of the reversed gradient.
    """

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: th.Tensor) -> th.Tensor:
        """Identity on ``x`` (shape (*)); reverses and scales its gradient."""
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"
