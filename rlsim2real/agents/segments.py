"""Run an LSTM over a minibatch of sequences in a few length-sorted segments.

PPO minibatches hold sequences of very different lengths, padded to the longest. On CPU an
LSTM step costs roughly ``a + b * rows``, so the padding rows are paid for in full. Sorting
the sequences by length and cutting time into segments, each run on only the sequences
still active at its start, skips most of that padding; each extra segment costs one more
LSTM call (weight reorders and the like). :func:`plan_segments` picks the cuts that minimise
this cost, and :func:`run_segments` runs them with ``nn.LSTM`` itself, chaining the states
from one segment into the next, so the outputs and gradients on real steps are those of one
call over the padded batch (same kernels, same math).

:func:`plan_sequences` does all the index work of one minibatch once (the actor's and the
critic's LSTM share it): the segment inputs are gathered straight from the real rows, and
the outputs come back as real rows in their original order, so nothing is padded in between.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch as th
import torch.nn.functional as F
from torch import nn

# Cost model of one nn.LSTM forward + backward on CPU, in units of one row-step; measured
# with oneDNN on an x86 core (about 17 us per row-step, 15 us per step, 0.8 ms per call).
_STEP_COST = 0.9
_CALL_COST = 45.0


class Segment(NamedTuple):
    """Steps ``[start, stop)`` of the ``rows`` longest sequences."""

    start: int
    stop: int
    rows: int


def plan_segments(lengths: np.ndarray, call_cost: float | None = None, step_cost: float | None = None) -> list[Segment]:
    """Cut time into segments over length-sorted sequences at the least modelled cost.

    Args:
        lengths: Real length of each sequence, shape (n_seq,), each >= 1.
        call_cost: Fixed cost of one LSTM call, in row-steps (default: the module's model).
        step_cost: Cost of one time step regardless of rows, in row-steps (default: the model).

    Returns:
        Segments covering ``[0, max(lengths))`` in order; ``rows`` never increases.

    Example:
        >>> plan_segments(np.array([5, 5, 1, 1, 1, 1]), call_cost=0.0, step_cost=0.0)
        [Segment(start=0, stop=1, rows=6), Segment(start=1, stop=5, rows=2)]
        >>> plan_segments(np.array([5, 5, 1, 1, 1, 1]), call_cost=100.0)
        [Segment(start=0, stop=5, rows=6)]
    """
    call_cost = _CALL_COST if call_cost is None else call_cost
    step_cost = _STEP_COST if step_cost is None else step_cost
    sorted_len = np.sort(np.asarray(lengths, dtype=np.int64))[::-1]
    cuts = np.unique(sorted_len)  # candidate segment ends, increasing
    points = np.concatenate(([0], cuts))
    # Sequences still running at each candidate start.
    active = (sorted_len[None, :] > points[:-1, None]).sum(1)
    best = np.zeros(len(points))
    choice = np.zeros(len(points), dtype=np.int64)
    for j in range(1, len(points)):
        starts = np.arange(j)
        costs = best[:j] + call_cost + (points[j] - points[starts]) * (step_cost + active[starts])
        choice[j] = int(np.argmin(costs))
        best[j] = costs[choice[j]]
    segments = []
    j = len(points) - 1
    while j > 0:
        i = choice[j]
        segments.append(Segment(int(points[i]), int(points[j]), int(active[i])))
        j = i
    return segments[::-1]


class SequencePlan(NamedTuple):
    """How the real rows of a minibatch of sequences map onto length-sorted LSTM segments.

    Real rows are sequence-major: all steps of sequence 0, then of sequence 1, and so on.

    Attributes:
        segments: The segments, in time order.
        order: Sequences by decreasing length (stable), shape (n_seq,); the initial LSTM
            states must be given in this order.
        gather: For every step of every segment (segment by segment, time-major), the real
            row it reads, or ``n_rows`` for padding; shape (sum of steps x rows,).
        scatter: Position of each real row in the concatenated segment outputs, shape (n_rows,).
        n_rows: Number of real rows.
    """

    segments: tuple[Segment, ...]
    order: th.Tensor
    gather: th.Tensor
    scatter: th.Tensor
    n_rows: int


def plan_sequences(lengths: np.ndarray, device: th.device | str = "cpu") -> SequencePlan:
    """Segments (:func:`plan_segments`) and the gather/scatter indices to run them on real rows.

    Args:
        lengths: Real length of each sequence in row order, shape (n_seq,), each >= 1.
        device: Device of the index tensors.

    Returns:
        The :class:`SequencePlan`.

    Example:
        >>> plan = plan_sequences(np.array([1, 3]))  # rows 0 | 1, 2, 3; padding reads row 4
        >>> plan.segments, plan.order.tolist()
        ((Segment(start=0, stop=3, rows=2),), [1, 0])
        >>> plan.gather.tolist(), plan.scatter.tolist()
        ([1, 0, 2, 4, 3, 4], [1, 0, 2, 4])
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    segments = tuple(plan_segments(lengths))
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    first = (np.cumsum(lengths) - lengths)[order]  # first real row of each sorted sequence
    n_rows = int(lengths.sum())
    gathers, scatter, offset = [], np.empty(n_rows, dtype=np.int64), 0
    for seg in segments:
        t = np.arange(seg.start, seg.stop)[:, None]
        real = t < sorted_len[None, : seg.rows]
        rows = np.where(real, first[None, : seg.rows] + t, n_rows)
        position = offset + (t - seg.start) * seg.rows + np.arange(seg.rows)[None, :]
        scatter[rows[real]] = position[real]
        gathers.append(rows.ravel())
        offset += rows.size
    to_t = lambda a: th.as_tensor(a, dtype=th.long, device=device)  # noqa: E731
    return SequencePlan(segments, to_t(order), to_t(np.concatenate(gathers)), to_t(scatter), n_rows)


def run_planned(features: th.Tensor, states: tuple[th.Tensor, th.Tensor], lstm: nn.LSTM, plan: SequencePlan) -> th.Tensor:
    """Run ``lstm`` over the real rows of a minibatch of sequences, segment by segment.

    Args:
        features: Real rows, shape (n_rows, F), sequence-major.
        states: Initial (h, c) of every sequence in ``plan.order``, each (n_layers, n_seq, H),
            already reset where a sequence starts an episode.
        lstm: A sequence-first LSTM.
        plan: From :func:`plan_sequences` for these sequences.

    Returns:
        Outputs for the real rows, shape (n_rows, H), in the order of ``features``.
    """
    # Padding steps read a zero row; they never feed a real step (padding only follows a
    # sequence's end), so their value does not matter as long as it is finite.
    inputs = F.pad(features, (0, 0, 0, 1)).index_select(0, plan.gather)
    h, c = states
    outputs, offset = [], 0
    for seg in plan.segments:
        n = (seg.stop - seg.start) * seg.rows
        if seg.rows < h.shape[1]:
            h, c = h[:, : seg.rows].contiguous(), c[:, : seg.rows].contiguous()
        out, (h, c) = lstm(inputs[offset : offset + n].view(seg.stop - seg.start, seg.rows, -1), (h, c))
        outputs.append(out.reshape(n, -1))
        offset += n
    return (outputs[0] if len(outputs) == 1 else th.cat(outputs)).index_select(0, plan.scatter)


def run_segments(
    features: th.Tensor, states: tuple[th.Tensor, th.Tensor], lstm: nn.LSTM, lengths: np.ndarray
) -> th.Tensor:
    """Run ``lstm`` over padded sequences, segment by segment (see the module docstring).

    Args:
        features: Shape (n_seq * max_len, F), sequence-major, zero-padded.
        states: Initial (h, c) of every sequence, each (n_layers, n_seq, H), already reset
            where a sequence starts an episode.
        lstm: A sequence-first LSTM.
        lengths: Real length of each sequence, shape (n_seq,).

    Returns:
        Outputs of shape (n_seq * max_len, H), zeros on padding rows.
    """
    n_seq = states[0].shape[1]
    max_len = features.shape[0] // n_seq
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = th.as_tensor(np.flatnonzero(np.arange(max_len)[None, :] < lengths[:, None]), device=features.device)
    plan = plan_sequences(lengths, features.device)
    sorted_states = (states[0].index_select(1, plan.order), states[1].index_select(1, plan.order))
    real = run_planned(features.index_select(0, rows), sorted_states, lstm, plan)
    return real.new_zeros((n_seq * max_len, real.shape[1])).index_copy(0, rows, real)
