"""Rollouts as plain arrays (obs, actions, rewards, qpos, qvel) with ``.npz`` I/O.

Trajectories are arrays in a file, not simulator objects, so logs from a real robot load
the same way (``qpos``/``qvel`` may be absent there). They are recorded by
:func:`rlsim2real.collect_trajectories` (in :mod:`rlsim2real.episodes`).

Example:
    >>> import rlsim2real as rs
    >>> env = rs.make_real_env("inverted_pendulum", "heavy_pole", seed=0)
    >>> trajs = rs.collect_trajectories(env, policy=None, episodes=2, seed=0)
    >>> trajs.n_episodes, trajs.obs.shape[1]
    (2, 4)
    >>> len(trajs.episode(0)["obs"]) == int(trajs.lengths[0])
    True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlsim2real.io import atomic_write
from rlsim2real.params import SpecError

_ARRAYS = ("obs", "actions", "rewards", "qpos", "qvel", "dones")


@dataclass
class Trajectories:
    """Episodes stored back to back.

    Attributes:
        obs: Observations before each action, shape (T, *obs_shape).
        actions: Actions, shape (T, *action_shape).
        rewards: Rewards, shape (T,).
        lengths: Steps per episode, shape (n_episodes,); sums to T.
        qpos: Simulator positions before each action, shape (T, nq), or ``None``.
        qvel: Simulator velocities before each action, shape (T, nv), or ``None``.
        params: Per-episode parameter values the episodes ran on (may be empty).
        dones: Whether the episode ended after each step, shape (T,), or ``None``.
        metadata: What a log says about itself (``env``, ``set``, ``params``, ...), JSON.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    lengths: np.ndarray
    qpos: np.ndarray | None = None
    qvel: np.ndarray | None = None
    params: list[dict[str, float]] = field(default_factory=list)
    dones: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate("trajectories")

    @property
    def n_episodes(self) -> int:
        return int(len(self.lengths))

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Arrays of episode ``i`` (views)."""
        start = int(np.sum(self.lengths[:i]))
        stop = start + int(self.lengths[i])
        out = {k: getattr(self, k)[start:stop] for k in _ARRAYS if getattr(self, k) is not None}
        return out

    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode, shape (n_episodes,)."""
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.intp)
        return np.add.reduceat(self.rewards, starts) if len(self.rewards) else np.zeros(0)

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` (naming ``where``) on empty, mismatched or non-finite data."""
        if self.lengths.ndim != 1 or len(self.lengths) == 0 or np.any(self.lengths <= 0):
            raise SpecError(f"{where}: expected at least one episode with a positive length, got lengths {self.lengths.tolist()}")
        total = int(np.sum(self.lengths))
        for name in _ARRAYS:
            arr = getattr(self, name)
            if arr is None:
                continue
            if arr.shape[0] != total:
                raise SpecError(f"{where}: '{name}' has {arr.shape[0]} rows; expected {total} (the sum of 'lengths')")
            if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
                raise SpecError(f"{where}: '{name}' holds NaN or inf values")

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` atomically."""
        arrays = {k: getattr(self, k) for k in _ARRAYS if getattr(self, k) is not None}
        arrays["lengths"] = self.lengths
        arrays["params"] = np.array(json.dumps(self.params))
        if self.metadata:
            arrays["metadata"] = np.array(json.dumps(self.metadata))
        return atomic_write(path, lambda p: _savez(p, arrays), suffix=".npz")


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_trajectories(path: str | os.PathLike) -> Trajectories:
    """Load a file written by :meth:`Trajectories.save` (or any ``.npz`` with those arrays).

    Required arrays: ``obs`` (T, *obs_shape), ``actions`` (T, ...), ``rewards`` (T,);
    ``lengths`` (if absent: episodes end after each true ``dones`` entry, else one episode);
    optional ``qpos`` (T, nq), ``qvel`` (T, nv), ``dones`` (T,), ``params`` (a JSON list of
    one ``{name: value}`` table per episode), ``metadata`` (a JSON object: ``env``, ``set``,
    ``params``, whatever the logger knows).

    Raises:
        SpecError: in one line naming the file, on a missing, empty, truncated or corrupt
            file, a ``.npy`` under a ``.npz`` name, metadata that is not JSON, arrays of the
            wrong number of dimensions or type, or non-finite values.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpecError(f"{where}: no such trajectory file")
    if path.stat().st_size == 0:
        raise SpecError(f"{where}: empty file; expected a .npz trajectory file")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises many types on a file that is not what it seems
        raise SpecError(f"{where}: not a readable .npz trajectory file ({_reason(exc)})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        kind = f"a single {data.shape} array (.npy)" if isinstance(data, np.ndarray) else type(data).__name__
        raise SpecError(f"{where}: holds {kind}, not a .npz archive of named arrays (obs, actions, rewards)")
    try:
        with data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # a truncated member shows only when it is read
        raise SpecError(f"{where}: not a readable .npz trajectory file, truncated or corrupt ({_reason(exc)})") from None
    missing = [k for k in ("obs", "actions", "rewards") if k not in arrays]
    if missing:
        raise SpecError(f"{where}: missing arrays {', '.join(missing)}; expected obs, actions, rewards[, lengths, qpos, qvel]")
    _check_arrays(arrays, where)
    if len(arrays["obs"]) == 0:
        raise SpecError(f"{where}: the file holds no steps")
    dones = arrays["dones"].reshape(-1).astype(bool) if "dones" in arrays else None
    if "lengths" in arrays:
        lengths = arrays["lengths"]
    elif dones is not None and len(dones) == len(arrays["obs"]):
        ends = np.flatnonzero(dones[:-1]) + 1
        lengths = np.diff(np.concatenate([[0], ends, [len(dones)]]))
    else:
        lengths = np.array([len(arrays["obs"])])
    params = _load_params(arrays["params"], where) if "params" in arrays else []
    metadata = _load_metadata(arrays["metadata"], where) if "metadata" in arrays else {}
    try:
        return Trajectories(
            obs=arrays["obs"], actions=arrays["actions"], rewards=arrays["rewards"].reshape(-1),
            lengths=np.asarray(lengths, dtype=np.int64).reshape(-1),
            qpos=arrays.get("qpos"), qvel=arrays.get("qvel"), params=params, dones=dones,
            metadata=metadata,
        )
    except SpecError as exc:
        raise SpecError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None


# name -> (lowest ndim, highest ndim, what to say)
_SHAPES = {
    "obs": (2, 4, "(T, *obs_shape)"),
    "actions": (1, 2, "(T,) or (T, action_dim)"),
    "rewards": (1, 2, "(T,) or (T, 1)"),
    "lengths": (0, 1, "(n_episodes,)"),
    "qpos": (2, 2, "(T, nq)"),
    "qvel": (2, 2, "(T, nv)"),
    "dones": (1, 1, "(T,)"),
}


def _check_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    for name, (lo, hi, expected) in _SHAPES.items():
        arr = arrays.get(name)
        if arr is None:
            continue
        if arr.dtype.kind not in "biuf":
            raise SpecError(f"{where}: '{name}' holds {arr.dtype} values; expected numbers")
        if not lo <= arr.ndim <= hi:
            raise SpecError(f"{where}: '{name}' has shape {arr.shape}; expected {expected}")
    if arrays["rewards"].ndim == 2 and arrays["rewards"].shape[1] != 1:
        raise SpecError(f"{where}: 'rewards' has shape {arrays['rewards'].shape}; expected (T,) or (T, 1)")
    if "lengths" in arrays and arrays["lengths"].dtype.kind == "f":
        lengths = arrays["lengths"]
        if not np.all(np.isfinite(lengths)) or np.any(lengths != np.round(lengths)):
            raise SpecError(f"{where}: 'lengths' holds non-integer values; expected whole step counts")


def _json_array(raw: np.ndarray, name: str, where: str) -> Any:
    """Decode the one JSON string stored as array ``name``."""
    if raw.dtype.kind not in "US" or raw.ndim != 0:
        raise SpecError(f"{where}: '{name}' is a {raw.dtype} array of shape {raw.shape}; expected one JSON string")
    try:
        return json.loads(str(raw))
    except ValueError as exc:
        raise SpecError(f"{where}: '{name}' is not valid JSON ({exc})") from None


def _load_params(raw: np.ndarray, where: str) -> list[dict[str, float]]:
    params = _json_array(raw, "params", where)
    if not isinstance(params, list) or not all(
        isinstance(p, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p.values())
        for p in params
    ):
        raise SpecError(f"{where}: 'params' must be a JSON list of {{name: number}} tables, one per episode")
    return params


def _load_metadata(raw: np.ndarray, where: str) -> dict[str, Any]:
    metadata = _json_array(raw, "metadata", where)
    if not isinstance(metadata, dict):
        raise SpecError(f"{where}: 'metadata' must be a JSON object, got {type(metadata).__name__}")
    return metadata


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


