"""Schedules for the DANN adaptation factor lambda as a function of training progress."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _check_progress(p: float) -> float:
    return min(max(float(p), 0.0), 1.0)


@dataclass(frozen=True)
class ConstantSchedule:
    """``lambda(p) = value``.

    Args:
        value: The constant.
    """

    value: float = 1.0

    def __call__(self, progress: float) -> float:
        return float(self.value)


@dataclass(frozen=True)
class GaninSchedule:
    """Ganin et al. (2016): ``lambda(p) = max_value * (2 / (1 + exp(-gamma * p)) - 1)``.

    Rises from 0 at ``p = 0`` toward ``max_value``; ``gamma = 10`` as in the paper.

    Args:
        gamma: Steepness.
        max_value: Asymptote.

    Example:
        >>> round(GaninSchedule(gamma=10)(0.5), 4)
        0.9866
    """

    gamma: float = 10.0
    max_value: float = 1.0

    def __call__(self, progress: float) -> float:
        p = _check_progress(progress)
        return float(self.max_value * (2.0 / (1.0 + math.exp(-self.gamma * p)) - 1.0))


@dataclass(frozen=True)
class LinearWarmupSchedule:
    """``lambda(p) = max_value * min(1, p / warmup)``: a linear ramp, then flat.

    Args:
        warmup: Fraction of training over which lambda ramps up, in (0, 1].
        max_value: Final value.
    """

    warmup: float = 0.1
    max_value: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.warmup <= 1.0:
            raise ValueError(f"LinearWarmupSchedule: warmup must be in (0, 1], got {self.warmup}")

    def __call__(self, progress: float) -> float:
        p = _check_progress(progress)
        return float(self.max_value * min(1.0, p / self.warmup))


SCHEDULES = {"constant": ConstantSchedule, "ganin": GaninSchedule, "linear": LinearWarmupSchedule}


def make_schedule(name: str, **kwargs: Any) -> ConstantSchedule | GaninSchedule | LinearWarmupSchedule:
    """Build a picklable lambda schedule, a callable of progress ``p`` in [0, 1].

    Args:
        name: ``"constant"``, ``"ganin"`` or ``"linear"`` (linear warm-up).
        **kwargs: Fields of the schedule class (e.g. ``gamma=10`` for ``"ganin"``).

    Returns:
        The schedule.

    Raises:
        ValueError: On an unknown name or argument.

    Example:
        >>> make_schedule("linear", warmup=0.5)(0.25)
        0.5
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown lambda schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for schedule {name!r}: {kwargs} ({err})") from None
