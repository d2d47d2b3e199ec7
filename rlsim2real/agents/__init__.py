"""Recurrent PPO (fast sequence path) with an optional domain-adversarial encoder."""

from rlsim2real.agents.buffers import FastRecurrentDictRolloutBuffer, FastRecurrentRolloutBuffer
from rlsim2real.agents.dann_config import DannConfig
from rlsim2real.agents.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy
from rlsim2real.agents.ppo import RecurrentPPO

__all__ = [
    "CnnLstmPolicy",
    "DannConfig",
    "FastRecurrentDictRolloutBuffer",
    "FastRecurrentRolloutBuffer",
    "MlpLstmPolicy",
    "MultiInputLstmPolicy",
    "RecurrentPPO",
]
