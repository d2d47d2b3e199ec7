"""Catch unstable simulation before it crashes a worker."""

from __future__ import annotations

import math
import os
import sys
from typing import Any, SupportsFloat

import gymnasium as gym
import mujoco
import numpy as np

_BAD_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADCTRL,
)
_BAD_INDEX = np.array([int(w) for w in _BAD_WARNINGS], dtype=np.intp)

# Where this process's MuJoCo warnings go: a file named by this variable (``train`` points it
# into the run directory), else standard error; either way rate-limited.
LOG_ENV = "RLSIM2REAL_MUJOCO_LOG"
_PRINTED_IN_FULL = 20
_warnings = {"count": 0, "installed": False}


def _on_mujoco_warning(message: str) -> None:
    # MuJoCo's own handler prints every warning and appends it to MUJOCO_LOG.TXT in the
    # working directory: thousands of lines when a randomized model is unstable. Count them
    # all; write the first few, then every power of ten.
    _warnings["count"] += 1
    k = _warnings["count"]
    path = os.environ.get(LOG_ENV)
    in_full = _PRINTED_IN_FULL if path else 3
    if k > in_full and not _is_power_of_ten(k):
        return
    line = f"MuJoCo warning #{k} (pid {os.getpid()}): {message.strip()}"
    if k == in_full:
        line += " [further warnings are counted; only #10, #100, #1000, ... are written]"
    if path:
        try:
            with open(path, "a") as fh:
                fh.write(line + "\n")
            return
        except OSError:
            pass
    print(f"rlsim2real: {line}", file=sys.stderr, flush=True)


def _is_power_of_ten(k: int) -> bool:
    while k % 10 == 0:
        k //= 10
    return k == 1


def install_warning_handler() -> None:
    """Route this process's MuJoCo warnings through :func:`_on_mujoco_warning` (once)."""
    if not _warnings["installed"]:
        mujoco.set_mju_user_warning(_on_mujoco_warning)
        _warnings["installed"] = True


def mujoco_warning_count() -> tuple[int, int]:
    """``(pid, warnings counted in this process)``."""
    return os.getpid(), _warnings["count"]


class PhysicsGuard(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """End an episode as truncated when the physics goes unstable.

    MuJoCo meets a diverging state (NaN/inf in ``qpos``, ``qvel`` or ``qacc``) by resetting
    its data and counting a warning; an env that carries on from there returns garbage
    without anyone noticing, and one that returns NaN observations crashes the learner.
    This wrapper checks the warning counters and the state after every step; on trouble
    it returns the last finite observation, reward 0, ``truncated=True`` and the reason in
    ``info["instability"]``.

    Args:
        env: A MuJoCo Gymnasium env.

    Example:
        >>> import gymnasium as gym
        >>> env = PhysicsGuard(gym.make("InvertedPendulum-v5"))
        >>> _ = env.reset(seed=0)
        >>> env.unwrapped.data.qvel[:] = float("nan")
        >>> _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        >>> truncated, "qvel" in info["instability"] or "warning" in info["instability"]
        (True, True)
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        install_warning_handler()
        # The wrapper chain below never changes, so neither does the MuJoCo env at its end;
        # its ``data`` may (an env may rebuild it), so that is looked up at every reset.
        self._mujoco_env = env.unwrapped
        self._bind(self._mujoco_env.data)
        self._last_obs: Any = None
        self._counts = self._warning_counts()

    def mujoco_warning_count(self) -> tuple[int, int]:
        """``(pid, MuJoCo warnings counted in this env's process)``."""
        return mujoco_warning_count()

    def _bind(self, data: mujoco.MjData) -> None:
        self._data = data
        # A view of the counters, looked up once: reading it is on every step.
        self._numbers: np.ndarray = data.warning.number

    def _warning_counts(self) -> list[int]:
        self._all_counts = self._numbers.tobytes()
        return self._numbers[_BAD_INDEX].tolist()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        data = self._mujoco_env.data
        if data is not self._data:
            self._bind(data)
        # Only the raw counters are kept here; the per-warning counts that ``_diagnose``
        # compares are decoded from them when a step actually looks wrong.
        self._all_counts = self._numbers.tobytes()
        self._counts = None
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        # The fast path (every step): no warning counter moved, and NaN/inf, which survive
        # a sum, are absent. The sum is taken over a Python list rather than with a numpy
        # reduction or a dot product: on the real step path, between two MuJoCo steps that
        # evict numpy's dispatch code from the caches, that is several times cheaper. A sum
        # that merely overflows sends the observation on to the exact checks.
        if self._numbers.tobytes() == self._all_counts and isinstance(obs, np.ndarray) and obs.ndim == 1:
            if math.isfinite(sum(obs.tolist())) and math.isfinite(reward):
                self._last_obs = obs
                return obs, reward, terminated, truncated, info
        reason = self._diagnose(obs, reward)
        if reason is None:
            self._last_obs = obs
            return obs, reward, terminated, truncated, info
        info["instability"] = reason
        safe_obs = self._last_obs if self._last_obs is not None else np.zeros_like(obs)
        return safe_obs, 0.0, terminated, True, info

    def _diagnose(self, obs: Any, reward: SupportsFloat) -> str | None:
        d = self._data
        # Reached when the fast path in ``step`` saw a counter move or a non-finite sum:
        # MuJoCo counts a warning when it resets a diverged state (other warnings, such as
        # contact buffer overflows, are not instability), and NaN/inf anywhere survives a sum
        # (one that merely overflows sends the observation on to the exact checks).
        if self._counts is None:  # counts as of the last reset (or the last diagnosis)
            self._counts = np.frombuffer(self._all_counts, dtype=self._numbers.dtype)[_BAD_INDEX].tolist()
        counts = self._warning_counts()
        total = sum(obs.tolist()) if isinstance(obs, np.ndarray) and obs.ndim == 1 else np.sum(obs)
        if counts == self._counts and math.isfinite(float(total) + float(reward)):
            return None
        if counts != self._counts:
            fired = [w.name for w, a, b in zip(_BAD_WARNINGS, counts, self._counts) if a != b]
            self._counts = counts
            return f"MuJoCo warning {', '.join(fired)} at time {d.time:.4f}"
        for name in ("qpos", "qvel", "qacc"):
            if not np.all(np.isfinite(getattr(d, name))):
                return f"non-finite {name} at time {d.time:.4f}"
        if not np.all(np.isfinite(obs)):
            return "non-finite observation"
        if not np.isfinite(float(reward)):
            return "non-finite reward"
        return None
