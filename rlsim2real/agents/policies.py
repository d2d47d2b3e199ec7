"""Recurrent actor-critic policies with fast LSTM sequence paths and a lean rollout step.

Same modules, parameter names and math as sb3-contrib's policies, so state dicts are
interchangeable; only how the LSTM is driven (and which padding rows are computed) changes.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import numpy as np
import torch as th
from sb3_contrib.common.recurrent.policies import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentMultiInputActorCriticPolicy,
)
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from torch import nn

from rlsim2real.agents.rollout import RolloutKernel, RolloutStep
from rlsim2real.agents.segments import SequencePlan, plan_sequences, run_planned

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


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
    if _starts_inside(episode_starts, lstm_states[0].shape[1]):
        return RecurrentActorCriticPolicy._process_sequence(features, lstm_states, episode_starts, lstm)
    n_seq = lstm_states[0].shape[1]
    sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
    output, states = lstm(sequence, _reset_states(lstm_states, episode_starts))
    return th.flatten(output.transpose(0, 1), start_dim=0, end_dim=1), states


def _starts_inside(episode_starts: th.Tensor, n_seq: int) -> bool:
    """Whether some sequence has an episode start after its first step."""
    starts = episode_starts.reshape((n_seq, -1))
    return starts.shape[1] > 1 and bool(starts[:, 1:].any())


def _reset_states(lstm_states: tuple[th.Tensor, th.Tensor], episode_starts: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """Zero the initial states of sequences whose first step starts an episode."""
    n_seq = lstm_states[0].shape[1]
    keep = (1.0 - episode_starts.reshape((n_seq, -1))[:, 0]).view(1, n_seq, 1)
    return keep * lstm_states[0], keep * lstm_states[1]


def _forget_graph(distribution: Distribution) -> None:
    """Let the policy's action distribution drop the tensors of a step with gradients.

    SB3's distributions keep the last torch distribution they built (gSDE also its latent).
    Built in the update, those tensors carry the step's graph: they would keep it alive with
    the policy and make the policy, and the agent, impossible to ``copy.deepcopy`` ("Only
    Tensors created explicitly by the user ... support the deepcopy protocol"), as they do
    in sb3-contrib. Nothing reads them after the step.
    """
    distribution.distribution = None
    latent = getattr(distribution, "_latent_sde", None)
    if isinstance(latent, th.Tensor) and latent.requires_grad:
        distribution._latent_sde = latent.detach()


def diag_gaussian_log_prob_entropy(mean: th.Tensor, log_std: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """Log-probability and entropy of a diagonal Gaussian with state-independent ``log_std``.

    What SB3's ``DiagGaussianDistribution`` returns after ``proba_distribution(mean, log_std)``,
    computed directly (no ``torch.distributions`` object, argument checks or broadcast std).

    Args:
        mean: Shape (B, A).
        log_std: Shape (A,).
        actions: Shape (B, A).

    Returns:
        ``log_prob`` and ``entropy``, each shape (B,), summed over action dimensions.

    Example:
        >>> lp, ent = diag_gaussian_log_prob_entropy(th.zeros(1, 2), th.zeros(2), th.zeros(1, 2))
        >>> round(lp.item(), 4), round(ent.item(), 4)
        (-1.8379, 2.8379)
    """
    log_prob = (-0.5 * (actions - mean).square() * th.exp(-2.0 * log_std) - log_std).sum(1) - _HALF_LOG_2PI * mean.shape[1]
    entropy = (log_std.sum() + (0.5 + _HALF_LOG_2PI) * mean.shape[1]).expand(mean.shape[0])
    return log_prob, entropy


def _kernel_choice(optimizer_class: type[th.optim.Optimizer], optimizer_kwargs: dict[str, Any]) -> dict[str, bool]:
    """``{"fused": True}`` or ``{"foreach": True}`` if the optimizer offers it and the caller chose neither."""
    if "fused" in optimizer_kwargs or "foreach" in optimizer_kwargs:
        return {}
    accepted = inspect.signature(optimizer_class).parameters
    return {"fused": True} if "fused" in accepted else {"foreach": True} if "foreach" in accepted else {}


class FastRecurrentPolicyMixin:
    """Fast paths for :class:`RecurrentActorCriticPolicy` subclasses.

    * ``_process_sequence``: one LSTM call per minibatch (see :func:`_run_sequence`).
    * :meth:`evaluate_sequences`: the update's path. LSTMs over length-sorted segments that
      skip most padding, read from and return real rows only (see
      :mod:`rlsim2real.agents.segments`); the heads and the distribution see real rows only,
      and a diagonal Gaussian is evaluated in closed form
      (:func:`diag_gaussian_log_prob_entropy`). :meth:`evaluate_actions_with_features` with a
      ``mask`` runs the same on a padded minibatch.
    * :meth:`rollout_step`: a :class:`~rlsim2real.agents.rollout.RolloutKernel` (actor and
      critic in one pass, ``th.lstm_cell`` per layer, layers unrolled into plain calls,
      closed-form diagonal Gaussian sampling drawing the same random numbers as
      ``torch.distributions.Normal``).
    * The optimizer gets sb3-contrib's defaults (Adam: ``eps=1e-5`` unless
      ``optimizer_kwargs`` are given) plus ``fused=True`` where the optimizer offers it (one
      kernel for the whole update, same formula and results to float rounding; about 2.5x
      faster than ``foreach`` for Adam on CPU), else ``foreach=True``, unless the caller chose;
      ``optimizer_kernels`` holds what was added (``{}`` if nothing).
    * Image batches reach the CNN in channels-last memory (the same values, laid out as the
      frames were rendered): oneDNN's convolutions run about 1.3x faster on it on CPU, in
      the update and in rollouts alike.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        optimizer_class = kwargs.get("optimizer_class", th.optim.Adam)
        optimizer_kwargs = kwargs.get("optimizer_kwargs")
        if optimizer_kwargs is None:  # as ActorCriticPolicy: Adam's eps=1e-5 only without optimizer_kwargs
            optimizer_kwargs = {"eps": 1e-5} if optimizer_class is th.optim.Adam else {}
        kernels = _kernel_choice(optimizer_class, optimizer_kwargs)
        kwargs["optimizer_kwargs"] = {**optimizer_kwargs, **kernels}
        super().__init__(*args, **kwargs)
        self.optimizer_kernels = kernels

    _process_sequence = staticmethod(_run_sequence)

    def with_optimizer_kernels(self, optimizer_state: dict[str, Any], added: bool) -> dict[str, Any]:
        """An optimizer ``state_dict`` with this policy's kernel choice set or undone.

        ``load_state_dict`` takes ``fused``/``foreach`` from the saved param groups, so a
        checkpoint would otherwise decide how this process runs Adam.

        Args:
            optimizer_state: An optimizer ``state_dict`` (not modified).
            added: True: :attr:`optimizer_kernels` in every param group; False: those keys back
                at the optimizers' default, None (what sb3-contrib's policy saves).

        Returns:
            A shallow copy with new param groups.
        """
        kernels = {key: value if added else None for key, value in self.optimizer_kernels.items()}
        return {**optimizer_state, "param_groups": [{**group, **kernels} for group in optimizer_state["param_groups"]]}

    def _step_ready(self) -> bool:
        lstms = [m for m in (self.lstm_actor, self.lstm_critic) if m is not None]
        return all(not m.bidirectional and m.proj_size == 0 and not m.batch_first for m in lstms)

    def rollout_step(
        self,
        obs: th.Tensor | dict[str, th.Tensor],
        lstm_states: RNNStates,
        episode_starts: th.Tensor,
        any_start: bool | None = None,
    ) -> RolloutStep:
        """Sample actions, values and log-probs for one vectorized step (call under no-grad).

        Computes what ``forward`` computes (same states, same distribution, same RNG draws
        for Gaussian and other SB3 distributions). The step runs in inference mode (the
        leanest dispatch for its many small ops) and returns copies that are normal tensors,
        which callers, callbacks included, may edit in place or use with autograd.

        Args:
            obs: Observations, shape (n_envs, *obs_shape) (or a dict of such).
            lstm_states: States before the step, each (n_layers, n_envs, H).
            episode_starts: Shape (n_envs,), 1.0 where a new episode begins.
            any_start: Whether some env starts an episode, if the caller knows (saves a sync).

        Returns:
            The :class:`RolloutStep`.
        """
        if not self._step_ready():
            actions, values, log_probs, states = self.forward(obs, lstm_states, episode_starts)
            return RolloutStep(actions, values, log_probs, states)
        if getattr(self, "_rollout_kernel", None) is None:
            self._rollout_kernel = RolloutKernel(self)  # dropped by the agent before every rollout
        any_start = bool(episode_starts.any()) if any_start is None else any_start
        with th.inference_mode():
            step = self._rollout_kernel(obs, lstm_states, episode_starts, any_start)
        # Cheaper than running the step under no_grad (about 15 vs 25 us on a 256-unit LSTM).
        (h_pi, c_pi), (h_vf, c_vf) = step.lstm_states
        states = RNNStates((h_pi.clone(), c_pi.clone()), (h_vf.clone(), c_vf.clone()))
        return RolloutStep(step.actions.clone(), step.values.clone(), step.log_probs.clone(), states)

    def extract_features(self, obs: Any, features_extractor: Any = None) -> Any:
        if isinstance(obs, th.Tensor) and obs.dim() == 4:  # (N, C, H, W) images
            obs = obs.contiguous(memory_format=th.channels_last)
        elif isinstance(obs, dict):
            obs = {k: v.contiguous(memory_format=th.channels_last) if v.dim() == 4 else v for k, v in obs.items()}
        if features_extractor is None:
            return super().extract_features(obs)
        return super().extract_features(obs, features_extractor)

    def branch_features(self, obs: Any) -> tuple[th.Tensor, th.Tensor]:
        """The actor's and the critic's features of ``obs`` (one tensor twice when the
        features extractor is shared; ``extract_features`` gives a pair otherwise)."""
        features = self.extract_features(obs)
        return (features, features) if self.share_features_extractor else features

    def encode(self, obs: th.Tensor | dict[str, th.Tensor]) -> th.Tensor:
        """Actor features-extractor output (the encoder DANN aligns).

        Args:
            obs: Raw observations, shape (N, *obs_shape) (or a dict of such).

        Returns:
            Features, shape (N, D).
        """
        return self.extract_features(obs, self.pi_features_extractor)

    def evaluate_actions_with_features(
        self,
        obs: th.Tensor | dict[str, th.Tensor],
        actions: th.Tensor,
        lstm_states: RNNStates,
        episode_starts: th.Tensor,
        mask: th.Tensor | None = None,
    ) -> EvaluatedActions:
        """``evaluate_actions`` that also returns the actor features (for DANN).

        Args:
            obs: Padded observations, shape (B, *obs_shape), B = n_seq * max_len.
            actions: Shape (B, *action_shape).
            lstm_states: Sequence-initial states, each (n_layers, n_seq, H).
            episode_starts: Shape (B,).
            mask: Optional boolean mask of real rows, shape (B,) (each sequence's real rows
                come first, as the buffers pad). With it the LSTMs skip most padding and every
                result covers only the real rows, in order (``x[mask]`` of the unmasked result).

        Returns:
            The :class:`EvaluatedActions`.
        """
        n_seq = lstm_states.pi[0].shape[1]
        if mask is not None and not _starts_inside(episode_starts, n_seq):
            lengths = mask.reshape((n_seq, -1)).sum(1).cpu().numpy()
            rows = mask.nonzero().squeeze(1)
            plan = plan_sequences(lengths, rows.device)
            sort = lambda pair: (pair[0].index_select(1, plan.order), pair[1].index_select(1, plan.order))  # noqa: E731
            states = RNNStates(sort(_reset_states(lstm_states.pi, episode_starts)), sort(_reset_states(lstm_states.vf, episode_starts)))
            rows_of = lambda x: x.index_select(0, rows)  # noqa: E731
            obs = {k: rows_of(v) for k, v in obs.items()} if isinstance(obs, dict) else rows_of(obs)
            return self.evaluate_sequences(obs, rows_of(actions), states, plan)
        pi_features, vf_features = self.branch_features(obs)
        latent_pi = _run_sequence(pi_features, lstm_states.pi, episode_starts, self.lstm_actor)[0]
        if self.lstm_critic is not None:
            latent_vf = _run_sequence(vf_features, lstm_states.vf, episode_starts, self.lstm_critic)[0]
        elif self.shared_lstm:
            latent_vf = latent_pi.detach()
        else:
            latent_vf = self.critic(vf_features)
        if mask is not None:
            rows = mask.nonzero().squeeze(1)
            latent_pi, latent_vf, actions, pi_features = latent_pi[rows], latent_vf[rows], actions[rows], pi_features[rows]
        return self._evaluate_heads(latent_pi, latent_vf, actions, pi_features)

    def evaluate_sequences(
        self, obs: th.Tensor | dict[str, th.Tensor], actions: th.Tensor, lstm_states: RNNStates, plan: SequencePlan
    ) -> EvaluatedActions:
        """Values, log-probs and entropy for the real rows of a minibatch of sequences.

        Args:
            obs: Real rows, shape (n_rows, *obs_shape) (or a dict of such), sequence-major.
            actions: Shape (n_rows, *action_shape).
            lstm_states: Initial states, each (n_layers, n_seq, H), reset at episode starts,
                sequences in ``plan.order`` (as :class:`~rlsim2real.agents.buffers.SequenceBatch` holds them).
            plan: The minibatch's :class:`~rlsim2real.agents.segments.SequencePlan`.

        Returns:
            The :class:`EvaluatedActions`, one row per real row.
        """
        pi_features, vf_features = self.branch_features(obs)
        latent_pi = run_planned(pi_features, lstm_states.pi, self.lstm_actor, plan)
        if self.lstm_critic is not None:
            latent_vf = run_planned(vf_features, lstm_states.vf, self.lstm_critic, plan)
        elif self.shared_lstm:
            latent_vf = latent_pi.detach()
        else:
            latent_vf = self.critic(vf_features)
        return self._evaluate_heads(latent_pi, latent_vf, actions, pi_features)

    def _evaluate_heads(self, latent_pi: th.Tensor, latent_vf: th.Tensor, actions: th.Tensor, pi_features: th.Tensor) -> EvaluatedActions:
        values = self._value_head(latent_vf)
        return EvaluatedActions(values, *self._actor_head(latent_pi, actions), pi_features)

    def _actor_head(self, latent_pi: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor | None]:
        latent_pi = self.mlp_extractor.forward_actor(latent_pi)
        if type(self.action_dist) is DiagGaussianDistribution:
            return diag_gaussian_log_prob_entropy(self.action_net(latent_pi), self.log_std, actions)
        distribution = self._get_action_dist_from_latent(latent_pi)
        log_prob, entropy = distribution.log_prob(actions), distribution.entropy()
        _forget_graph(distribution)
        return log_prob, entropy

    def _value_head(self, latent_vf: th.Tensor) -> th.Tensor:
        return self.value_net(self.mlp_extractor.forward_critic(latent_vf))

    # The update's two branches, each from its own features (see RecurrentPPO's
    # ``parallel_update``): past the features extractor, the actor and the critic share no
    # parameter when both have an LSTM, so their gradients can be computed apart.
    def actor_branch(
        self, pi_features: th.Tensor, actions: th.Tensor, states: tuple[th.Tensor, th.Tensor], plan: SequencePlan
    ) -> tuple[th.Tensor, th.Tensor | None]:
        """Log-probs and entropy (None where the distribution has no closed form) of the
        real rows, from actor features, as :meth:`evaluate_sequences` computes them."""
        return self._actor_head(run_planned(pi_features, states, self.lstm_actor, plan), actions)

    def critic_branch(self, vf_features: th.Tensor, states: tuple[th.Tensor, th.Tensor], plan: SequencePlan) -> th.Tensor:
        """Values of the real rows, shape (n_rows, 1), from critic features (needs the critic LSTM)."""
        return self._value_head(run_planned(vf_features, states, self.lstm_critic, plan))

    def branches_apart(self) -> bool:
        """Whether the actor and critic branches past the features extractor share no
        parameter (a critic LSTM of its own, heads of their own), so that
        :meth:`actor_branch` and :meth:`critic_branch` may run side by side."""
        if self.lstm_critic is None or self.shared_lstm:
            return False
        actor = [self.lstm_actor, self.mlp_extractor.policy_net, self.action_net]
        critic = [self.lstm_critic, self.mlp_extractor.value_net, self.value_net]
        ids = lambda modules: {id(p) for m in modules for p in m.parameters()}  # noqa: E731
        actor_ids = ids(actor) | ({id(self.log_std)} if isinstance(getattr(self, "log_std", None), nn.Parameter) else set())
        own = actor_ids | ids(critic) | {id(p) for p in self.features_extractor_parameters()}
        # Every trainable parameter belongs to one branch or to the features extractors.
        return not (actor_ids & ids(critic)) and all(id(p) in own for p in self.parameters())

    def features_extractor_parameters(self) -> list[nn.Parameter]:
        """Parameters of the features extractor(s) (shared or one per branch)."""
        extractors = (self.pi_features_extractor, self.vf_features_extractor)  # one module when shared
        return list({id(p): p for e in extractors for p in e.parameters()}.values())


