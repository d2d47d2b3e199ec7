"""Recurrent rollout buffers whose minibatches are padded with a few vectorized index ops.

The sampling is exactly sb3-contrib's (same random split point, same contiguous
minibatches, a new sequence at every episode start and env change), so for the same
``np.random`` state these buffers yield the same samples as
``sb3_contrib.common.recurrent.buffers.RecurrentRolloutBuffer``. What changes is the cost:
the rollout is moved to ``device`` once per rollout, and each minibatch is padded with
one gather and one scatter per field instead of one tensor per sequence per field.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import (
    RecurrentDictRolloutBufferSamples,
    RecurrentRolloutBufferSamples,
    RNNStates,
)

_SCALARS = ("values", "log_probs", "advantages", "returns", "episode_starts")


class SequenceLayout(NamedTuple):
    """Where each transition of a minibatch lands in the padded (n_seq, max_len) grid.

    Attributes:
        batch_inds: Flat rollout indices of the minibatch, shape (B,).
        padded_pos: Flat padded position ``seq * max_len + t`` of each, shape (B,).
        seq_starts: Flat rollout index of each sequence's first transition, shape (n_seq,).
        n_seq: Number of sequences.
        max_len: Longest sequence.
    """

    batch_inds: th.Tensor
    padded_pos: th.Tensor
    seq_starts: th.Tensor
    n_seq: int
    max_len: int


def sequence_layout(
    batch_inds: np.ndarray, episode_starts: np.ndarray, env_change: np.ndarray, device: th.device
) -> SequenceLayout:
    """Split a contiguous minibatch into sequences as sb3-contrib does, without padding yet.

    Args:
        batch_inds: Flat rollout indices, shape (B,).
        episode_starts: Episode-start flags of the whole flattened rollout, shape (N,).
        env_change: Env-change flags of the whole flattened rollout, shape (N,).
        device: Device of the returned index tensors.

    Returns:
        The :class:`SequenceLayout`.
    """
    starts = np.logical_or(episode_starts[batch_inds], env_change[batch_inds]).ravel()
    starts[0] = True
    seq_first = np.flatnonzero(starts)
    seq_id = np.cumsum(starts) - 1
    pos_in_seq = np.arange(len(batch_inds)) - seq_first[seq_id]
    max_len = int(np.diff(np.append(seq_first, len(batch_inds))).max())
    to_t = lambda a: th.as_tensor(a, dtype=th.long, device=device)  # noqa: E731
    return SequenceLayout(
        to_t(batch_inds), to_t(seq_id * max_len + pos_in_seq), to_t(batch_inds[seq_first]), len(seq_first), max_len
    )


def pad_rows(data: th.Tensor, layout: SequenceLayout) -> th.Tensor:
    """Gather ``data[batch_inds]`` into a zero-padded flat sequence batch.

    Args:
        data: Flattened rollout field, shape (N, *F).
        layout: Where each row goes.

    Returns:
        Shape (n_seq * max_len, *F), sequence-major like sb3-contrib's ``pad``.
    """
    out = data.new_zeros((layout.n_seq * layout.max_len, *data.shape[1:]))
    out[layout.padded_pos] = data[layout.batch_inds]
    return out


class _FastSamplingMixin:
    """``get``/``_get_samples`` shared by the array and dict buffers."""

    def _flatten_to_device(self) -> None:
        for name in ("hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf"):
            # (n_steps, n_layers, n_envs, H) -> (n_envs * n_steps, n_layers, H)
            setattr(self, "_t_" + name, self.to_torch(self.swap_and_flatten(getattr(self, name).swapaxes(1, 2))))
        self._t_scalars = self.to_torch(np.stack([self.swap_and_flatten(getattr(self, n)).ravel() for n in _SCALARS], axis=1))
        self._t_actions = self.to_torch(self.swap_and_flatten(self.actions))
        self._episode_starts_flat = self.swap_and_flatten(self.episode_starts)
        env_change = np.zeros((self.buffer_size, self.n_envs))
        env_change[0, :] = 1.0
        self._env_change_flat = self.swap_and_flatten(env_change)

    def get(self, batch_size: int | None = None) -> Generator[NamedTuple, None, None]:
        """Yield padded minibatches of whole-or-split sequences, as sb3-contrib does.

        Args:
            batch_size: Transitions per minibatch (all of them if None).

        Yields:
            ``RecurrentRolloutBufferSamples`` (or the dict variant); tensors are
            flat padded batches of shape (n_seq * max_len, ...), LSTM states (n_layers, n_seq, H).
        """
        if not self.full:
            raise RuntimeError("Rollout buffer must be full before sampling from it")
        if not self.generator_ready:
            self._flatten_to_device()
            self.generator_ready = True
        total = self.buffer_size * self.n_envs
        batch_size = total if batch_size is None else batch_size
        # Same draw as sb3-contrib so seeded runs sample the same minibatches.
        split_index = np.random.randint(total)
        indices = np.concatenate((np.arange(split_index, total), np.arange(split_index)))
        for start in range(0, total, batch_size):
            yield self._get_samples(indices[start : start + batch_size])

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> NamedTuple:  # type: ignore[override]
        layout = sequence_layout(batch_inds, self._episode_starts_flat, self._env_change_flat, self.device)
        # (n_seq, n_layers, H) -> (n_layers, n_seq, H)
        state = lambda name: getattr(self, "_t_" + name)[layout.seq_starts].transpose(0, 1).contiguous()  # noqa: E731
        lstm_states = RNNStates(
            (state("hidden_states_pi"), state("cell_states_pi")), (state("hidden_states_vf"), state("cell_states_vf"))
        )
        scalars = pad_rows(self._t_scalars, layout)
        mask = th.zeros(len(scalars), device=scalars.device)
        mask[layout.padded_pos] = 1.0
        return self._samples_cls(
            observations=self._pad_observations(layout),
            actions=pad_rows(self._t_actions, layout),
            old_values=scalars[:, 0],
            old_log_prob=scalars[:, 1],
            advantages=scalars[:, 2],
            returns=scalars[:, 3],
            lstm_states=lstm_states,
            episode_starts=scalars[:, 4],
            mask=mask,
        )


class FastRecurrentRolloutBuffer(_FastSamplingMixin, RecurrentRolloutBuffer):
    """:class:`RecurrentRolloutBuffer` with vectorized padding (same samples, less overhead)."""

    _samples_cls = RecurrentRolloutBufferSamples

    def _flatten_to_device(self) -> None:
        super()._flatten_to_device()
        self._t_observations = self.to_torch(self.swap_and_flatten(self.observations))

    def _pad_observations(self, layout: SequenceLayout) -> th.Tensor:
        return pad_rows(self._t_observations, layout)

    def add_step(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: th.Tensor,
        log_prob: th.Tensor,
        lstm_states: RNNStates,
    ) -> None:
        """Store one vectorized step with fewer copies than ``add`` (same stored values).

        Args:
            obs: Shape (n_envs, *obs_shape).
            action: Shape (n_envs, action_dim).
            reward: Shape (n_envs,).
            episode_start: Shape (n_envs,).
            value: Shape (n_envs, 1).
            log_prob: Shape (n_envs,).
            lstm_states: States *before* this step, each (n_layers, n_envs, H).
        """
        pos = self.pos
        self.hidden_states_pi[pos] = lstm_states.pi[0].cpu().numpy()
        self.cell_states_pi[pos] = lstm_states.pi[1].cpu().numpy()
        self.hidden_states_vf[pos] = lstm_states.vf[0].cpu().numpy()
        self.cell_states_vf[pos] = lstm_states.vf[1].cpu().numpy()
        self.observations[pos] = obs.reshape(self.observations.shape[1:])
        self.actions[pos] = action.reshape(self.actions.shape[1:])
        self.rewards[pos] = reward
        self.episode_starts[pos] = episode_start
        self.values[pos] = value.cpu().numpy().ravel()
        self.log_probs[pos] = log_prob.cpu().numpy()
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True


class FastRecurrentDictRolloutBuffer(_FastSamplingMixin, RecurrentDictRolloutBuffer):
    """:class:`RecurrentDictRolloutBuffer` with vectorized padding (same samples, less overhead)."""

    _samples_cls = RecurrentDictRolloutBufferSamples

    def _flatten_to_device(self) -> None:
        super()._flatten_to_device()
        self._t_observations = {k: self.to_torch(self.swap_and_flatten(v)) for k, v in self.observations.items()}

    def _pad_observations(self, layout: SequenceLayout) -> dict[str, th.Tensor]:
        return {k: pad_rows(v, layout) for k, v in self._t_observations.items()}
