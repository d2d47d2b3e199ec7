"""The one episode runner: run a policy on chosen parameter configurations, in lockstep.

Evaluation, DANN target collection, :func:`~rlsim2real.trajectories.collect_trajectories`
and strategies that roll out parameter vectors of their choosing (Active DR, SimOpt) all
ask the same question: "run the policy on these K configurations and tell me what
happened". :class:`EpisodeRunner` answers it. It keeps up to ``batch`` envs, reuses them
from job to job (pinning each to the job's values before a seeded reset), steps every
active episode together so a policy runs one batched forward pass per step, and returns
one :class:`EpisodeResult` per :class:`EpisodeJob`, in job order. A job's result does not
depend on the batch size or on which other jobs share the run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from rlsim2real.factory import make_env
from rlsim2real.params import SpecError
from rlsim2real.specs import EnvSpec, load_env_spec
from rlsim2real.trajectories import Trajectories

RECORDABLE = ("obs", "actions", "rewards", "qpos", "qvel")

# Random actions draw from a stream derived from the job's seed, apart from the env's own.
_ACTION_SALT = 0xAC7


class _AsIs:
    """Type of :data:`AS_IS`."""

    def __repr__(self) -> str:
        return "AS_IS"


AS_IS = _AsIs()
"""Job values that leave the env's pinning as it is (how a user's own env is run)."""


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to run.

    Attributes:
        values: What the env runs on: a real set's name, ``"nominal"``, ``{param: value}``
            (parameters not named stay nominal), ``None`` to sample from the env's own
            randomization distribution, or :data:`AS_IS` to leave the env as configured.
        seed: Seeds the reset (and random actions when the policy is ``None``); ``None``
            leaves the episode unseeded.
    """

    values: str | Mapping[str, float] | _AsIs | None = "nominal"
    seed: int | None = None


def seeded_jobs(values: str | Mapping[str, float] | _AsIs | None, episodes: int, seed: int | None) -> list[EpisodeJob]:
    """``episodes`` jobs on ``values``; episode ``i`` is seeded ``seed + i`` (all unseeded for ``None``)."""
    return [EpisodeJob(values, None if seed is None else seed + i) for i in range(episodes)]


@dataclass
class EpisodeResult:
    """What happened in one episode.

    Attributes:
        episode_return: Undiscounted return.
        length: Steps taken.
        success: See :func:`episode_success`.
        unstable: The :class:`~rlsim2real.wrappers.PhysicsGuard` ended it
            (``"instability"`` in ``info``).
        terminated: Ended by the task (e.g. the pole fell).
        truncated: Ended by the time limit, the physics guard, or ``max_steps``.
        params: ``info["dr_params"]`` at reset: the values the episode ran on.
        obs: Observations before each action, shape (length, *obs_shape), if recorded.
        actions: Actions, shape (length, *action_shape), if recorded.
        rewards: Rewards, shape (length,), if recorded.
        qpos: ``env.unwrapped.data.qpos`` before each action, shape (length, nq), if
            recorded and the env is a MuJoCo env.
        qvel: Likewise ``qvel``, shape (length, nv).
    """

    episode_return: float
    length: int
    success: bool
    unstable: bool
    terminated: bool
    truncated: bool
    params: dict[str, float] = field(default_factory=dict)
    obs: np.ndarray | None = None
    actions: np.ndarray | None = None
    rewards: np.ndarray | None = None
    qpos: np.ndarray | None = None
    qvel: np.ndarray | None = None


def episode_success(
    success_return: float | None, episode_return: float, terminated: bool, truncated: bool, unstable: bool
) -> bool:
    """Whether an episode counts as a success.

    An unstable episode never does. With a ``success_return`` (the spec's
    ``evaluation.success_return``) success means reaching it; without one, surviving to the
    time limit (truncated, not terminated).

    Example:
        >>> episode_success(None, 12.0, terminated=False, truncated=True, unstable=False)
        True
        >>> episode_success(1000.0, 12.0, terminated=False, truncated=True, unstable=False)
        False
    """
    if unstable:
        return False
    if success_return is not None:
        return episode_return >= success_return
    return truncated and not terminated


