"""Gymnasium wrappers that randomize a MuJoCo env; each reads one distribution."""

from rlsim2real.wrappers.base import RandomizationWrapper
from rlsim2real.wrappers.dynamics import DynamicsRandomization
from rlsim2real.wrappers.pixels import PixelObservation
from rlsim2real.wrappers.sensors import ActionDelay, ObservationNoise
from rlsim2real.wrappers.stability import PhysicsGuard

__all__ = ["RandomizationWrapper", "DynamicsRandomization", "ObservationNoise", "ActionDelay", "PhysicsGuard", "PixelObservation"]
