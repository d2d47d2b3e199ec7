"""Recurrent actor-critic policies with a single-call LSTM sequence path and a lean rollout step.

Same modules, parameter names and math as sb3-contrib's policies, so state dicts are
interchangeable; only how the LSTM is driven changes.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import torch as th
from sb3_contrib.common.recurrent.policies import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentMultiInputActorCriticPolicy,
)
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import DiagGaussianDistribution
from torch import nn

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class RolloutStep(NamedTuple):
    """One policy step during data collection.

    Attributes:
        actions: Shape (n_envs, *action_shape).
        values: Shape (n_envs, 1).
        log_probs: Shape (n_envs,).
        lstm_states: States after the step, each (n_layers, n_envs, H).
    """

    actions: th.Tensor
    values: th.Tensor
    log_probs: th.Tensor
    lstm_states: RNNStates


class EvaluatedActions(NamedTuple):
    """Result of :meth:`FastRecurrentPolicyMixin.evaluate_actions_with_features`.

    Attributes:
        values: Shape (B, 1).
        log_prob: Shape (B,).
        entropy: Shape (B,), or None when the distribution has no closed form.
        features: Actor features-extractor output, shape (B, D).
    """

    values: th.Tensor
    log_prob: th.Tensor
    entropy: th.Tensor | None
    features: th.Tensor


def _run_sequence(
    features: th.Tensor, lstm_states: tuple[th.Tensor, th.Tensor], episode_starts: th.Tensor, lstm: nn.LSTM
) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
    """Run the LSTM once over a padded batch of sequences.

    The recurrent buffers start a new sequence at every episode start, so the only reset a
    sequence can need is at its first step: masking the initial state there and running
    the LSTM over the whole (max_len, n_seq, F) block computes exactly what sb3-contrib's
    per-step loop computes. Inputs with a start later in a sequence (not produced by our
    buffers) fall back to that loop.

    Args:
        features: Shape (n_seq * max_len, F), sequence-major.
        lstm_states: Hidden and cell states, each (n_layers, n_seq, H).
        episode_starts: Shape (n_seq * max_len,).
        lstm: The LSTM.

    Returns:
        Outputs of shape (n_seq * max_len, H) and the final states.
    """
    n_seq = lstm_states[0].shape[1]
    starts = episode_starts.reshape((n_seq, -1))
    if starts.shape[1] > 1 and bool(starts[:, 1:].any()):
        return RecurrentActorCriticPolicy._process_sequence(features, lstm_states, episode_starts, lstm)
    keep = (1.0 - starts[:, 0]).view(1, n_seq, 1)
    sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
    output, states = lstm(sequence, (keep * lstm_states[0], keep * lstm_states[1]))
    return th.flatten(output.transpose(0, 1), start_dim=0, end_dim=1), states


def _lstm_step(
    x: th.Tensor, states: tuple[th.Tensor, th.Tensor], keep: th.Tensor | None, lstm: nn.LSTM
) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
    """One inference step of ``lstm`` through ``th.lstm_cell`` (far less per-call overhead).

    Args:
        x: Input, shape (n_envs, F).
        states: Each (n_layers, n_envs, H).
        keep: ``1 - episode_start``, shape (1, n_envs, 1), or None when no env starts an episode.
        lstm: The LSTM (unidirectional, no projection; dropout is inactive at inference).

    Returns:
        Output of shape (n_envs, H) and the new states.
    """
    h0, c0 = states if keep is None else (keep * states[0], keep * states[1])
    hs, cs = [], []
    for layer in range(lstm.num_layers):
        weights = [getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")]
        weights += [getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")] if lstm.bias else [None, None]
        h, c = th.lstm_cell(x, (h0[layer], c0[layer]), *weights)
        hs.append(h)
        cs.append(c)
        x = h
    return x, (th.stack(hs), th.stack(cs))


class FastRecurrentPolicyMixin:
    """Fast paths for :class:`RecurrentActorCriticPolicy` subclasses.

    * ``_process_sequence``: one LSTM call per minibatch (see :func:`_run_sequence`).
    * :meth:`rollout_step`: actor and critic in one pass, ``th.lstm_cell`` per layer,
      closed-form diagonal Gaussian sampling drawing the same random numbers as
      ``torch.distributions.Normal``.
    * Adam-type optimizers default to ``foreach=True`` (same update, fewer kernel calls).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        optimizer_class = kwargs.get("optimizer_class", th.optim.Adam)
        optimizer_kwargs = dict(kwargs.get("optimizer_kwargs") or {})
        if "foreach" in inspect.signature(optimizer_class).parameters:
            optimizer_kwargs.setdefault("foreach", True)
        kwargs["optimizer_kwargs"] = optimizer_kwargs
        super().__init__(*args, **kwargs)

    _process_sequence = staticmethod(_run_sequence)

    def _step_ready(self) -> bool:
        lstms = [m for m in (self.lstm_actor, self.lstm_critic) if m is not None]
        return all(not m.bidirectional and m.proj_size == 0 and not m.batch_first for m in lstms)

    def rollout_step(self, obs: th.Tensor | dict[str, th.Tensor], lstm_states: RNNStates, episode_starts: th.Tensor) -> RolloutStep:
        """Sample actions, values and log-probs for one vectorized step (call under no-grad).

        Computes what ``forward`` computes (same states, same distribution, same RNG draws
        for Gaussian and other SB3 distributions).

        Args:
            obs: Observations, shape (n_envs, *obs_shape) (or a dict of such).
            lstm_states: States before the step, each (n_layers, n_envs, H).
            episode_starts: Shape (n_envs,), 1.0 where a new episode begins.

        Returns:
            The :class:`RolloutStep`.
        """
        if not self._step_ready():
            actions, values, log_probs, states = self.forward(obs, lstm_states, episode_starts)
            return RolloutStep(actions, values, log_probs, states)
        features = self.extract_features(obs)
        pi_features, vf_features = (features, features) if self.share_features_extractor else features
        # Multiplying by 1.0 is exact, so skipping the mask when nothing resets changes nothing.
        keep = (1.0 - episode_starts).view(1, -1, 1) if bool(episode_starts.any()) else None
        latent_pi, states_pi = _lstm_step(pi_features, lstm_states.pi, keep, self.lstm_actor)
        if self.lstm_critic is not None:
            latent_vf, states_vf = _lstm_step(vf_features, lstm_states.vf, keep, self.lstm_critic)
        elif self.shared_lstm:
            latent_vf, states_vf = latent_pi, states_pi
        else:
            latent_vf, states_vf = self.critic(vf_features), states_pi
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        latent_pi = self.mlp_extractor.forward_actor(latent_pi)
        if type(self.action_dist) is DiagGaussianDistribution:
            mean = self.action_net(latent_pi)
            std = th.ones_like(mean) * self.log_std.exp()
            # Normal.rsample draws empty(shape).normal_(); do the same for identical samples.
            actions = mean + th.empty_like(mean).normal_() * std
            log_probs = (-((actions - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI).sum(dim=1)
        else:
            distribution = self._get_action_dist_from_latent(latent_pi)
            actions = distribution.get_actions()
            log_probs = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return RolloutStep(actions, values, log_probs, RNNStates(states_pi, states_vf))

    def encode(self, obs: th.Tensor | dict[str, th.Tensor]) -> th.Tensor:
        """Actor features-extractor output (the encoder DANN aligns).

        Args:
            obs: Raw observations, shape (N, *obs_shape) (or a dict of such).

        Returns:
            Features, shape (N, D).
        """
        return self.extract_features(obs, self.pi_features_extractor)

    def evaluate_actions_with_features(
        self, obs: th.Tensor | dict[str, th.Tensor], actions: th.Tensor, lstm_states: RNNStates, episode_starts: th.Tensor
    ) -> EvaluatedActions:
        """``evaluate_actions`` that also returns the actor features (for DANN).

        Args:
            obs: Padded observations, shape (B, *obs_shape), B = n_seq * max_len.
            actions: Shape (B, *action_shape).
            lstm_states: Sequence-initial states, each (n_layers, n_seq, H).
            episode_starts: Shape (B,).

        Returns:
            The :class:`EvaluatedActions`.
        """
        features = self.extract_features(obs)
        pi_features, vf_features = (features, features) if self.share_features_extractor else features
        latent_pi, _ = _run_sequence(pi_features, lstm_states.pi, episode_starts, self.lstm_actor)
        if self.lstm_critic is not None:
            latent_vf, _ = _run_sequence(vf_features, lstm_states.vf, episode_starts, self.lstm_critic)
        elif self.shared_lstm:
            latent_vf = latent_pi.detach()
        else:
            latent_vf = self.critic(vf_features)
        distribution = self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(latent_pi))
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        return EvaluatedActions(values, distribution.log_prob(actions), distribution.entropy(), pi_features)


class MlpLstmPolicy(FastRecurrentPolicyMixin, RecurrentActorCriticPolicy):
    """sb3-contrib's ``MlpLstmPolicy`` with the fast paths of :class:`FastRecurrentPolicyMixin`."""


class CnnLstmPolicy(FastRecurrentPolicyMixin, RecurrentActorCriticCnnPolicy):
    """sb3-contrib's ``CnnLstmPolicy`` with the fast paths of :class:`FastRecurrentPolicyMixin`."""


class MultiInputLstmPolicy(FastRecurrentPolicyMixin, RecurrentMultiInputActorCriticPolicy):
    """sb3-contrib's ``MultiInputLstmPolicy`` with the fast paths of :class:`FastRecurrentPolicyMixin`."""
