"""Domain discriminator: an MLP on encoder features behind a gradient reversal layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch as th
from torch import nn

from rlsim2real.dann.grl import GradientReversal


class DomainDiscriminator(nn.Module):
    """Predict whether encoder features come from the source (0) or target (1) domain.

    The gradient reversal layer sits at the input, so the discriminator's own weights
    descend the domain loss while whatever produced ``features`` ascends it, scaled by
    ``self.grl.lambda_``. Pass ``features.detach()`` to train the discriminator alone.
    There is no BatchNorm: batches are masked and padded, so batch statistics would mix
    padding into the estimate.

    Args:
        in_features: Size of the encoder features, ``D``.
        hidden_sizes: Widths of the hidden layers.
        activation_fn: Activation class placed after every hidden layer.
        lambda_: Initial gradient reversal scale.

    Raises:
        ValueError: If ``in_features`` or a hidden size is not positive.

    Example:
        >>> disc = DomainDiscriminator(8, hidden_sizes=(16,))
        >>> disc(th.zeros(5, 8)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation_fn: type[nn.Module] = nn.ReLU,
        lambda_: float = 1.0,
    ) -> None:
        super().__init__()
        if in_features <= 0 or any(int(h) <= 0 for h in hidden_sizes):
            raise ValueError(
                f"DomainDiscriminator: sizes must be positive, got in_features={in_features}, "
                f"hidden_sizes={tuple(hidden_sizes)}"
            )
        self.grl = GradientReversal(lambda_)
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, int(hidden)), activation_fn()]
            width = int(hidden)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: th.Tensor) -> th.Tensor:
        """Domain logits.

        Args:
            features: Encoder output, shape (N, D).

        Returns:
            One logit per sample, shape (N,); positive means "target".
        """
        return self.net(self.grl(features)).squeeze(-1)
