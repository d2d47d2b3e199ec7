"""Uniform domain randomization (Tobin et al. 2017; Peng et al. 2018): a fixed training box."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rlsim2real.distributions import BoxDistribution
from rlsim2real.strategies.base import Strategy, StrategySettings

if TYPE_CHECKING:
    from rlsim2real.specs import EnvSpec


@dataclass(frozen=True)
class UniformSettings(StrategySettings):
    """Uniform DR has no settings: the box is the env spec's training box."""


class UniformStrategy(Strategy):
    """Sample every parameter from its hand-picked range for the whole run.

    Each Param's own ``dist`` is kept (``uniform``, ``loguniform`` or truncated ``normal``);
    the box never changes, so :meth:`update` never asks for a broadcast.

    Args:
        env: The env spec (its training box).
        settings: None needed.
        seed: Unused (the box never changes).

    Example:
        >>> import rlsim2real as rs
        >>> s = UniformStrategy(rs.load_env_spec("inverted_pendulum"))
        >>> s.summary()["distribution"]["params"][0]["range"]
        [0.7, 1.3]
    """

    name = "uniform"
    Settings = UniformSettings

    def __init__(self, env: "EnvSpec", settings: UniformSettings | None = None, seed: int = 0) -> None:
        super().__init__(BoxDistribution(env.params))
