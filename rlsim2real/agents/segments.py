"""Run an LSTM over a padded minibatch of sequences in a few length-sorted segments.

PPO minibatches hold sequences of very different lengths, padded to the longest. On CPU an
LSTM step costs roughly ``a + b * rows``, so the padding rows are paid for in full. Sorting
the sequences by length and cutting time into segments, each run on only the sequences
still active at its start, skips most of that padding; each extra segment costs one more
LSTM call (weight reorders and the like). :func:`plan_segments` picks the cuts that minimise
this cost, and :func:`run_segments` runs them with ``nn.LSTM`` itself, chaining the states
from one segment into the next, so the outputs and gradients on real steps are those of one
call over the padded batch (same kernels, same math).
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
        Outputs of shape (n_seq * max_len, H). Padding rows hold zeros or values computed
        from padding; either way they do not influence real rows.
    """
    n_seq = states[0].shape[1]
    sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
    max_len = sequence.shape[0]
    segments = plan_segments(lengths)
    if len(segments) == 1 and segments[0].rows == n_seq:
        output, _ = lstm(sequence, states)
    else:
        order_np = np.argsort(-np.asarray(lengths), kind="stable")
        order = th.as_tensor(order_np, device=features.device)
        sequence = sequence.index_select(1, order)
        h, c = states[0].index_select(1, order), states[1].index_select(1, order)
        outputs = []
        for seg in segments:
            initial = (h[:, : seg.rows].contiguous(), c[:, : seg.rows].contiguous())
            out, (h, c) = lstm(sequence[seg.start : seg.stop, : seg.rows], initial)
            outputs.append(F.pad(out, (0, 0, 0, n_seq - seg.rows)))
        if segments[-1].stop < max_len:
            outputs.append(outputs[0].new_zeros((max_len - segments[-1].stop, n_seq, outputs[0].shape[-1])))
        inverse = th.as_tensor(np.argsort(order_np), device=features.device)
        output = th.cat(outputs).index_select(1, inverse)
    return th.flatten(output.transpose(0, 1), start_dim=0, end_dim=1)
