"""What every strategy does: own a distribution in the learner process and push it to workers."""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.vec_env import VecEnv

from rlsim2real.distributions import Distribution, distribution_from_state


class Strategy:
    """Owns the randomization distribution; updates it from feedback; broadcasts it.

    A strategy never touches an ``MjModel``: it sends a small picklable
    :class:`~rlsim2real.distributions.Distribution` to every env worker through
    ``VecEnv.env_method("set_distribution", dist)``, and wrappers apply it at their next
    reset.

    Args:
        distribution: The initial distribution.
    """

    name = "base"

    def __init__(self, distribution: Distribution) -> None:
        self.distribution = distribution

    def broadcast(self, venv: VecEnv) -> None:
        """Send the current distribution to every worker of ``venv``."""
        venv.env_method("set_distribution", self.distribution)

    def update(self, feedback: dict[str, Any]) -> bool:
        """Take training feedback (episode returns, sampled params, ...).

        Returns:
            Whether the distribution changed (and so should be broadcast).
        """
        return False

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: written into every checkpoint."""
        return {"strategy": self.name, "distribution": self.distribution.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"checkpoint holds a {state.get('strategy')!r} strategy, not {self.name!r}")
        self.distribution = distribution_from_state(state["distribution"])
