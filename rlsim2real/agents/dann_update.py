"""The DANN part of a PPO update: discriminator, its optimizer, losses and ``dann/`` logs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from gymnasium import spaces

from rlsim2real.agents.dann_config import DannConfig, TargetObservations
from rlsim2real.dann import DomainDiscriminator, coral_loss, dann_loss, discriminator_accuracy, mmd_loss

if TYPE_CHECKING:
    from rlsim2real.agents.ppo import RecurrentPPO

_HELDOUT_SAMPLES = 256


class DannUpdater:
    """Adds a domain-adversarial term to every PPO minibatch loss.

    The discriminator and its optimizer stay outside the policy and its optimizer, so the
    policy's state dict is sb3-contrib's and PPO's gradient clipping and learning rate stay
    exactly as without DANN; :meth:`state_dict` is what a checkpoint keeps of them.

    Args:
        agent: The owning agent (its policy must already be built).
        config: DANN settings.

    Raises:
        ValueError: If the observation space is not a Box.
    """

    def __init__(self, agent: RecurrentPPO, config: DannConfig) -> None:
        if not isinstance(agent.observation_space, spaces.Box):
            raise ValueError(f"DANN needs a Box observation space, got {agent.observation_space}")
        self.agent = agent
        self.config = config
        self.schedule = config.make_schedule()
        self.discriminator = DomainDiscriminator(agent.policy.features_dim, config.discriminator_hidden).to(agent.device)
        lr = config.lr if config.lr is not None else agent.lr_schedule(1.0)
        fused = th.device(agent.device).type in ("cpu", "cuda")  # one kernel per step where supported
        self.optimizer = th.optim.Adam(self.discriminator.parameters(), lr=lr, fused=fused)
        self._stats: dict[str, list[th.Tensor]] = {}

    def state_dict(self) -> dict[str, Any]:
        """The discriminator's and its optimizer's state dicts."""
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])

    @property
    def target(self) -> TargetObservations:
        target = self.agent._target
        if target is None:
            raise ValueError("DANN is enabled but no target observations are set; call agent.set_target_observations(obs)")
        return target

    def begin_update(self) -> None:
        """Refresh targets from the provider, set lambda and the lr, log held-out metrics."""
        agent = self.agent
        if agent._target_provider is not None:
            training = agent.policy.training
            fresh = agent._target_provider(agent.num_timesteps)
            # A provider that acts with the policy (predict) leaves it in eval mode.
            agent.policy.set_training_mode(training)
            if fresh is not None:
                agent.set_target_observations(fresh)
        self.lambda_ = self.schedule(agent.dann_progress())
        self.discriminator.grl.lambda_ = self.lambda_
        if self.config.lr is None:
            for group in self.optimizer.param_groups:
                group["lr"] = agent.lr_schedule(agent._current_progress_remaining)
        self._stats = {"domain_loss": [], "accuracy": [], "mmd_loss": [], "coral_loss": []}
        self._log_heldout()

    def _log_heldout(self) -> None:
        """Accuracy on samples the discriminator has not trained on yet.

        Source: observations of the rollout just collected (the update has not seen them).
        Target: the held-out split of the target observations.
        """
        buffer = self.agent.rollout_buffer
        flat = buffer.observations.reshape(-1, *buffer.obs_shape)
        rng = self.target.rng
        n = min(_HELDOUT_SAMPLES, len(flat))
        source_obs = th.as_tensor(flat[rng.choice(len(flat), size=n, replace=False)], device=self.agent.device)
        with th.no_grad():
            source = self.agent.policy.encode(source_obs)
            target = self.agent.policy.encode(self.target.sample(n, heldout=True))
            balanced, acc_s, acc_t = discriminator_accuracy(self.discriminator(source), self.discriminator(target))
            record = self.agent.logger.record
            record("dann/heldout_accuracy", balanced)
            record("dann/heldout_source_accuracy", acc_s)
            record("dann/heldout_target_accuracy", acc_t)
            record("dann/heldout_mmd", mmd_loss(source, target).item())
            if n >= 2:
                record("dann/heldout_coral", coral_loss(source, target).item())

    def loss(self, source: th.Tensor) -> th.Tensor:
        """Weighted domain loss (plus alignment losses) for one minibatch.

        Args:
            source: Actor encoder output for the minibatch's real (non-padding) rows, shape (N, D).

        Returns:
            Scalar to add to the PPO loss.
        """
        target = self.agent.policy.encode(self.target.sample(len(source)))
        source_logits, target_logits = self.discriminator(source), self.discriminator(target)
        domain = dann_loss(source_logits, target_logits)
        total = self.config.weight * domain
        self._stats["domain_loss"].append(domain.detach())
        self._stats["accuracy"].append(th.tensor(discriminator_accuracy(source_logits, target_logits)[0]))
        if self.config.mmd_weight > 0:
            mmd = mmd_loss(source, target)
            total = total + self.config.mmd_weight * mmd
            self._stats["mmd_loss"].append(mmd.detach())
        if self.config.coral_weight > 0 and len(source) >= 2:
            coral = coral_loss(source, target)
            total = total + self.config.coral_weight * coral
            self._stats["coral_loss"].append(coral.detach())
        return total

    def step(self) -> None:
        """Clip the discriminator's gradient like PPO's and take its optimizer step."""
        th.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.agent.max_grad_norm)
        self.optimizer.step()

    def end_update(self) -> None:
        """Record the update's ``dann/`` metrics."""
        record = self.agent.logger.record
        record("dann/lambda", self.lambda_)
        record("dann/progress", self.agent.dann_progress())
        record("dann/weight", self.config.weight)
        for key, values in self._stats.items():
            if values:
                record(f"dann/{key}", th.stack([v.float().cpu() for v in values]).mean().item())
        record("dann/target_observations", len(self.target))
        record("dann/lr", float(np.mean([g["lr"] for g in self.optimizer.param_groups])))
