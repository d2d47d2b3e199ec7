"""One policy step for data collection with as little per-step overhead as possible.

During a rollout the policy runs once per vectorized env step on a handful of rows, so the
cost is mostly Python and dispatch: module ``__call__`` machinery, attribute look-ups,
re-deriving the same standard deviation every step. :class:`RolloutKernel` holds direct
references to the policy's parameters (never copies, so optimizer steps, ``load_state_dict``
and ``.to(device)`` are seen) and replays the same operations as ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

if TYPE_CHECKING:
    from rlsim2real.agents.policies import FastRecurrentPolicyMixin

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
_ACTIVATIONS: dict[type[nn.Module], Callable[[th.Tensor], th.Tensor]] = {
    nn.Tanh: th.tanh,
    nn.ReLU: th.relu,
    nn.Sigmoid: th.sigmoid,
    nn.Identity: lambda x: x,
}


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


def _linear(layer: nn.Linear) -> Callable[[th.Tensor], th.Tensor]:
    weight, bias = layer.weight, layer.bias
    return lambda x: F.linear(x, weight, bias)


def _layers(module: nn.Module) -> list[Callable[[th.Tensor], th.Tensor]]:
    """``module`` as a list of plain calls (Linear and common activations unrolled)."""
    if isinstance(module, nn.Linear):
        return [_linear(module)]
    if isinstance(module, nn.Sequential) and all(isinstance(m, nn.Linear) or type(m) in _ACTIVATIONS for m in module):
        return [_linear(m) if isinstance(m, nn.Linear) else _ACTIVATIONS[type(m)] for m in module]
    return [module]


def _run(layers: list[Callable[[th.Tensor], th.Tensor]], x: th.Tensor) -> th.Tensor:
    for layer in layers:
        x = layer(x)
    return x


def _cell_weights(lstm: nn.LSTM) -> list[list[th.Tensor | None]]:
    """Per layer: ``[w_ih, w_hh, b_ih, b_hh]`` (biases None without bias)."""
    out = []
    for layer in range(lstm.num_layers):
        weights = [getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")]
        weights += [getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")] if lstm.bias else [None, None]
        out.append(weights)
    return out


def _lstm_step(
    x: th.Tensor, states: tuple[th.Tensor, th.Tensor], keep: th.Tensor | None, weights: list[list[th.Tensor | None]]
) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
    """One step of a unidirectional LSTM through ``th.lstm_cell`` (far less per-call overhead).

    Args:
        x: Input, shape (n_envs, F).
        states: Each (n_layers, n_envs, H).
        keep: ``1 - episode_start``, shape (1, n_envs, 1), or None when no env starts an episode.
        weights: From :func:`_cell_weights`.

    Returns:
        Output of shape (n_envs, H) and the new states.
    """
    h0, c0 = states if keep is None else (keep * states[0], keep * states[1])
    if len(weights) == 1:
        h, c = th.lstm_cell(x, (h0[0], c0[0]), *weights[0])
        return h, (h.unsqueeze(0), c.unsqueeze(0))
    hs, cs = [], []
    for layer, layer_weights in enumerate(weights):
        h, c = th.lstm_cell(x, (h0[layer], c0[layer]), *layer_weights)
        hs.append(h)
        cs.append(c)
        x = h
    return x, (th.stack(hs), th.stack(cs))


class RolloutKernel:
    """What ``policy.forward`` computes for one step, with the layers unrolled into plain calls.

    Same states, values, distribution and random draws as ``forward`` (up to float rounding).

    Args:
        policy: A fast recurrent policy whose LSTMs are unidirectional, without projections
            and sequence-first.
    """

    def __init__(self, policy: FastRecurrentPolicyMixin) -> None:
        self.policy = policy
        space = policy.observation_space
        # Float Box + Flatten: preprocessing is .float() and the extractor a reshape.
        self.flat_obs = (
            isinstance(space, spaces.Box)
            and np.issubdtype(space.dtype, np.floating)
            and policy.share_features_extractor
            and type(policy.features_extractor) is FlattenExtractor
        )
        self.actor = _cell_weights(policy.lstm_actor)
        self.critic = _cell_weights(policy.lstm_critic) if policy.lstm_critic is not None else None
        self.critic_mlp = None if policy.lstm_critic is not None or policy.shared_lstm else _layers(policy.critic)
        self.pi_head = _layers(policy.mlp_extractor.policy_net)
        self.vf_head = _layers(policy.mlp_extractor.value_net) + _layers(policy.value_net)
        self.gaussian = type(policy.action_dist) is DiagGaussianDistribution
        self.action_head = _layers(policy.action_net)
        self.action_shape = (-1, *policy.action_space.shape)

    def __call__(
        self, obs: th.Tensor | dict[str, th.Tensor], lstm_states: RNNStates, episode_starts: th.Tensor, any_start: bool
    ) -> RolloutStep:
        """One step (call under no-grad or inference mode).

        Args:
            obs: Observations, shape (n_envs, *obs_shape) (or a dict of such).
            lstm_states: States before the step, each (n_layers, n_envs, H).
            episode_starts: Shape (n_envs,), 1.0 where a new episode begins.
            any_start: Whether ``episode_starts`` has a nonzero entry.

        Returns:
            The :class:`RolloutStep`.
        """
        policy = self.policy
        if self.flat_obs:
            pi_features = vf_features = obs.float().flatten(1)
        else:
            pi_features, vf_features = policy.branch_features(obs)
        # Multiplying by 1.0 is exact, so skipping the mask when nothing resets changes nothing.
        keep = (1.0 - episode_starts).view(1, -1, 1) if any_start else None
        latent_pi, states_pi = _lstm_step(pi_features, lstm_states.pi, keep, self.actor)
        if self.critic is not None:
            latent_vf, states_vf = _lstm_step(vf_features, lstm_states.vf, keep, self.critic)
        elif self.critic_mlp is None:  # shared LSTM
            latent_vf, states_vf = latent_pi, states_pi
        else:
            latent_vf, states_vf = _run(self.critic_mlp, vf_features), states_pi
        values = _run(self.vf_head, latent_vf)
        latent_pi = _run(self.pi_head, latent_pi)
        if self.gaussian:
            mean = _run(self.action_head, latent_pi)
            # (A,)-shaped, broadcast: the same values as SB3's ones_like(mean) * exp(log_std).
            std = policy.log_std.exp()
            # Normal.rsample draws empty(shape).normal_(); do the same for identical samples.
            actions = mean + th.empty_like(mean).normal_() * std
            log_probs = (-((actions - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI).sum(dim=1)
        else:
            distribution = policy._get_action_dist_from_latent(latent_pi)
            actions = distribution.get_actions()
            log_probs = distribution.log_prob(actions)
        return RolloutStep(actions.reshape(self.action_shape), values, log_probs, RNNStates(states_pi, states_vf))
