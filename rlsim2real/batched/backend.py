"""The simulation seam of the batched env: N worlds of one model behind a small interface.

:class:`BatchedVecEnv` never touches MuJoCo itself; it talks to a :class:`SimBackend`:
reset some worlds to given joint positions and velocities, step every world with its
controls, write per-world values into model fields, recompute derived constants, and report
which worlds went unstable. :class:`MujocoBatchBackend` implements it on ``mujoco.batch``
(CPU threads); :class:`~rlsim2real.batched.warp_backend.WarpBackend` on MuJoCo Warp
(``mujoco-warp``: per-world model fields and state on a GPU, or on Warp's CPU device).
:data:`BACKENDS` names them for ``BatchedVecEnv(..., backend=...)`` (see docs/batched.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import mujoco
import numpy as np
from mujoco import batch as mj_batch

from rlsim2real.params import SpecError


# MuJoCo resets a diverging simulation and counts one of these (other warnings, such as a
# full contact buffer, are not instability).
UNSTABLE_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADCTRL,
)


class SimBackend(ABC):
    """N simulations of one model, each with its own state and its own model fields.

    Arrays are numpy, shape (n_worlds, ...); a GPU backend copies at this boundary.

    Attributes:
        model: The nominal model (never written: per-world values live in the backend).
        n_worlds: Number of simulations.
    """

    model: mujoco.MjModel
    n_worlds: int

    @abstractmethod
    def reset(self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Reset worlds ``ids`` to the model's defaults, then set their joint state and run
        the forward dynamics (as Gymnasium's ``MujocoEnv.reset`` + ``set_state``).

        Args:
            ids: Sorted world indices, shape (k,).
            qpos: Shape (k, nq).
            qvel: Shape (k, nv).
        """

    @abstractmethod
    def step(self, ctrl: np.ndarray, nstep: int) -> None:
        """Set every world's controls, shape (n_worlds, nu), and advance it ``nstep``
        physics steps (``mj_step`` with ``nstep``)."""

    @property
    @abstractmethod
    def qpos(self) -> np.ndarray:
        """Joint positions, shape (n_worlds, nq) (read only)."""

    @property
    @abstractmethod
    def qvel(self) -> np.ndarray:
        """Joint velocities, shape (n_worlds, nv) (read only)."""

    @abstractmethod
    def model_field(self, field: str) -> np.ndarray:
        """The per-world values of a model field (``body_mass``, ``opt.gravity``, ...),
        shape (n_worlds, *field shape); writing it, then :meth:`commit`, changes those
        worlds' models."""

    def commit(self, fields: Iterable[str], ids: np.ndarray) -> None:
        """Make what was written into :meth:`model_field` arrays of ``fields`` for worlds
        ``ids`` reach the simulation (called after the writes, before :meth:`set_const`).

        A backend whose arrays are the simulation's own memory (``mujoco.batch``) has
        nothing to do; one whose worlds live on a device uploads them here."""

    @abstractmethod
    def set_const(self, ids: np.ndarray) -> None:
        """Recompute derived constants (``mj_setConst``) of worlds ``ids`` after writes."""

    @abstractmethod
    def unstable_since_last_call(self) -> np.ndarray:
        """Worlds that counted an instability warning since the last call, shape (n_worlds,) bool."""

    def close(self) -> None:
        """Release the backend's resources."""


