"""Domain-adversarial building blocks: gradient reversal, discriminator, alignment losses.

Everything here is plain PyTorch and can be used and tested without PPO.
"""

from rlsim2real.dann.discriminator import DomainDiscriminator
from rlsim2real.dann.encoder import MlpEncoder
from rlsim2real.dann.grl import GradientReversal, grad_reverse
from rlsim2real.dann.losses import coral_loss, dann_loss, discriminator_accuracy, mmd_loss
from rlsim2real.dann.schedules import (
    SCHEDULES,
    ConstantSchedule,
    GaninSchedule,
    LinearWarmupSchedule,
    make_schedule,
)

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "DomainDiscriminator",
    "GaninSchedule",
    "GradientReversal",
    "LinearWarmupSchedule",
    "MlpEncoder",
    "coral_loss",
    "dann_loss",
    "discriminator_accuracy",
    "grad_reverse",
    "make_schedule",
    "mmd_loss",
]
