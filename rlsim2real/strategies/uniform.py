"""Uniform domain randomization (Tobin et al. 2017; Peng et al. 2018): a fixed training box."""

from __future__ import annotations

from rlsim2real.distributions import BoxDistribution
from rlsim2real.params import ParamSpace
from rlsim2real.strategies.base import Strategy


class UniformStrategy(Strategy):
    """Sample every parameter from its hand-picked range for the whole run.

    Each Param's own ``dist`` is kept (``uniform``, ``loguniform`` or truncated ``normal``);
    the box never changes, so :meth:`update` never asks for a broadcast.

    Args:
        space: The training box.

    Example:
        >>> from rlsim2real.params import Param, ParamSpace
        >>> s = UniformStrategy(ParamSpace([Param("m", "body_mass[torso]", (0.5, 1.5))]))
        >>> s.state_dict()["distribution"]["params"][0]["range"]
        [0.5, 1.5]
    """

    name = "uniform"

    def __init__(self, space: ParamSpace) -> None:
        super().__init__(BoxDistribution(space))
