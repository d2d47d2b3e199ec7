"""Unlabeled target-domain observations for the DANN encoder.

They come either from the experiment's target set (episodes of the current policy on a
held-out "real" configuration, re-collected every few updates) or from a trajectory file
of logged observations, so a user with real robot logs can train against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlsim2real.episodes import EpisodeRunner, seeded_jobs
from rlsim2real.evaluation import RunPolicy
from rlsim2real.params import SpecError
from rlsim2real.specs import EnvSpec, TargetSpec
from rlsim2real.trajectories import load_trajectories


def load_target_file(path: Path, obs_shape: tuple[int, ...]) -> np.ndarray:
    """Observations of a trajectory file, checked against the env's observation shape.

    Raises:
        SpecError: naming the file, if it is missing, corrupt, empty, non-finite or of the
            wrong shape.
    """
    obs = load_trajectories(path).obs
    if tuple(obs.shape[1:]) != tuple(obs_shape):
        raise SpecError(
            f"{path}: target observations have shape {tuple(obs.shape[1:])} per step; "
            f"expected {tuple(obs_shape)} (the env's observation shape)"
        )
    return obs if obs.dtype == np.uint8 else obs.astype(np.float32)


class TargetSource:
    """A provider for ``RecurrentPPO.set_target_provider``: called before every update.

    Args:
        spec: The env spec (for the target set).
        target: Where target observations come from and how often to refresh them.
        model: The agent (its current policy collects target episodes).
        normalizer: The training ``VecNormalize`` (or ``None``): targets are normalized with
            its current statistics, exactly as the policy sees source observations.
        seed: Base seed of the target episodes.
        obs_shape: The env's observation shape (to check a file).
    """

    def __init__(
        self, spec: EnvSpec, target: TargetSpec, model: Any, normalizer: Any, seed: int, obs_shape: tuple[int, ...]
    ) -> None:
        self.spec = spec
        self.target = target
        self.model = model
        self.normalizer = normalizer
        self.seed = seed
        self.calls = 0
        self.collections = 0
        self._raw = load_target_file(target.file, obs_shape) if target.file is not None else None
        self._runner: EpisodeRunner | None = None  # built at the first collection, then reused
        # SB3 hands a CNN channel-last images transposed (VecTransposeImage): targets too.
        seen = tuple(getattr(getattr(model, "observation_space", None), "shape", None) or ())
        self._transpose = len(obs_shape) == 3 and seen == (obs_shape[2], obs_shape[0], obs_shape[1]) != tuple(obs_shape)

    def _collect(self) -> np.ndarray:
        """Raw observations (sensor terms applied, not normalized) of fresh target episodes."""
        policy = RunPolicy(self.model, self.normalizer)
        self.collections += 1
        seed = self.seed + 1000 * self.collections
        if self._runner is None:
            self._runner = EpisodeRunner(self.spec, batch=self.target.episodes)
        jobs = seeded_jobs(self.target.set, self.target.episodes, seed)
        results = self._runner.run(policy, jobs, deterministic=False, record=("obs",))
        # Step-major (every episode's step 0, then step 1, ...), the order these rows have
        # always had: the train/held-out split permutes rows, so the order is part of a seed.
        rows = sorted((t, k) for k, r in enumerate(results) for t in range(r.length))
        return np.stack([results[k].obs[t] for t, k in rows])

    def __call__(self, num_timesteps: int) -> np.ndarray:
        due = self.target.refresh_every and self.calls % self.target.refresh_every == 0
        if self.target.file is None and (self._raw is None or due):
            self._raw = self._collect()
        self.calls += 1
        raw = self._raw
        if self.normalizer is not None:
            raw = self.normalizer.normalize_obs(raw)
        if self._transpose:
            raw = np.ascontiguousarray(np.transpose(raw, (0, 3, 1, 2)))
        return raw if raw.dtype == np.uint8 else raw.astype(np.float32)
