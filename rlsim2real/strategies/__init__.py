"""Strategies own the randomization distribution and update it during training."""

from __future__ import annotations

from rlsim2real.params import SpecError
from rlsim2real.specs import EnvSpec
from rlsim2real.strategies.base import Strategy
from rlsim2real.strategies.uniform import UniformStrategy

STRATEGIES = {"uniform": UniformStrategy}


def make_strategy(name: str, spec: EnvSpec) -> Strategy:
    """The strategy called ``name`` over ``spec``'s training box."""
    if name not in STRATEGIES:
        raise SpecError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](spec.params)


__all__ = ["Strategy", "UniformStrategy", "make_strategy", "STRATEGIES"]