def to_trajectories(results: Sequence[EpisodeResult]) -> Trajectories:
    """Recorded episodes back to back as :class:`~rlsim2real.trajectories.Trajectories`.

    ``qpos``/``qvel`` are kept when every episode has them.

    Raises:
        SpecError: if the results hold no ``obs``, ``actions`` or ``rewards`` (run with
            ``record=RECORDABLE``).
    """
    if not results:
        raise SpecError("to_trajectories: no episodes")
    missing = [k for k in ("obs", "actions", "rewards") if any(getattr(r, k) is None for r in results)]
    if missing:
        raise SpecError(f"to_trajectories: episodes without recorded {', '.join(missing)}; run with record={RECORDABLE}")

    def stack(name: str) -> np.ndarray | None:
        arrays = [getattr(r, name) for r in results]
        return None if any(a is None for a in arrays) else np.concatenate(arrays, axis=0)

    return Trajectories(
        obs=stack("obs"), actions=stack("actions"), rewards=stack("rewards"),
        lengths=np.array([r.length for r in results], dtype=np.int64),
        qpos=stack("qpos"), qvel=stack("qvel"), params=[dict(r.params) for r in results],
    )


class EpisodeRunner:
    """Runs episodes of a policy on chosen configurations, reusing its envs.

    Build it from an env spec (it makes up to ``batch`` randomized envs with
    :func:`~rlsim2real.factory.make_env`, once, when first needed) or from envs you built
    (:meth:`from_envs`). :meth:`run` pins each env to a job's values (``env.pin`` /
    ``env.unpin``), resets it with the job's seed, and steps every active episode
    together; a slot whose episode ends takes the next job. ``close()`` (or leaving a
    ``with`` block) closes the envs the runner built; envs handed to :meth:`from_envs`
    stay open.

    Args:
        spec: An :class:`EnvSpec`, a spec name or a path (optional with ``envs``: it
            resolves real set names and gives the success rule).
        batch: Most envs kept, and so most episodes stepped together. A wide batch spreads
            each forward pass of the policy over more episodes; each env costs a few
            milliseconds to build, once.
        envs: Envs to run instead of building any; ``batch`` is then their number.

    Example:
        >>> from rlsim2real.episodes import EpisodeJob, EpisodeRunner
        >>> jobs = [EpisodeJob("heavy_pole", seed=0), EpisodeJob({"pole_mass": 0.8}, seed=1),
        ...         EpisodeJob(None, seed=2)]
        >>> with EpisodeRunner("inverted_pendulum", batch=2) as runner:
        ...     results = runner.run(None, jobs, record=("obs", "qpos"))
        ...     built = len(runner.envs)
        >>> built, [r.params["pole_mass"] for r in results[:2]]
        (2, [2.0, 0.8])
        >>> results[0].obs.shape == (results[0].length, 4), results[0].qpos.shape[1]
        (True, 2)
    """

    def __init__(
        self,
        spec: EnvSpec | str | os.PathLike | None = None,
        batch: int = 128,
        envs: Sequence[gym.Env] | None = None,
    ) -> None:
        if envs is not None:
            if not envs:
                raise SpecError("EpisodeRunner: expected at least one env")
            batch = len(envs)
        elif spec is None:
            raise SpecError("EpisodeRunner: expected a spec to build envs from, or envs")
        if int(batch) < 1:
            raise SpecError(f"EpisodeRunner: batch must be >= 1, got {batch}")
        self.spec: EnvSpec | None = None if spec is None else load_env_spec(spec)
        self.batch = int(batch)
        self._owns_envs = envs is None
        self._envs: list[gym.Env] = [] if envs is None else list(envs)

    @classmethod
    def from_envs(cls, envs: Sequence[gym.Env], spec: EnvSpec | None = None) -> "EpisodeRunner":
        """A runner over envs you built; it never closes them.

        Args:
            envs: Gymnasium envs of one kind; ``batch`` is their number.
            spec: Resolves real set names and the success rule (optional).
        """
        return cls(spec, envs=envs)

    @property
    def envs(self) -> tuple[gym.Env, ...]:
        """The envs built (or given) so far."""
        return tuple(self._envs)

    @property
    def success_return(self) -> float | None:
        return None if self.spec is None else self.spec.success_return

    def close(self) -> None:
        """Close the envs this runner built (they are built again if it runs again)."""
        if self._owns_envs:
            for env in self._envs:
                env.close()
            self._envs = []

    def __enter__(self) -> "EpisodeRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- jobs ------------------------------------------------------------------------
    def _where(self) -> str:
        return self.spec.source if self.spec is not None else "EpisodeRunner"

    def _resolve(self, job: EpisodeJob, k: int, known: tuple[str, ...]) -> dict[str, float] | _AsIs | None:
        values = job.values
        if values is None or values is AS_IS:
            return values
        if isinstance(values, str):
            if values == "nominal" and (self.spec is None or "nominal" not in self.spec.real_sets):
                return {}
            if self.spec is None:
                raise SpecError(f"{self._where()}: job {k}: real set {values!r} needs a spec; build the runner from one")
            return self.spec.real_set(values)
        if not isinstance(values, Mapping):
            raise SpecError(
                f"{self._where()}: job {k}: values {values!r}; expected a real set name, 'nominal', "
                "{param: value}, None or AS_IS"
            )
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SpecError(
                f"{self._where()}: job {k}: unknown parameters {', '.join(unknown)}; known: {', '.join(known) or '(none)'}"
            )
        return {name: float(v) for name, v in values.items()}

    def _ensure_envs(self, n: int) -> list[gym.Env]:
        while self._owns_envs and len(self._envs) < min(n, self.batch):
            self._envs.append(make_env(self.spec))
        return self._envs[: min(n, len(self._envs))]

    def _prepare(self, jobs: Sequence[EpisodeJob]) -> tuple[list[gym.Env], list[Any]]:
        # Every job is resolved and every pinned value checked before any episode runs.
        if self.spec is not None:
            known = self.spec.all_params.names
        else:
            env = self._envs[0]
            known = tuple(env.get_wrapper_attr("all_param_names")) if env.has_wrapper_attr("all_param_names") else ()
        for k, job in enumerate(jobs):
            if not isinstance(job, EpisodeJob):
                raise SpecError(f"{self._where()}: job {k}: expected an EpisodeJob, got {job!r}")
        pins = [self._resolve(job, k, known) for k, job in enumerate(jobs)]
        as_is = sum(p is AS_IS for p in pins)
        if 0 < as_is < len(pins):
            raise SpecError(f"{self._where()}: AS_IS jobs cannot share a run with jobs that pin or sample values")
        envs = self._ensure_envs(len(jobs))
        if as_is:
            return envs, pins
        pin = _pin_of(envs[0])
        if pin is None:  # a plain env: nothing to pin, nominal and sampled jobs run it as it is
            if any(pins):
                raise SpecError(f"{self._where()}: these envs have no randomization wrappers to pin values on")
            return envs, pins
        # Pinning checks the values (an unphysical mass, a negative noise std); every job
        # pins again before its reset, so this leaves nothing behind.
        checked: set[tuple[tuple[str, float], ...]] = set()
        for k, values in enumerate(pins):
            if values is None or tuple(sorted(values.items())) in checked:
                continue
            checked.add(tuple(sorted(values.items())))
            try:
                pin(values)
            except SpecError as exc:
                raise SpecError(f"{self._where()}: job {k}: {exc}") from None
        return envs, pins

    # -- running ---------------------------------------------------------------------
    def run(
        self,
        policy: Any,
        jobs: Sequence[EpisodeJob],
        deterministic: bool = True,
        record: Iterable[str] = (),
        max_steps: int | None = None,
    ) -> list[EpisodeResult]:
        """Run one episode per job and return the results in job order.

        Args:
            policy: Anything with SB3's ``predict(obs, state, episode_start,
                deterministic)`` (called once per step on the whole batch, shape
                (n_slots, *obs_shape); ``episode_start`` is ``True`` at each episode's first
                step, which restarts a recurrent state); a callable ``obs -> action``
                (called per env); or ``None`` for uniform random actions, seeded from
                each job's seed.
            jobs: The episodes.
            deterministic: Passed to ``predict``.
            record: Any of :data:`RECORDABLE` to keep as arrays in the results.
            max_steps: Cut each episode after this many steps (it counts as truncated).

        Returns:
            One result per job, in job order.

        Raises:
            SpecError: on an unknown real set or parameter name, an unphysical value, or
                an unknown ``record`` name, before any episode runs.
        """
        record = tuple(record)
        bad = [name for name in record if name not in RECORDABLE]
        if bad:
            raise SpecError(f"EpisodeRunner.run: cannot record {', '.join(bad)}; expected any of {', '.join(RECORDABLE)}")
        if max_steps is not None and int(max_steps) < 1:
            raise SpecError(f"EpisodeRunner.run: max_steps must be >= 1, got {max_steps}")
        if policy is not None and not hasattr(policy, "predict") and not callable(policy):
            raise SpecError(f"EpisodeRunner.run: policy {policy!r}: expected None, a callable or an object with predict()")
        if not jobs:
            return []
        envs, pins = self._prepare(jobs)
        return _Lockstep(envs, jobs, pins, policy, deterministic, record, max_steps, self.success_return).run()


