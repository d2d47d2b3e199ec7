"""rlsim2real: sim-to-real reinforcement learning for MuJoCo.

Randomize a MuJoCo env's dynamics and sensors through Gymnasium wrappers, train recurrent
PPO policies on it, and measure transfer on held-out "real" configurations.
"""

from rlsim2real.distributions import BoxDistribution, Distribution, Fixed
from rlsim2real.factory import make_base_env, make_env, make_real_env
from rlsim2real.params import Param, ParamSpace, SpecError
from rlsim2real.specs import AgentSpec, EnvSpec, ExperimentSpec, load_agent_spec, load_env_spec, load_experiment_spec
from rlsim2real.wrappers import ActionDelay, DynamicsRandomization, ObservationNoise, PhysicsGuard

__version__ = "0.1.0"

_LAZY = {
    "train": "rlsim2real.training",
    "Run": "rlsim2real.training",
    "evaluate_transfer": "rlsim2real.evaluation",
    "TransferReport": "rlsim2real.evaluation",
    "collect_trajectories": "rlsim2real.episodes",
    "load_trajectories": "rlsim2real.trajectories",
    "Trajectories": "rlsim2real.trajectories",
    "EpisodeRunner": "rlsim2real.episodes",
    "EpisodeJob": "rlsim2real.episodes",
}


def __getattr__(name: str):
    # Training and evaluation pull in torch and SB3; keep `import rlsim2real` light for
    # env workers and spec tools.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlsim2real' has no attribute {name!r}")


__all__ = [
    "ActionDelay", "AgentSpec", "BoxDistribution", "Distribution", "DynamicsRandomization", "EnvSpec",
    "ExperimentSpec", "Fixed", "ObservationNoise", "Param", "ParamSpace", "PhysicsGuard", "SpecError",
    "load_agent_spec", "load_env_spec", "load_experiment_spec", "make_base_env", "make_env", "make_real_env",
    *_LAZY,
]
