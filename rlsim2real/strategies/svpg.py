"""Stein variational policy gradient (Liu et al. 2017) over particles that walk a box.

Each particle is a small Gaussian policy that, from its current position ``x`` in the
normalized box ``[0, 1]^d``, proposes a step of at most ``max_step`` per dimension; the new
position (clipped to the box) is the particle's proposal for one round. After ``horizon``
rounds each particle has a short trajectory of (position, step, reward); its policy
gradient is REINFORCE with a learned baseline (a critic per particle, fitted to the particle's
recent returns: with one proposal per round, a baseline fitted to one sample is too noisy to
climb anything), and the particles are
moved together by the SVPG direction

    phi_i = 1/n * sum_j [ k(theta_j, theta_i) * g_j  +  alpha * grad_{theta_j} k(theta_j, theta_i) ]

with ``g_j`` particle ``j``'s policy gradient, ``k`` an RBF kernel over the flattened actor
parameters with the median-heuristic bandwidth, and ``alpha`` the temperature: the first
term shares gradients between nearby particles, the second pushes them apart. With one
particle and ``alpha = 0`` it is a plain policy gradient. Each particle applies its ``phi``
with its own Adam optimizer.

Example (one particle climbing ``-|x - 0.8|^2`` in one dimension):
    >>> import numpy as np
    >>> svpg = SVPG(dim=1, particles=1, temperature=0.0, max_step=0.1, seed=0)
    >>> rewards = []
    >>> for _ in range(300):
    ...     x = svpg.propose()
    ...     rewards.append(-((x - 0.8) ** 2).sum())
    ...     _ = svpg.observe(-((x - 0.8) ** 2).sum(axis=1))
    >>> bool(np.mean(rewards[-100:]) > np.mean(rewards[:50]))
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch as th
from torch import nn
from torch.nn.utils import parameters_to_vector


class Particle(nn.Module):
    """A particle's actor (step mean in [-1, 1]^d and a learned log std) and critic."""

    def __init__(self, dim: int, hidden: int, log_std: float = -0.5) -> None:
        super().__init__()
        self.actor = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, dim), nn.Tanh())
        self.log_std = nn.Parameter(th.full((dim,), float(log_std)))
        self.critic = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def actor_parameters(self) -> list[nn.Parameter]:
        return [*self.actor.parameters(), self.log_std]

    def distribution(self, x: th.Tensor) -> th.distributions.Normal:
        return th.distributions.Normal(self.actor(x), self.log_std.exp().expand(x.shape[0], -1))


def rbf_kernel(theta: th.Tensor) -> tuple[th.Tensor, th.Tensor, float]:
    """RBF kernel over rows of ``theta`` (n, p) with the median-heuristic bandwidth.

    Returns:
        ``K`` (n, n) with ``K[j, i] = k(theta_j, theta_i)``; the repulsive term
        ``R[i] = sum_j grad_{theta_j} k(theta_j, theta_i)`` (n, p); and the bandwidth ``h``
        (``k = exp(-|theta_j - theta_i|^2 / h)``, ``h = median^2 / log(n + 1)``).
    """
    n = theta.shape[0]
    sq = th.cdist(theta, theta).pow(2)
    if n > 1:
        off = sq[~th.eye(n, dtype=th.bool)]
        med = float(off.median())
        h = med / math.log(n + 1) if med > 0 else 1.0
    else:
        h = 1.0
    K = th.exp(-sq / h)
    # grad_{theta_j} k(theta_j, theta_i) = -2/h (theta_j - theta_i) k_ji; summed over j it
    # points from the other particles towards theta_i: away from them.
    R = (2.0 / h) * (K.sum(dim=0)[:, None] * theta - K.T @ theta)
    return K, R, h