def _pin_of(env: gym.Env) -> Any:
    return env.get_wrapper_attr("pin") if env.has_wrapper_attr("pin") else None


def _action_seed(seed: int | None) -> int | None:
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _ACTION_SALT]).generate_state(1)[0])


class _Lockstep:
    """One :meth:`EpisodeRunner.run`: the slots, their jobs and what they recorded."""

    def __init__(
        self,
        envs: list[gym.Env],
        jobs: Sequence[EpisodeJob],
        pins: list[Any],
        policy: Any,
        deterministic: bool,
        record: tuple[str, ...],
        max_steps: int | None,
        success_return: float | None,
    ) -> None:
        self.envs, self.jobs, self.pins = envs, jobs, pins
        self.policy, self.deterministic, self.record = policy, deterministic, record
        self.max_steps = None if max_steps is None else int(max_steps)
        self.success_return = success_return
        n = len(envs)
        self.pin_fns = [_pin_of(env) for env in envs]
        self.unpin_fns = [env.get_wrapper_attr("unpin") if pin is not None else None for env, pin in zip(envs, self.pin_fns)]
        # Random actions come from a copy of each env's action space, so a user's env keeps
        # its own action-space generator untouched.
        self.spaces = [copy.deepcopy(env.action_space) for env in envs] if policy is None else []
        self.slot_job = [-1] * n
        self.returns = [0.0] * n
        self.lengths = [0] * n
        self.starts = np.zeros(n, dtype=bool)
        self.obs: np.ndarray | None = None
        self.params: list[dict[str, float]] = [{} for _ in jobs]
        self.rows: list[dict[str, list]] = [{} for _ in range(n)]
        self.data: list[Any] = [None] * n
        self.results: list[EpisodeResult | None] = [None] * len(jobs)
        self.next_job = 0
        self.state: Any = None  # the policy's recurrent state, one row per slot

    def start(self, slot: int) -> None:
        k = self.next_job
        self.next_job += 1
        job, values, env = self.jobs[k], self.pins[k], self.envs[slot]
        if values is None:
            if self.unpin_fns[slot] is not None:
                self.unpin_fns[slot]()
        elif values is not AS_IS and self.pin_fns[slot] is not None:
            self.pin_fns[slot](values)
        o, info = env.reset(seed=job.seed)
        if self.obs is None:
            self.obs = np.zeros((len(self.envs), *np.shape(o)), dtype=np.asarray(o).dtype)
        self.obs[slot] = o
        self.params[k] = dict(info.get("dr_params", {}))
        self.slot_job[slot] = k
        self.returns[slot], self.lengths[slot] = 0.0, 0
        self.starts[slot] = True
        if self.record:
            self.rows[slot] = {name: [] for name in self.record}
            # The env may rebuild its MjData on reset: look it up per episode.
            self.data[slot] = getattr(env.unwrapped, "data", None)
        if self.spaces:
            self.spaces[slot].seed(_action_seed(job.seed))

    def finish(self, slot: int, terminated: bool, truncated: bool, unstable: bool) -> None:
        k, ret = self.slot_job[slot], self.returns[slot]
        arrays: dict[str, np.ndarray | None] = {}
        for name, rows in self.rows[slot].items():
            arrays[name] = np.asarray(rows) if rows else None
        self.results[k] = EpisodeResult(
            episode_return=ret, length=self.lengths[slot],
            success=episode_success(self.success_return, ret, terminated, truncated, unstable),
            unstable=unstable, terminated=terminated, truncated=truncated, params=self.params[k], **arrays,
        )
        self.slot_job[slot] = -1

    def actions(self, active: list[int]) -> Any:
        policy = self.policy
        if policy is None:
            return {i: self.spaces[i].sample() for i in active}
        if hasattr(policy, "predict"):
            actions, self.state = policy.predict(
                self.obs, state=self.state, episode_start=self.starts.copy(), deterministic=self.deterministic
            )
            self.starts[:] = False
            return actions
        return {i: policy(self.obs[i]) for i in active}

    def run(self) -> list[EpisodeResult]:
        for slot in range(len(self.envs)):
            self.start(slot)
        rec = self.record
        rec_obs, rec_act, rec_rew = "obs" in rec, "actions" in rec, "rewards" in rec
        rec_qpos, rec_qvel = "qpos" in rec, "qvel" in rec
        active = list(range(len(self.envs)))
        while active:
            actions = self.actions(active)
            for i in active:
                action = actions[i]
                if rec:
                    rows, data = self.rows[i], self.data[i]
                    if rec_obs:
                        rows["obs"].append(self.obs[i].copy())
                    if rec_act:
                        rows["actions"].append(np.array(action, copy=True))
                    if data is not None:
                        if rec_qpos:
                            rows["qpos"].append(data.qpos.copy())
                        if rec_qvel:
                            rows["qvel"].append(data.qvel.copy())
                # ``step`` is looked up every time: a wrapper re-routes it after each reset.
                o, reward, terminated, truncated, info = self.envs[i].step(action)
                self.obs[i] = o
                self.returns[i] += float(reward)
                self.lengths[i] += 1
                if rec_rew:
                    self.rows[i]["rewards"].append(float(reward))
                cut = self.max_steps is not None and self.lengths[i] >= self.max_steps
                if terminated or truncated or cut:
                    self.finish(i, bool(terminated), bool(truncated or cut), "instability" in info)
                    if self.next_job < len(self.jobs):
                        self.start(i)
            active = [i for i in active if self.slot_job[i] >= 0]
        return self.results  # type: ignore[return-value]


