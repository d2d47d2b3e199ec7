"""Recurrent rollout buffers whose minibatches are padded with a few vectorized index ops.

The sampling is exactly sb3-contrib's (same random split point, same contiguous
minibatches, a new sequence at every episode start and env change), so for the same
``np.random`` state these buffers yield the same samples as
``sb3_contrib.common.recurrent.buffers.RecurrentRolloutBuffer``. What changes is the cost:
the rollout is moved to ``device`` once per rollout, and each minibatch is padded with
one gather and one scatter per field instead of one tensor per sequence per field.
The update itself reads :meth:`get_sequences`: the same minibatches as real rows only
(one gather per field), with the segment plan both LSTMs share.
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

from rlsim2real.agents.segments import SequencePlan, plan_sequences

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


class SequenceBatch(NamedTuple):
    """A minibatch as the update consumes it: real rows only, plus how to run the LSTMs.

    Rows are the minibatch's transitions in sampling order (what sb3-contrib's padded
    minibatch holds at ``mask == 1``, in the same order).

    Attributes:
        observations: Shape (n_rows, *obs_shape) (or a dict of such).
        actions: Shape (n_rows, *action_shape).
        old_values: Shape (n_rows,).
        old_log_prob: Shape (n_rows,).
        advantages: Shape (n_rows,).
        returns: Shape (n_rows,).
        lstm_states: Initial states of the sequences, each (n_layers, n_seq, H), zeroed where
            a sequence starts an episode, sequences in ``plan.order``.
        plan: Segments and indices for :func:`~rlsim2real.agents.segments.run_planned`.
    """

    observations: th.Tensor | dict[str, th.Tensor]
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    lstm_states: RNNStates
    plan: SequencePlan


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
        # The four states of every step, zeroed at episode starts (as the LSTM sees them when
        # a sequence begins there), for one gather per minibatch: (N, 4, n_layers, H).
        names = ("hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf")
        states = np.stack([self.swap_and_flatten(getattr(self, name).swapaxes(1, 2)) for name in names], axis=1)
        keep = 1.0 - self.swap_and_flatten(self.episode_starts).reshape(-1, 1, 1, 1)
        self._t_initial_states = self.to_torch(states * keep.astype(states.dtype))
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
        indices, batch_size = self._sampling_order(batch_size)
        for start in range(0, len(indices), batch_size):
            yield self._get_samples(indices[start : start + batch_size])

    def get_sequences(self, batch_size: int | None = None) -> Generator[SequenceBatch, None, None]:
        """The minibatches of :meth:`get` (same random draw, same transitions) as :class:`SequenceBatch`.

        Args:
            batch_size: Transitions per minibatch (all of them if None).

        Yields:
            One :class:`SequenceBatch` per minibatch.
        """
        indices, batch_size = self._sampling_order(batch_size)
        # Sequence boundaries of the whole rotated rollout, found once for all its minibatches.
        boundary = np.logical_or(self._episode_starts_flat[indices], self._env_change_flat[indices]).ravel()
        for start in range(0, len(indices), batch_size):
            yield self._sequence_batch(indices[start : start + batch_size], boundary[start : start + batch_size].copy())

    def _sampling_order(self, batch_size: int | None) -> tuple[np.ndarray, int]:
        """The rollout's flat indices in sampling order, and the minibatch size to cut them by."""
        if not self.full:
            raise RuntimeError("Rollout buffer must be full before sampling from it")
        if not self.generator_ready:
            self._flatten_to_device()
            self.generator_ready = True
        total = self.buffer_size * self.n_envs
        # Same draw as sb3-contrib so seeded runs sample the same minibatches.
        split_index = np.random.randint(total)
        indices = np.concatenate((np.arange(split_index, total), np.arange(split_index)))
        return indices, total if batch_size is None else batch_size

    def _sequence_batch(self, batch_inds: np.ndarray, starts: np.ndarray) -> SequenceBatch:
        starts[0] = True
        seq_first = np.flatnonzero(starts)
        plan = plan_sequences(np.diff(np.append(seq_first, len(batch_inds))), self.device)
        rows = th.as_tensor(batch_inds, device=self.device)
        first = th.as_tensor(batch_inds[seq_first], device=self.device).index_select(0, plan.order)
        # (n_seq, 4, n_layers, H) -> 4 x (n_layers, n_seq, H)
        h_pi, c_pi, h_vf, c_vf = self._t_initial_states.index_select(0, first).permute(1, 2, 0, 3).contiguous().unbind(0)
        scalars = self._t_scalars.index_select(0, rows)
        return SequenceBatch(
            observations=self._rows_of_observations(rows),
            actions=self._t_actions.index_select(0, rows),
            old_values=scalars[:, 0],
            old_log_prob=scalars[:, 1],
            advantages=scalars[:, 2],
            returns=scalars[:, 3],
            lstm_states=RNNStates((h_pi, c_pi), (h_vf, c_vf)),
            plan=plan,
        )

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

    def _rows_of_observations(self, rows: th.Tensor) -> th.Tensor:
        return self._t_observations.index_select(0, rows)

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

    def _rows_of_observations(self, rows: th.Tensor) -> dict[str, th.Tensor]:
        return {k: v.index_select(0, rows) for k, v in self._t_observations.items()}