class SVPG:
    """A population of particles searching the box ``[0, 1]^dim`` with SVPG.

    Args:
        dim: Dimensions of the box.
        particles: Number of particles (``>= 1``).
        temperature: ``alpha >= 0``, the weight of the kernel's repulsive term.
        max_step: Largest step per dimension and round, in ``(0, 1]``.
        horizon: Rounds per update (the REINFORCE trajectory length).
        gamma: Discount of rewards within a horizon.
        lr: Adam learning rate of the actors.
        critic_lr: Adam learning rate of the critics.
        critic_window: Each critic fits its particle's last ``critic_window`` (position, return) pairs ...
        critic_steps: ... with this many Adam steps per update.
        hidden: Width of the particles' hidden layers.
        reset_every: Rounds after which every position is drawn afresh, uniformly in the
            box (0: never; positions then only move by the particles' steps).
        seed: Seeds the networks, the initial positions and the steps.
    """

    def __init__(
        self, dim: int, particles: int = 10, temperature: float = 10.0, max_step: float = 0.05, horizon: int = 1,
        gamma: float = 0.99, lr: float = 3e-4, hidden: int = 64, reset_every: int = 0, seed: int = 0,
        critic_lr: float = 1e-2, critic_window: int = 32, critic_steps: int = 3,
    ) -> None:
        if particles < 1:
            raise ValueError(f"SVPG: particles must be >= 1, got {particles}")
        if not 0.0 < max_step <= 1.0:
            raise ValueError(f"SVPG: max_step must lie in (0, 1], got {max_step}")
        if temperature < 0:
            raise ValueError(f"SVPG: temperature must be >= 0, got {temperature}")
        self.dim, self.n = int(dim), int(particles)
        self.temperature, self.max_step = float(temperature), float(max_step)
        self.horizon, self.gamma, self.reset_every = int(horizon), float(gamma), int(reset_every)
        self.generator = th.Generator().manual_seed(int(seed))
        self.rng = np.random.default_rng([int(seed), 0x5F6])
        with th.random.fork_rng(devices=[]):
            th.manual_seed(int(seed))
            self.particles = [Particle(self.dim, int(hidden)) for _ in range(self.n)]
        self.actor_optimizers = [th.optim.Adam(p.actor_parameters(), lr=lr) for p in self.particles]
        self.critic_optimizers = [th.optim.Adam(p.critic.parameters(), lr=critic_lr) for p in self.particles]
        self.critic_window, self.critic_steps = int(critic_window), int(critic_steps)
        self._replay: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros((0, self.dim)), np.zeros(0)) for _ in range(self.n)]
        self.positions = self.rng.random((self.n, self.dim))
        self.rounds = 0
        self.updates = 0
        # The trajectory of the current horizon: positions before each step, the raw
        # (unclipped) Gaussian steps, rewards (NaN: none came back for that particle).
        self._states: list[np.ndarray] = []
        self._steps: list[np.ndarray] = []
        self._rewards: list[np.ndarray] = []
        self._pending: np.ndarray | None = None
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------ proposals
    def propose(self) -> np.ndarray:
        """Each particle's next position, shape (particles, dim), in [0, 1]; call
        :meth:`observe` with their rewards before proposing again."""
        if self._pending is not None:
            raise RuntimeError("SVPG.propose: the previous proposals have no rewards yet; call observe first")
        x = th.as_tensor(self.positions, dtype=th.float32)
        with th.no_grad():
            raw = th.stack([
                p.distribution(x[i : i + 1]).mean[0] + p.log_std.exp() * th.randn(self.dim, generator=self.generator)
                for i, p in enumerate(self.particles)
            ])
        raw_np = raw.numpy().astype(np.float64)
        self._states.append(self.positions.copy())
        self._steps.append(raw_np)
        self._pending = np.clip(self.positions + self.max_step * np.clip(raw_np, -1.0, 1.0), 0.0, 1.0)
        return self._pending.copy()

    def observe(self, rewards: np.ndarray) -> bool:
        """The rewards of the last proposals (NaN where a particle got none); the particles
        move there. Every ``horizon`` rounds the particles are updated.

        Returns:
            Whether an update happened.
        """
        if self._pending is None:
            raise RuntimeError("SVPG.observe: nothing proposed")
        rewards = np.asarray(rewards, dtype=np.float64).reshape(self.n)
        self._rewards.append(rewards)
        self.positions = self._pending
        self._pending = None
        self.rounds += 1
        updated = False
        if len(self._rewards) >= self.horizon:
            self._update()
            updated = True
        if self.reset_every and self.rounds % self.reset_every == 0:
            self.positions = self.rng.random((self.n, self.dim))
        return updated

    # ------------------------------------------------------------------ the update
    def _returns(self) -> np.ndarray:
        rewards = np.stack(self._rewards)  # (T, n)
        out = np.zeros_like(rewards)
        running = np.zeros(self.n)
        for t in range(rewards.shape[0] - 1, -1, -1):
            running = np.nan_to_num(rewards[t]) + self.gamma * running
            out[t] = running
        return out

    def policy_gradients(self) -> tuple[th.Tensor, np.ndarray]:
        """Each particle's REINFORCE gradient (ascent direction) over the current horizon,
        flattened, shape (particles, n_actor_params); also trains the critics (the baseline).

        Returns the gradients and a mask of the particles that had rewards.
        """
        states = th.as_tensor(np.stack(self._states), dtype=th.float32)  # (T, n, d)
        steps = th.as_tensor(np.stack(self._steps), dtype=th.float32)
        returns = th.as_tensor(self._returns(), dtype=th.float32)  # (T, n)
        seen = ~np.isnan(np.stack(self._rewards))  # (T, n)
        seen_t = th.as_tensor(seen)
        with th.no_grad():
            values = th.stack([p.critic(states[:, i]).squeeze(-1) for i, p in enumerate(self.particles)], dim=1)
            advantages = returns - values
            # On one scale across the particles (the baseline already took the mean out), so
            # that the temperature weighs the kernel's repulsion against gradients of a known
            # size whatever the reward's units.
            if int(seen_t.sum()) >= 2:
                scale = advantages[seen_t].std()
                if scale > 1e-8:
                    advantages = advantages / scale
        grads, has = [], np.zeros(self.n, dtype=bool)
        for i, p in enumerate(self.particles):
            keep = seen_t[:, i]
            has[i] = bool(keep.any())
            params = p.actor_parameters()
            if not has[i]:
                grads.append(th.zeros(sum(q.numel() for q in params)))
                continue
            s, a, ret = states[keep, i], steps[keep, i], returns[keep, i]
            objective = (p.distribution(s).log_prob(a).sum(-1) * advantages[keep, i]).mean()
            g = th.autograd.grad(objective, params)
            grads.append(th.cat([x.reshape(-1) for x in g]))
            self._fit_critic(i, s.numpy(), ret.numpy())
        return th.stack(grads), has

    def _fit_critic(self, i: int, states: np.ndarray, returns: np.ndarray) -> None:
        """A few Adam steps of particle ``i``'s critic on its recent (position, return) pairs."""
        old_s, old_r = self._replay[i]
        s = np.concatenate([old_s, states])[-self.critic_window :]
        r = np.concatenate([old_r, returns])[-self.critic_window :]
        self._replay[i] = (s, r)
        critic, opt = self.particles[i].critic, self.critic_optimizers[i]
        s_t, r_t = th.as_tensor(s, dtype=th.float32), th.as_tensor(r, dtype=th.float32)
        for _ in range(self.critic_steps):
            loss = (critic(s_t).squeeze(-1) - r_t).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def flat_parameters(self) -> th.Tensor:
        """The actors' parameters, one row per particle."""
        return th.stack([parameters_to_vector(p.actor_parameters()).detach() for p in self.particles])

    def _update(self) -> None:
        grads, has = self.policy_gradients()
        theta = self.flat_parameters()
        K, R, h = rbf_kernel(theta)
        phi = (K.T @ grads + self.temperature * R) / self.n
        for i, p in enumerate(self.particles):
            opt = self.actor_optimizers[i]
            opt.zero_grad()
            offset = 0
            for q in p.actor_parameters():
                q.grad = -phi[i, offset : offset + q.numel()].view_as(q).clone()  # Adam descends
                offset += q.numel()
            opt.step()
        self.updates += 1
        self.last = {"bandwidth": float(h), "grad_norm": float(grads.norm(dim=1).mean()),
                     "repulsion_norm": float(R.norm(dim=1).mean()), "particles_updated": float(has.sum())}
        self._states, self._steps, self._rewards = [], [], []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly: networks, optimizers, generators, positions and
        the trajectory of the current horizon."""
        return {
            "particles": [p.state_dict() for p in self.particles],
            "actor_optimizers": [o.state_dict() for o in self.actor_optimizers],
            "critic_optimizers": [o.state_dict() for o in self.critic_optimizers],
            "generator": self.generator.get_state(),
            "rng": self.rng.bit_generator.state,
            "positions": self.positions.copy(),
            "rounds": self.rounds,
            "updates": self.updates,
            "trajectory": ([s.copy() for s in self._states], [s.copy() for s in self._steps],
                           [r.copy() for r in self._rewards]),
            "pending": None if self._pending is None else self._pending.copy(),
            "replay": [(a.copy(), b.copy()) for a, b in self._replay],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["particles"]) != self.n:
            raise ValueError(f"SVPG state holds {len(state['particles'])} particles, not {self.n}")
        for p, s in zip(self.particles, state["particles"]):
            p.load_state_dict(s)
        for o, s in zip(self.actor_optimizers, state["actor_optimizers"]):
            o.load_state_dict(s)
        for o, s in zip(self.critic_optimizers, state["critic_optimizers"]):
            o.load_state_dict(s)
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
        self.positions = np.array(state["positions"], dtype=np.float64)
        self.rounds, self.updates = int(state["rounds"]), int(state["updates"])
        states, steps, rewards = state["trajectory"]
        self._states = [np.array(s) for s in states]
        self._steps = [np.array(s) for s in steps]
        self._rewards = [np.array(r) for r in rewards]
        self._pending = None if state["pending"] is None else np.array(state["pending"])
        self._replay = [(np.array(a), np.array(b)) for a, b in state["replay"]]