class MujocoBatchBackend(SimBackend):
    """:class:`SimBackend` on ``mujoco.batch.Batch``: ``n_worlds`` simulations on ``threads``
    threads, bit-identical to a loop over one ``MjData`` each, at any thread count.

    Args:
        model: The nominal model (the batch runs on a copy; this one is not written).
        n_worlds: Number of simulations.
        threads: Threads, the caller's included (0: all CPUs).
    """

    def __init__(self, model: mujoco.MjModel, n_worlds: int, threads: int = 1) -> None:
        self.model = model
        self.n_worlds = int(n_worlds)
        self.batch = mj_batch.Batch(model, self.n_worlds, int(threads))
        self.threads = self.batch.nthread
        self._qpos = self.batch.bind("qpos")
        self._qvel = self.batch.bind("qvel")
        self._ctrl = self.batch.bind("ctrl")
        # Warning counters: (n_worlds, mjNWARNING, [lastinfo, number]).
        bad = sorted(int(w) for w in UNSTABLE_WARNINGS)
        # Consecutive in mjtWarning: a view of the counters rather than a gather.
        self._bad = slice(bad[0], bad[-1] + 1) if bad == list(range(bad[0], bad[-1] + 1)) else np.array(bad, dtype=np.intp)
        self._counts = self._warning_numbers()
        self.batch.reset([0])
        self._reset_row = self.batch.state[0].copy()

    def _warning_numbers(self) -> np.ndarray:
        return self.batch.warning[:, self._bad, 1].copy()

    def reset(self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        # mj_resetData leaves the same state row in every world (the worlds differ in model
        # fields, not in what a reset sets), so it is copied rather than recomputed; and the
        # mj_forward that Gymnasium's set_state runs computes only derived quantities, which
        # this batch (not persistent) recomputes from the state at the next step anyway.
        # Both shortcuts are covered by the step-for-step tests against Gymnasium.
        state = self.batch.state
        state[ids] = self._reset_row
        self._qpos[ids] = qpos
        self._qvel[ids] = qvel

    def step(self, ctrl: np.ndarray, nstep: int) -> None:
        self._ctrl[...] = ctrl
        self.batch.step(nstep=nstep)

    @property
    def qpos(self) -> np.ndarray:
        return self._qpos

    @property
    def qvel(self) -> np.ndarray:
        return self._qvel

    def model_field(self, field: str) -> np.ndarray:
        values = self.batch.expand(field)
        if field.startswith("opt.") and values.ndim == 1:
            # A scalar option (opt.timestep): one column, as mjfields.field_array gives it.
            return values.reshape(self.n_worlds, 1)
        return values

    def set_const(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        raw = getattr(self.batch, "_b", None)
        if raw is None:
            self.batch.set_const(ids)
            return
        # Batch.set_const validates its ids with a dozen numpy calls at every reset; the
        # VecEnv's are sorted, unique and in range already, so the binding is called
        # directly, and a failure is reported as Batch reports it.
        nfail = raw.set_const(ids)
        if nfail:
            self.batch._check(ids, nfail)

    def unstable_since_last_call(self) -> np.ndarray:
        counts = self._warning_numbers()
        moved = np.logical_or.reduce(counts != self._counts, axis=1)
        self._counts = counts
        return moved


def _warp_backend(*args, **kwargs) -> SimBackend:
    # Imported here: the Warp backend builds on this module, not the other way round.
    from rlsim2real.batched.warp_backend import WarpBackend

    return WarpBackend(*args, **kwargs)


BACKENDS: dict[str, Callable[..., SimBackend]] = {"mujoco_batch": MujocoBatchBackend, "warp": _warp_backend}
"""Backends by the name ``BatchedVecEnv``'s ``backend`` and an experiment's ``backend`` take
(each called as ``(model, n_worlds, threads, **options)``)."""

BACKEND_OPTIONS: dict[str, dict[str, tuple[type, str]]] = {
    "mujoco_batch": {},
    "warp": {
        "device": (str, 'a Warp device: "cuda", "cuda:1" or "cpu"'),
        "nconmax": (int, "contacts per world to allocate, an integer >= 1"),
        "njmax": (int, "constraint rows per world to allocate, an integer >= 1"),
        "deterministic": (bool, "true or false (mujoco_warp's deterministic execution: the same run from the same seed on a GPU)"),
    },
}
"""The keyword options each backend takes (``backend_options``), with their type and meaning."""


def check_backend_options(backend: str, options: Any, where: str) -> dict[str, Any]:
    """``options`` for ``backend``, checked: known keys, right types, counts >= 1.

    Args:
        backend: A name in :data:`BACKENDS`.
        options: A mapping of option names to values.
        where: Where they came from, for the message (``"exp.toml: experiment.backend_options"``).

    Returns:
        A plain dict of the options.

    Raises:
        SpecError: one line naming the place, the key and what was expected.
    """
    known = BACKEND_OPTIONS[backend]
    if not isinstance(options, Mapping):
        raise SpecError(f"{where}: expected a table of options, got {options!r}")
    for key, value in options.items():
        if key not in known:
            takes = ", ".join(known) if known else "none"
            raise SpecError(f"{where}: unknown option {key!r} for backend {backend!r}; it takes: {takes}")
        kind, meaning = known[key]
        if (isinstance(value, bool) != (kind is bool)) or not isinstance(value, kind) or (kind is int and value < 1):
            raise SpecError(f"{where}.{key}: expected {meaning}, got {value!r}")
    return dict(options)
