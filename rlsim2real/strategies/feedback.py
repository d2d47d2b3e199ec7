"""The strategy loop: finished episodes up to the strategy, its distribution down to workers.

Each worker's outermost randomization layer puts what an episode ran on in the info of its
last step (``info["dr_episode"]``: the joint sample and its tag); SB3's ``Monitor`` puts the
return and length there (``info["episode"]``). :class:`StrategyFeedback` turns each into a
typed :class:`~rlsim2real.strategies.base.EpisodeRecord`, writes it to
``logs/episodes.csv``, and hands the rollout's records to ``strategy.update``; when the
strategy says its distribution changed, it is broadcast to every worker.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import unwrap_vec_normalize

from rlsim2real.episodes import episode_success
from rlsim2real.strategies.base import EpisodeRecord, Strategy


class StrategyFeedback(BaseCallback):
    """Closes the strategy loop and logs what the workers ran on.

    Args:
        strategy: The strategy (in this, the learner, process).
        success_return: The env spec's success threshold (``None``: success is reaching the
            time limit).
        episodes_csv: Where each finished episode is appended (``None``: not written).
    """

    def __init__(self, strategy: Strategy, success_return: float | None, episodes_csv: Path | None = None) -> None:
        super().__init__()
        self.strategy = strategy
        self.success_return = success_return
        self.episodes_csv = episodes_csv
        self.records: list[EpisodeRecord] = []
        self.episodes = 0
        self.unstable = 0
        self.truncated = 0
        self.very_short = 0
        self.updates = 0
        self.broadcasts = 0
        self._rollout: list[EpisodeRecord] = []
        self._file: Any = None
        self._writer: Any = None
        self.names: tuple[str, ...] = ()
        self._steps: list[list[np.ndarray]] = []
        self._last_raw: np.ndarray | None = None
        self._normalizer: Any = None

    def count_logged(self) -> None:
        """Start the counts from the episodes already in ``episodes_csv`` (a resumed run
        reports totals over the whole run)."""
        if self.episodes_csv is None or not self.episodes_csv.is_file():
            return
        with open(self.episodes_csv, newline="") as fh:
            for row in csv.DictReader(fh):
                self.episodes += 1
                self.unstable += row.get("unstable") == "1"
                self.very_short += int(row.get("length") or 0) <= 2

    def _on_training_start(self) -> None:
        self.names = tuple(self.training_env.get_attr("param_names")[0])
        self.strategy.attach(self.model, self.training_env)
        if self.strategy.wants_transitions:
            self._normalizer = unwrap_vec_normalize(self.training_env)  # found once, read every step
            self._steps = [[] for _ in range(self.training_env.num_envs)]
            self._last_raw = self._raw_obs(self.model._last_obs)

    def _raw_obs(self, fallback: np.ndarray) -> np.ndarray:
        """The observations of the last step before any ``VecNormalize`` (as the env made them)."""
        raw = fallback if self._normalizer is None else self._normalizer.get_original_obs()
        return np.asarray(raw, dtype=np.float32).copy()

    def _record_transitions(self, dones: np.ndarray) -> None:
        new = self._raw_obs(self.locals["new_obs"])
        actions = self.locals.get("clipped_actions", self.locals.get("actions"))
        actions = np.asarray(actions, dtype=np.float32).reshape(len(new), -1)
        rows = np.concatenate([self._last_raw.reshape(len(new), -1), actions, new.reshape(len(new), -1)], axis=1)
        for i in np.flatnonzero(~np.asarray(dones, dtype=bool)):
            self._steps[i].append(rows[i])
        self._last_raw = new

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if self.strategy.wants_transitions and dones is not None:
            self._record_transitions(dones)
        if dones is None or not np.any(dones):
            return True
        infos = self.locals.get("infos", ())
        for i in np.flatnonzero(dones):
            info = infos[i]
            sample, episode = info.get("dr_episode"), info.get("episode")
            transitions = None
            if self.strategy.wants_transitions:
                steps, self._steps[i] = self._steps[i], []
                transitions = np.stack(steps) if steps else None
            if sample is None or episode is None:
                continue
            truncated = bool(info.get("TimeLimit.truncated", False))
            unstable = "instability" in info
            ret = float(episode["r"])
            record = EpisodeRecord(
                env=int(i), vector=sample.vector, names=self.names, tag=sample.tag, ret=ret, length=int(episode["l"]),
                success=episode_success(self.success_return, ret, not truncated, truncated, unstable),
                unstable=unstable, pinned=bool(sample.pinned), timesteps=int(self.num_timesteps),
                transitions=transitions,
            )
            self._rollout.append(record)
            self.episodes += 1
            self.unstable += unstable
            self.truncated += truncated
            self.very_short += record.length <= 2
            if self.episodes_csv is not None:
                self._write(record)
        return True

    def _write(self, r: EpisodeRecord) -> None:
        if self._writer is None:
            new = not self.episodes_csv.exists() or self.episodes_csv.stat().st_size == 0
            self.episodes_csv.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.episodes_csv, "a", newline="")
            columns = ["timesteps", "env", "return", "length", "success", "unstable", "tag", *self.names]
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(columns)
        tag = "" if r.tag is None else json.dumps(r.tag)
        self._writer.writerow([r.timesteps, r.env, round(r.ret, 4), r.length, int(r.success), int(r.unstable), tag,
                               *r.vector.tolist()])

    def _on_rollout_end(self) -> None:
        records, self._rollout = self._rollout, []
        if self._file is not None:
            self._file.flush()
        self.strategy.timesteps = max(self.strategy.timesteps, int(self.num_timesteps))
        if records:
            self.updates += 1
            if self.strategy.update(records):
                self.strategy.broadcast(self.training_env)
                self.broadcasts += 1
            vectors = np.stack([r.vector for r in records])
            for name, mean in zip(self.names, vectors.mean(axis=0).tolist()):
                self.logger.record(f"dr/{name}", mean)
            self.logger.record("dr/success_rate", float(np.mean([r.success for r in records])))
        entropy = self.strategy.distribution.entropy()
        if math.isfinite(entropy):
            self.logger.record("dr/entropy", entropy)
        self.logger.record("dr/unstable_episodes", self.unstable)
        self.logger.record("dr/episodes", self.episodes)
        for key, value in self.strategy.log_values().items():
            if not (isinstance(value, float) and math.isnan(value)):
                self.logger.record(key, value)

    def _on_training_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
