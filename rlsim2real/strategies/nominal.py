"""No randomization: every training parameter pinned at the model's nominal value.

The baseline every sim-to-real result is measured against ("trained on the simulator as
it is"): the same experiment, agent, env spec and held-out sets as a randomized run, but
each episode runs on the nominal model, look and sensors. The parameters stay in the
distribution (as points), so ``info["dr_params"]``, logs and checkpoints keep their shape.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rlsim2real.distributions import BoxDistribution
from rlsim2real.params import ParamSpace, SpecError
from rlsim2real.strategies.base import Strategy, StrategySettings

if TYPE_CHECKING:
    from rlsim2real.specs import EnvSpec


@dataclass(frozen=True)
class NominalSettings(StrategySettings):
    """Training on the nominal model has no settings."""


def nominal_space(env: "EnvSpec") -> ParamSpace:
    """The training parameters of ``env``, each a point at its nominal value."""
    params = []
    for p in env.params:
        if p.name not in env.nominal:
            raise SpecError(f"{env.source}: params.{p.name}: no nominal value known (the spec was not checked against its model)")
        v = float(env.nominal[p.name])
        params.append(replace(p, range=(v, v), dist="uniform", mean=None, std=None, limits=None))
    return ParamSpace(params)


class NominalStrategy(Strategy):
    """Train on the nominal simulator: the no-randomization baseline.

    Args:
        env: The env spec (its training parameters are pinned at their nominal values).
        settings: None needed.
        seed: Unused.

    Example:
        >>> import rlsim2real as rs
        >>> s = NominalStrategy(rs.load_env_spec("inverted_pendulum"))
        >>> s.summary()["distribution"]["params"][0]["range"]
        [1.0, 1.0]
    """

    name = "nominal"
    Settings = NominalSettings

    def __init__(self, env: "EnvSpec", settings: NominalSettings | None = None, seed: int = 0) -> None:
        super().__init__(BoxDistribution(nominal_space(env)))