class MlpLstmPolicy(FastRecurrentPolicyMixin, RecurrentActorCriticPolicy):
    """sb3-contrib's ``MlpLstmPolicy`` with the fast paths of :class:`FastRecurrentPolicyMixin`."""


class CnnLstmPolicy(FastRecurrentPolicyMixin, RecurrentActorCriticCnnPolicy):
    """sb3-contrib's ``CnnLstmPolicy`` with the fast paths of :class:`FastRecurrentPolicyMixin`."""


class MultiInputLstmPolicy(FastRecurrentPolicyMixin, RecurrentMultiInputActorCriticPolicy):
    """sb3-contrib's ``MultiInputLstmPolicy`` with the fast paths of :class:`FastRecurrentPolicyMixin`."""


#: sb3-contrib's policy classes and their fast counterparts (checkpoints name the former).
FAST_POLICIES: dict[type[RecurrentActorCriticPolicy], type[RecurrentActorCriticPolicy]] = {
    RecurrentActorCriticPolicy: MlpLstmPolicy,
    RecurrentActorCriticCnnPolicy: CnnLstmPolicy,
    RecurrentMultiInputActorCriticPolicy: MultiInputLstmPolicy,
}
STOCK_POLICIES = {fast: stock for stock, fast in FAST_POLICIES.items()}
