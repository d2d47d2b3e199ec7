"""Active domain randomization (Mehta et al. 2019, "Active Domain Randomization").

Uniform DR spends most episodes on easy, uninformative settings. Active DR searches for the
settings where the current policy behaves most differently from a reference simulator and
trains there:

* **Particles.** ``particles`` SVPG particles (:mod:`~rlsim2real.strategies.svpg`) walk the
  normalized box ``[0, 1]^d`` of the searched parameters (their training ``range``, or their
  ``limits`` with ``box = "limits"``) by steps of at most ``max_step``. Each round every
  particle proposes one position, i.e. one parameter vector.
* **Assignment.** Every worker of the training env serves its own particles (worker ``j``
  runs particle ``j mod particles`` when there are at least as many workers as particles,
  else a share of them in turn); each episode's tag says which particle and round it ran on.
  Parameters that are not searched are drawn from their training box as in uniform DR.
* **Reference.** When every particle has at least ``min_episodes`` finished episodes of the
  round (or ``max_round_rollouts`` rollouts have passed), the same policy runs
  ``reference_episodes`` episodes on the reference env (``"nominal"`` or a real set of the
  spec). Those steps are counted apart (``active/reference_steps``) and never trained on.
* **Discriminator.** An MLP on ``(s, a, s')`` transitions (raw observations, standardized with
  running statistics) learns to tell randomized (label 1) from reference (label 0)
  transitions by binary cross-entropy, with its own Adam optimizer. A particle's reward is
  the mean ``log D`` over the transitions of its round's episodes, taken before the
  discriminator trains on them: high where the randomized env is easy to tell apart.
* **SVPG.** Every ``horizon`` rounds the particles take a Stein variational policy gradient
  step (RBF kernel, median bandwidth, temperature ``alpha``); the agent itself trains on the
  randomized rollouts through its usual PPO update.

``logs/progress.csv`` gets ``active/disc_accuracy``, ``active/disc_loss``,
``active/reward_<i>`` per particle, ``active/<name>_mean`` and ``active/<name>_std`` over the
particles, and ``active/reference_steps``; the run directory gets ``particles.png``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from torch import nn

from rlsim2real.distributions import ParticleDistribution
from rlsim2real.params import SpecError
from rlsim2real.strategies.base import EpisodeRecord, Strategy, StrategySettings
from rlsim2real.strategies.svpg import SVPG

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

    from rlsim2real.specs import EnvSpec

BOXES = ("range", "limits")


@dataclass(frozen=True)
class ActiveSettings(StrategySettings):
    """The ``[strategy]`` table of ``name = "active"``.

    Attributes:
        params: Training parameters the particles search (default: all of them); the others
            are drawn from their training box.
        box: ``"range"`` (the particles search the training box, the paper's setting) or
            ``"limits"`` (each searched parameter's limits).
        particles: Number of SVPG particles.
        max_step: Largest step of a particle per round and dimension, as a fraction of the box.
        horizon: Rounds per SVPG update (one proposal per particle and round).
        temperature: SVPG's ``alpha``: weight of the kernel's repulsive term (0: none).
        svpg_gamma: Discount of particle rewards within a horizon.
        particle_lr: Adam learning rate of the particles' policies.
        particle_hidden: Width of the particles' hidden layers.
        reset_every: Rounds after which the particles restart from fresh uniform positions
            (0: never).
        min_episodes: Finished episodes each particle needs before a round ends.
        max_round_rollouts: A round ends after this many rollouts even if some particle has
            no finished episode yet (that particle gets no update this round).
        reference: The reference env: ``"nominal"`` or a real set of the env spec.
        reference_episodes: Reference episodes per round.
        discriminator_hidden: Width of the discriminator's two hidden layers.
        discriminator_lr: Adam learning rate of the discriminator.
        discriminator_batch_size: Transitions per discriminator step (half of each kind).
        discriminator_updates: Discriminator steps per round.
    """

    params: tuple[str, ...] = ()
    box: str = "range"
    particles: int = 10
    max_step: float = 0.05
    horizon: int = 1
    temperature: float = 10.0
    svpg_gamma: float = 0.99
    particle_lr: float = 3e-4
    particle_hidden: int = 64
    reset_every: int = 25
    min_episodes: int = 1
    max_round_rollouts: int = 4
    reference: str = "nominal"
    reference_episodes: int = 2
    discriminator_hidden: int = 128
    discriminator_lr: float = 3e-4
    discriminator_batch_size: int = 128
    discriminator_updates: int = 20

    def validate(self, where: str, env: "EnvSpec") -> None:
        need = functools.partial(self.require, where)
        need(self.particles >= 1, "particles", "an integer >= 1")
        need(0.0 < self.max_step <= 1.0, "max_step", "a fraction of the box in (0, 1]")
        need(self.horizon >= 1, "horizon", "an integer >= 1")
        need(self.temperature >= 0.0, "temperature", "a number >= 0")
        need(0.0 <= self.svpg_gamma <= 1.0, "svpg_gamma", "a discount in [0, 1]")
        need(self.particle_lr > 0.0, "particle_lr", "a learning rate > 0")
        need(self.particle_hidden >= 1, "particle_hidden", "an integer >= 1")
        need(self.reset_every >= 0, "reset_every", "an integer >= 0 (0: never)")
        need(self.min_episodes >= 1, "min_episodes", "an integer >= 1")
        need(self.max_round_rollouts >= 1, "max_round_rollouts", "an integer >= 1")
        need(self.reference_episodes >= 1, "reference_episodes", "an integer >= 1")
        need(self.discriminator_hidden >= 1, "discriminator_hidden", "an integer >= 1")
        need(self.discriminator_lr > 0.0, "discriminator_lr", "a learning rate > 0")
        need(self.discriminator_batch_size >= 2, "discriminator_batch_size", "an integer >= 2")
        need(self.discriminator_updates >= 1, "discriminator_updates", "an integer >= 1")
        need(self.box in BOXES, "box", f"one of {', '.join(BOXES)}")
        sets = ("nominal", *env.real_sets)
        need(self.reference in sets, "reference", f"'nominal' or a real set of {env.source} ({', '.join(sets)})")
        if getattr(env, "pixels", None) is not None:
            raise SpecError(f"{where}.name: active DR's discriminator reads (s, a, s') state transitions; "
                            f"{env.source} observes pixels (use uniform or automatic DR there)")
        training = env.params.names
        if not training:
            raise SpecError(f"{where}.params: {env.source} has no training parameters for the particles to search")
        for name in self.params:
            if name not in training:
                raise SpecError(f"{where}.params: {name!r} is not a training parameter of {env.source}; "
                                f"expected one of {', '.join(training)}")
        if self.box == "limits":
            for name in searched_names(self, env):
                if env.params[name].limits is None:
                    raise SpecError(f"{where}.box: parameter {name!r} has no limits in {env.source}; "
                                    f"box = \"limits\" needs them")


def searched_names(settings: ActiveSettings, env: "EnvSpec") -> tuple[str, ...]:
    """The parameters the particles set, in the spec's order."""
    names = env.params.names
    return tuple(n for n in names if n in settings.params) if settings.params else tuple(names)


class TransitionDiscriminator(nn.Module):
    """Tells randomized (1) from reference (0) transitions ``[s, a, s']``.

    Inputs are standardized with running statistics of every transition it has seen.

    Args:
        width: Length of a transition row.
        hidden: Width of the two hidden layers.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))
        self.register_buffer("count", th.zeros((), dtype=th.float64))
        self.register_buffer("mean", th.zeros(width, dtype=th.float64))
        self.register_buffer("m2", th.zeros(width, dtype=th.float64))

    def observe(self, rows: np.ndarray) -> None:
        """Fold ``rows`` into the running mean and variance (Chan et al.'s parallel update)."""
        x = th.as_tensor(rows, dtype=th.float64)
        n, mean = x.shape[0], x.mean(dim=0)
        if n == 0:
            return
        delta = mean - self.mean
        total = self.count + n
        self.m2 += ((x - mean) ** 2).sum(dim=0) + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count.copy_(total)

    def logits(self, rows: th.Tensor | np.ndarray) -> th.Tensor:
        x = th.as_tensor(rows, dtype=th.float64)
        std = (self.m2 / self.count.clamp(min=1.0)).sqrt().clamp(min=1e-6)
        z = ((x - self.mean) / std).clamp(-10.0, 10.0).float()
        return self.net(z).squeeze(-1)

    def reward(self, rows: np.ndarray) -> float:
        """Mean ``log D`` over ``rows`` (D: probability of "randomized")."""
        with th.no_grad():
            return float(nn.functional.logsigmoid(self.logits(rows)).mean())

    def fit(
        self, randomized: np.ndarray, reference: np.ndarray, optimizer: th.optim.Optimizer, updates: int,
        batch_size: int, rng: np.random.Generator,
    ) -> tuple[float, float]:
        """``updates`` balanced minibatch steps of binary cross-entropy.

        Returns:
            Mean loss, and accuracy over both sets (before the steps, on everything given):
            how well the discriminator told them apart when the round's rewards were taken.
        """
        with th.no_grad():
            accuracy = 0.5 * (float((self.logits(randomized) > 0).float().mean())
                              + float((self.logits(reference) <= 0).float().mean()))
        half = max(1, batch_size // 2)
        target = th.cat([th.ones(half), th.zeros(half)])
        losses = []
        for _ in range(int(updates)):
            rows = np.concatenate([randomized[rng.integers(len(randomized), size=half)],
                                   reference[rng.integers(len(reference), size=half)]])
            loss = nn.functional.binary_cross_entropy_with_logits(self.logits(rows), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses)), accuracy


def transitions_of(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Rows ``[s, a, s']`` of one recorded episode (its last observation has no successor)."""
    obs = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
    actions = np.asarray(actions, dtype=np.float32).reshape(len(actions), -1)
    return np.concatenate([obs[:-1], actions[:-1], obs[1:]], axis=1)


class ActiveStrategy(Strategy):
    """Active DR: SVPG particles propose where the policy trains, rewarded by a discriminator.

    Args:
        env: The env spec the training workers run (training box, real sets, horizon).
        settings: The ``[strategy]`` settings.
        seed: Seeds the particles, the discriminator and the reference episodes.
    """

    name = "active"
    Settings = ActiveSettings
    wants_transitions = True

    def __init__(self, env: "EnvSpec", settings: ActiveSettings | None = None, seed: int = 0) -> None:
        settings = settings or ActiveSettings()
        settings.validate("strategy", env)
        self.env = env
        self.settings = settings
        self.seed = int(seed)
        self.searched = searched_names(settings, env)
        space = env.params
        self._at = [space.index(n) for n in self.searched]
        box = [space[n].limits if settings.box == "limits" else space[n].range for n in self.searched]
        self.box = np.array(box, dtype=np.float64).reshape(len(self.searched), 2)
        self.limits = np.array([space[n].limits if space[n].limits is not None else space[n].range
                                for n in self.searched], dtype=np.float64).reshape(len(self.searched), 2)
        self.svpg = SVPG(
            len(self.searched), settings.particles, settings.temperature, settings.max_step, settings.horizon,
            settings.svpg_gamma, settings.particle_lr, settings.particle_hidden, settings.reset_every, seed,
        )
        self.rng = np.random.default_rng([self.seed, 0xAD5])
        self.discriminator: TransitionDiscriminator | None = None  # built at the first round's end
        self.disc_optimizer: th.optim.Optimizer | None = None
        self.round = 0
        self.rollouts_in_round = 0
        self.episodes = np.zeros(settings.particles, dtype=np.int64)
        self._mine: list[list[np.ndarray]] = [[] for _ in range(settings.particles)]
        self._randomized: list[np.ndarray] = []
        self.reference_steps = 0
        self.reference_episodes = 0
        self.last: dict[str, float] = {}
        self.rewards = np.full(settings.particles, np.nan)
        self._reference: Any = None  # callable(round) -> transition rows, set by attach()
        self.positions = self.svpg.propose()
        self.history: list[tuple[int, list[list[float]]]] = [(0, self.values(self.positions).tolist())]
        super().__init__(self._build())

    # ------------------------------------------------------------------ distribution
    def values(self, positions: np.ndarray) -> np.ndarray:
        """Normalized positions (particles, d) in each parameter's own units."""
        lo, hi = self.box[:, 0], self.box[:, 1]
        return lo + np.asarray(positions) * (hi - lo)

    def _build(self) -> ParticleDistribution:
        return ParticleDistribution(self.env.params, self._at, self.values(self.positions), self.round)

    def shares(self, n_envs: int) -> list[list[int]]:
        """The particles each of ``n_envs`` workers serves."""
        n = self.settings.particles
        if n <= n_envs:
            return [[j % n] for j in range(n_envs)]
        return [[i for i in range(n) if i % n_envs == j] for j in range(n_envs)]

    def broadcast(self, venv: "VecEnv") -> None:
        """Send each worker the round's particles, drawing only from its own share."""
        for j, share in enumerate(self.shares(venv.num_envs)):
            venv.env_method("set_distribution", self.distribution.serving(share), indices=[j])

    # ------------------------------------------------------------------ reference rollouts
    def attach(self, model: Any, venv: "VecEnv") -> None:
        from stable_baselines3.common.vec_env import unwrap_vec_normalize

        self.set_reference(ReferenceRollouts(self.env, self.settings, model, unwrap_vec_normalize(venv), self.seed))

    def set_reference(self, source: Any) -> None:
        """Where reference transitions come from: ``source(round)`` returns rows ``[s, a, s']``
        (and may say in ``source.last_steps`` how many env steps that call took)."""
        self._reference = source

    # ------------------------------------------------------------------ the loop
    def update(self, records: Sequence[EpisodeRecord]) -> bool:
        for record in records:
            self.timesteps = max(self.timesteps, int(record.timesteps))
            rows = record.transitions
            if rows is None or not len(rows):
                continue
            self._randomized.append(rows)
            if isinstance(record.tag, tuple) and len(record.tag) == 2 and record.tag[1] == self.round:
                i = int(record.tag[0])
                self.episodes[i] += 1
                self._mine[i].append(rows)
        self.rollouts_in_round += 1
        ready = bool(np.all(self.episodes >= self.settings.min_episodes))
        if not (ready or self.rollouts_in_round >= self.settings.max_round_rollouts) or not self._randomized:
            return False
        if self._reference is None:
            raise RuntimeError("ActiveStrategy: no reference source; training attaches one (or call set_reference)")
        self._end_round()
        return True

    def _end_round(self) -> None:
        s = self.settings
        reference = self._reference(self.round)
        self.reference_steps += int(getattr(self._reference, "last_steps", len(reference)))
        self.reference_episodes += s.reference_episodes
        randomized = np.concatenate(self._randomized)
        if self.discriminator is None:
            with th.random.fork_rng(devices=[]):
                th.manual_seed(self.seed + 0xD15C)
                self.discriminator = TransitionDiscriminator(randomized.shape[1], s.discriminator_hidden)
            self.disc_optimizer = th.optim.Adam(self.discriminator.parameters(), lr=s.discriminator_lr)
        if randomized.shape[1] != reference.shape[1]:
            raise SpecError(f"active strategy: reference transitions have width {reference.shape[1]}, "
                            f"training transitions {randomized.shape[1]}; the reference env must match the training env")
        self.discriminator.observe(np.concatenate([randomized, reference]))
        self.rewards = np.array([self.discriminator.reward(np.concatenate(m)) if m else np.nan for m in self._mine])
        loss, accuracy = self.discriminator.fit(randomized, reference, self.disc_optimizer, s.discriminator_updates,
                                                s.discriminator_batch_size, self.rng)
        updated = self.svpg.observe(self.rewards)
        self.positions = self.svpg.propose()
        self.round += 1
        self.rollouts_in_round = 0
        self.episodes[:] = 0
        self._mine = [[] for _ in range(s.particles)]
        self._randomized = []
        self.distribution = self._build()
        self.history.append((self.timesteps, self.values(self.positions).tolist()))
        self.last = {"disc_loss": loss, "disc_accuracy": accuracy, "svpg_updated": float(updated),
                     "randomized_transitions": float(len(randomized)), "reference_transitions": float(len(reference))}

    # ------------------------------------------------------------------ logs
    def log_values(self) -> dict[str, float]:
        out = {f"active/{k}": v for k, v in self.last.items()}
        for i, r in enumerate(self.rewards):
            out[f"active/reward_{i}"] = float(r)
        values = self.values(self.positions)
        for k, name in enumerate(self.searched):
            out[f"active/{name}_mean"] = float(values[:, k].mean())
            out[f"active/{name}_std"] = float(values[:, k].std())
        out["active/reference_steps"] = float(self.reference_steps)
        out["active/reference_episodes"] = float(self.reference_episodes)
        out["active/rounds"] = float(self.round)
        out["active/svpg_updates"] = float(self.svpg.updates)
        for k, v in self.svpg.last.items():
            out[f"active/svpg_{k}"] = v
        return out

    def summary(self) -> dict[str, Any]:
        values = self.values(self.positions)
        return {
            **super().summary(),
            "settings": self.settings.to_dict(),
            "searched": list(self.searched),
            "box": {n: list(map(float, b)) for n, b in zip(self.searched, self.box)},
            "particles": {n: values[:, k].tolist() for k, n in enumerate(self.searched)},
            "rewards": [None if np.isnan(r) else float(r) for r in self.rewards],
            "rounds": self.round,
            "svpg_updates": self.svpg.updates,
            "reference": self.settings.reference,
            "reference_steps": self.reference_steps,
            "reference_episodes": self.reference_episodes,
            "timesteps": self.timesteps,
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "searched": self.searched,
            "svpg": self.svpg.state_dict(),
            "discriminator": None if self.discriminator is None else self.discriminator.state_dict(),
            "disc_optimizer": None if self.disc_optimizer is None else self.disc_optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "round": self.round,
            "rollouts_in_round": self.rollouts_in_round,
            "episodes": self.episodes.copy(),
            "mine": [[r.copy() for r in m] for m in self._mine],
            "randomized": [r.copy() for r in self._randomized],
            "reference_steps": self.reference_steps,
            "reference_episodes": self.reference_episodes,
            "rewards": self.rewards.copy(),
            "last": dict(self.last),
            "positions": self.positions.copy(),
            "history": [(t, [list(v) for v in values]) for t, values in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if tuple(state.get("searched", ())) != self.searched:
            raise SpecError(f"checkpoint searches {', '.join(state.get('searched', ()))}, not {', '.join(self.searched)}")
        self.svpg.load_state_dict(state["svpg"])
        if state["discriminator"] is not None:
            width = state["discriminator"]["mean"].shape[0]
            self.discriminator = TransitionDiscriminator(width, self.settings.discriminator_hidden)
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer = th.optim.Adam(self.discriminator.parameters(), lr=self.settings.discriminator_lr)
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.round, self.rollouts_in_round = int(state["round"]), int(state["rollouts_in_round"])
        self.episodes = np.array(state["episodes"], dtype=np.int64)
        self._mine = [[np.array(r) for r in m] for m in state["mine"]]
        self._randomized = [np.array(r) for r in state["randomized"]]
        self.reference_steps, self.reference_episodes = int(state["reference_steps"]), int(state["reference_episodes"])
        self.rewards = np.array(state["rewards"], dtype=np.float64)
        self.last = dict(state["last"])
        self.positions = np.array(state["positions"], dtype=np.float64)
        self.history = [(int(t), [list(v) for v in values]) for t, values in state["history"]]
        self.distribution = self._build()

    def save_figures(self, folder: Path) -> list[Path]:
        """``particles.png``: the particles over training in the two parameters whose proposals
        spread most, against their limits and the training box."""
        from rlsim2real.plots import plot_particles

        return [plot_particles(folder / "particles.png", self.searched, self.history, self.limits,
                               np.array([self.env.params[n].range for n in self.searched]))]


class ReferenceRollouts:
    """Episodes of the current policy on the reference env, as transition rows.

    Args:
        env: The env spec (its horizon; the reference set or ``"nominal"``).
        settings: The Active DR settings (reference set and episodes per round).
        model: The agent.
        normalizer: The training ``VecNormalize`` (or ``None``): the policy sees reference
            observations normalized exactly as training ones.
        seed: Base seed of the reference episodes (round ``r`` uses its own seeds).
    """

    def __init__(self, env: "EnvSpec", settings: ActiveSettings, model: Any, normalizer: Any, seed: int) -> None:
        self.env, self.settings, self.model, self.normalizer = env, settings, model, normalizer
        self.seed = int(seed) + 70_000
        self.last_steps = 0
        self._runner: Any = None

    def __call__(self, round: int) -> np.ndarray:
        from rlsim2real.episodes import EpisodeRunner, seeded_jobs
        from rlsim2real.evaluation import RunPolicy

        n = self.settings.reference_episodes
        if self._runner is None:
            self._runner = EpisodeRunner(self.env, batch=n)
        jobs = seeded_jobs(self.settings.reference, n, self.seed + round * n)
        results = self._runner.run(RunPolicy(self.model, self.normalizer), jobs, deterministic=False,
                                   record=("obs", "actions"))
        self.last_steps = sum(r.length for r in results)
        rows = [transitions_of(r.obs, r.actions) for r in results if r.length > 1]
        if not rows:
            raise SpecError(f"active strategy: every reference episode on {self.settings.reference!r} ended after one "
                            f"step; the discriminator needs transitions")
        return np.concatenate(rows)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