def collect_trajectories(
    env: gym.Env,
    policy: Any = None,
    episodes: int = 1,
    seed: int | None = None,
    deterministic: bool = True,
    max_steps: int | None = None,
) -> Trajectories:
    """Roll out ``episodes`` episodes and record them as arrays.

    The episodes run through :class:`~rlsim2real.episodes.EpisodeRunner` on ``env`` as it
    is: a pinned env stays pinned, a randomizing one samples per episode.

    Args:
        env: Any Gymnasium env; ``qpos``/``qvel`` are recorded when ``env.unwrapped`` is a
            MuJoCo env.
        policy: ``None`` for uniform random actions; an SB3 model or
            :class:`~rlsim2real.evaluation.RunPolicy` (anything with
            ``predict(obs, state, episode_start, deterministic)``); or a callable
            ``obs -> action``.
        episodes: How many episodes.
        seed: Seeds the resets (episode i uses ``seed + i``) and the random actions.
        deterministic: Passed to ``predict``.
        max_steps: Cut each episode after this many steps.

    Returns:
        The episodes.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    # The env runs as its owner configured it (pinned, randomized or plain), and stays open.
    runner = EpisodeRunner.from_envs([env])
    results = runner.run(policy, seeded_jobs(AS_IS, episodes, seed), deterministic, RECORDABLE, max_steps)
    return to_trajectories(results)
