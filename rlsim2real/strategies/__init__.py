"""Strategies own the randomization distribution and update it during training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlsim2real.params import SpecError
from rlsim2real.strategies.active import ActiveSettings, ActiveStrategy
from rlsim2real.strategies.automatic import AdrDistribution, AutomaticSettings, AutomaticStrategy
from rlsim2real.strategies.base import EpisodeRecord, Strategy, StrategySettings
from rlsim2real.strategies.nominal import NominalSettings, NominalStrategy
from rlsim2real.strategies.simopt import SimOptSettings, SimOptStrategy
from rlsim2real.strategies.uniform import UniformSettings, UniformStrategy

if TYPE_CHECKING:
    from rlsim2real.specs import EnvSpec

STRATEGIES: dict[str, type[Strategy]] = {"uniform": UniformStrategy, "automatic": AutomaticStrategy, "active": ActiveStrategy,
                                      "simopt": SimOptStrategy, "nominal": NominalStrategy}


def make_strategy(name: str, env: "EnvSpec", settings: Any = None, seed: int = 0) -> Strategy:
    """The strategy called ``name`` over ``env``'s parameters.

    Args:
        name: A key of :data:`STRATEGIES`.
        env: The env spec.
        settings: The strategy's settings object, or a ``[strategy]`` table as a dict.
        seed: Seeds the strategy's own generators (if it has any).
    """
    if name not in STRATEGIES:
        raise SpecError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    if settings is None or isinstance(settings, dict):
        # Checked against ``env`` by the strategy itself when it is built.
        settings = cls.Settings.from_table(settings or {}, "strategy", name)
    return cls(env, settings, seed)


__all__ = [
    "ActiveSettings", "ActiveStrategy", "AdrDistribution", "AutomaticSettings", "AutomaticStrategy", "EpisodeRecord", "NominalSettings", "NominalStrategy",
    "STRATEGIES", "Strategy",
    "SimOptSettings", "SimOptStrategy", "StrategySettings", "UniformSettings", "UniformStrategy", "make_strategy",
]
