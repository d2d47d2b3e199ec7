"""DANN settings for the agent and the buffer of unlabeled target-domain observations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

from rlsim2real.dann.schedules import SCHEDULES, make_schedule


@dataclass(frozen=True)
class DannConfig:
    """Domain-adversarial training settings (the ``dann=`` argument of the agent).

    Attributes:
        enabled: Turn DANN on.
        weight: Weight of the domain loss in the total loss; the encoder sees
            ``weight * lambda(progress)`` times the reversed gradient.
        schedule: ``"constant"``, ``"ganin"`` or ``"linear"`` (see :mod:`rlsim2real.dann.schedules`).
        gamma: Steepness of the ``"ganin"`` schedule.
        warmup: Ramp fraction of the ``"linear"`` schedule.
        lambda_max: Final / constant value of lambda.
        discriminator_hidden: Hidden widths of the discriminator MLP.
        mmd_weight: Weight of the MMD^2 alignment loss on encoder features (0 disables it).
        coral_weight: Weight of the CORAL alignment loss (0 disables it).
        lr: Discriminator learning rate; None follows the policy's learning-rate schedule.
        schedule_timesteps: Horizon over which progress goes from 0 to 1; None uses the
            ``total_timesteps`` of the first ``learn`` call (kept across save/load).
        heldout_fraction: Fraction of target observations kept out of training to measure
            discriminator accuracy.
    """

    enabled: bool = False
    weight: float = 0.1
    schedule: str = "ganin"
    gamma: float = 10.0
    warmup: float = 0.1
    lambda_max: float = 1.0
    discriminator_hidden: tuple[int, ...] = (64, 64)
    mmd_weight: float = 0.0
    coral_weight: float = 0.0
    lr: float | None = None
    schedule_timesteps: int | None = None
    heldout_fraction: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "discriminator_hidden", tuple(int(h) for h in self.discriminator_hidden))
        for name in ("weight", "mmd_weight", "coral_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"dann.{name} must be >= 0, got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"dann.schedule: unknown {self.schedule!r}; expected one of {sorted(SCHEDULES)}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"dann.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"dann.lr must be positive or None, got {self.lr}")

    @classmethod
    def from_any(cls, value: DannConfig | dict[str, Any] | bool | None) -> DannConfig:
        """Build from a dict (unknown keys rejected), a bool, None or a config.

        Raises:
            ValueError: On an unknown key or an invalid value.
        """
        if value is None or value is False:
            return cls()
        if value is True:
            return cls(enabled=True)
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"dann: unknown key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**value)

    def make_schedule(self):
        """The lambda schedule these settings describe (a picklable callable of progress)."""
        kwargs: dict[str, Any] = {"constant": {"value": self.lambda_max}, "ganin": {"gamma": self.gamma, "max_value": self.lambda_max},
                                  "linear": {"warmup": self.warmup, "max_value": self.lambda_max}}[self.schedule]
        return make_schedule(self.schedule, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for logs and specs)."""
        return asdict(self)


class TargetObservations:
    """Unlabeled target-domain observations on the training device, split into train/held-out.

    Args:
        observations: Shape (N, *obs_shape), finite, N >= 1.
        observation_space: The agent's observation space (Box only).
        device: Where batches are served.
        heldout_fraction: Fraction kept for held-out accuracy (at least one row when N >= 2).
        rng: Generator used for the split and for sampling.

    Raises:
        ValueError: If the array is empty, has the wrong shape or holds non-finite values.
    """

    def __init__(
        self,
        observations: np.ndarray,
        observation_space: spaces.Space,
        device: th.device,
        heldout_fraction: float,
        rng: np.random.Generator,
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise ValueError(f"target observations need a Box observation space, got {observation_space}")
        obs = np.asarray(observations)
        expected: Sequence[int] = observation_space.shape
        if obs.ndim != len(expected) + 1 or tuple(obs.shape[1:]) != tuple(expected):
            raise ValueError(f"target observations must have shape (N, {', '.join(map(str, expected))}), got {obs.shape}")
        if len(obs) == 0:
            raise ValueError("target observations are empty; need at least one row")
        if not np.issubdtype(obs.dtype, np.number) or not np.all(np.isfinite(obs)):
            raise ValueError("target observations must be finite numbers (found NaN, inf or a non-numeric dtype)")
        order = rng.permutation(len(obs))
        n_heldout = int(round(heldout_fraction * len(obs))) if len(obs) > 1 else 0
        n_heldout = min(max(n_heldout, 1 if heldout_fraction > 0 and len(obs) > 1 else 0), len(obs) - 1)
        as_tensor = lambda a: th.as_tensor(a, dtype=th.float32, device=device)  # noqa: E731
        self.train = as_tensor(obs[order[n_heldout:]])
        self.heldout = as_tensor(obs[order[:n_heldout]]) if n_heldout else self.train
        self.rng = rng

    def __len__(self) -> int:
        return len(self.train) + (len(self.heldout) if self.heldout is not self.train else 0)

    def sample(self, n: int, heldout: bool = False) -> th.Tensor:
        """Draw ``n`` rows with replacement, shape (n, *obs_shape), on the device."""
        pool = self.heldout if heldout else self.train
        idx = th.as_tensor(self.rng.integers(len(pool), size=n), device=pool.device)
        return pool[idx]
