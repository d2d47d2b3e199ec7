"""A trainable MLP observation encoder: what the DANN discriminator pushes against.

SB3's default features extractor for vector observations is a flatten with no parameters,
so a gradient-reversal layer placed after it has nothing to train and domain-adversarial
training silently does nothing. This encoder gives the policy a learnable representation
that both the LSTM and the discriminator read.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


class MlpEncoder(BaseFeaturesExtractor):
    """Flatten, then Linear + activation layers; ``features_dim`` is the last width.

    Args:
        observation_space: A Box space.
        net_arch: Hidden widths, e.g. ``(64,)``; at least one layer.
        activation: ``"tanh"``, ``"relu"``, ``"elu"`` or ``"silu"``.

    Example:
        >>> import gymnasium as gym
        >>> enc = MlpEncoder(gym.spaces.Box(-1, 1, (4,)), net_arch=(32, 16))
        >>> enc(th.zeros(5, 4)).shape
        torch.Size([5, 16])
    """

    def __init__(self, observation_space: gym.spaces.Box, net_arch: Sequence[int] = (64,), activation: str = "tanh") -> None:
        if not net_arch:
            raise ValueError("MlpEncoder needs at least one layer in net_arch")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MlpEncoder: activation {activation!r} is not one of {', '.join(_ACTIVATIONS)}")
        super().__init__(observation_space, int(net_arch[-1]))
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(np.prod(observation_space.shape))
        for out in net_arch:
            layers += [nn.Linear(width, int(out)), _ACTIVATIONS[activation]()]
            width = int(out)
        self.net = nn.Sequential(*layers)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)
