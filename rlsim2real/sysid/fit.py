"""Fit a Gaussian over the normalized parameters to real data with CMA-ES.

The search is over a diagonal Gaussian in the normalized box (each parameter mapped to
[0, 1] over its prior range, log scale for ``loguniform``), truncated to the Params'
``limits``: CMA-ES proposes ``(mean, log std)`` pairs, and every proposal is scored on the
same ``samples`` draws (common random numbers, so fixed seeds give the same fit). Two
objectives:

- ``"likelihood"`` (DROPO, Tiboni et al. 2023): the negative log-likelihood of the real
  observations under a diagonal Gaussian fitted to the simulated ones, per step;
- ``"discrepancy"`` (SimOpt, Chebotar et al. 2019): the expected
  :func:`~rlsim2real.sysid.discrepancy.discrepancy` over the candidate distribution. It is
  smallest for a point mass, so without a KL penalty the std shrinks to its floor.

Either may add ``kl_weight * KL(candidate || previous)`` to stay near a previous
distribution (SimOpt's trust region).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from rlsim2real.sysid.discrepancy import discrepancy

OBJECTIVES = ("likelihood", "discrepancy")


# Range of a fitted std in the normalized box: a floor keeps a fit from collapsing to a
# point, a ceiling (half the box) from spreading over all of it. Both fitters use it.
STD_BOUNDS = (1e-3, 0.5)


@dataclass(frozen=True)
class Gaussian:
    """A diagonal Gaussian over normalized parameters.

    Attributes:
        mean: Shape (n,).
        std: Shape (n,), positive.
    """

    mean: np.ndarray
    std: np.ndarray

    def kl(self, other: "Gaussian") -> float:
        """KL(self || other) of the untruncated Gaussians.

        >>> g = Gaussian(np.array([0.5]), np.array([0.1]))
        >>> g.kl(g)
        0.0
        >>> round(Gaussian(np.array([0.6]), np.array([0.1])).kl(g), 6)   # (0.1 / 0.1)^2 / 2
        0.5
        """
        var, ovar = self.std**2, other.std**2
        return float(0.5 * np.sum(np.log(ovar / var) + (var + (self.mean - other.mean) ** 2) / ovar - 1.0))

    def sample(self, unit: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Truncated draws by the inverse CDF of uniforms ``unit`` (M, n) -> (M, n) in [low, high]."""
        a = ndtr((low - self.mean) / self.std)
        b = ndtr((high - self.mean) / self.std)
        p = np.clip(a + unit * (b - a), 1e-12, 1 - 1e-12)
        return np.clip(self.mean + self.std * ndtri(p), low, high)


@dataclass(frozen=True)
class Windows:
    """Real data the simulator is compared with.

    Attributes:
        qpos: Start positions, shape (W, nq).
        qvel: Start velocities, shape (W, nv).
        target: Real observations after each simulated step, shape (W, k, obs_dim).
        mask: Which of those steps count, shape (W, k) (closed-loop episodes end early).
        actions: Real actions for replay, shape (W, k, nu), or ``None`` for closed loop.
        obs0: Real first observations for closed loop, shape (W, obs_dim), or ``None``.
    """

    qpos: np.ndarray
    qvel: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    actions: np.ndarray | None = None
    obs0: np.ndarray | None = None


class Objective:
    """Scores candidate distributions on real windows, a whole CMA-ES generation at once.

    Args:
        simulator: A :class:`~rlsim2real.sysid.simulate.BatchSimulator`.
        windows: The real data.
        to_values: Normalized vectors (m, n) -> values in the Params' units (m, n).
        low: Lower limits, normalized, shape (n,).
        high: Upper limits, normalized, shape (n,).
        scale: Per-dimension observation scale, shape (obs_dim,).
        kind: ``"likelihood"`` or ``"discrepancy"``.
        samples: Draws per candidate distribution.
        seed: Seeds the common draws.
        policy: The policy for closed-loop windows.
        previous: The distribution of the KL penalty, if any.
        kl_weight: Weight of the KL penalty.
        epsilon: Variance floor of the likelihood, in normalized observation units.
        smooth: Gaussian smoothing of the discrepancy, in steps.
        point: Score each candidate at its mean alone (a point fit: no draws, ``samples`` 1).
    """

    def __init__(
        self, simulator: Any, windows: Windows, to_values: Callable[[np.ndarray], np.ndarray],
        low: np.ndarray, high: np.ndarray, scale: np.ndarray, kind: str = "likelihood", samples: int = 10,
        seed: int = 0, policy: Any = None, previous: Gaussian | None = None, kl_weight: float = 0.0,
        epsilon: float = 1e-6, smooth: float = 0.0, point: bool = False,
    ) -> None:
        if kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {kind!r}")
        self.simulator, self.windows, self.to_values = simulator, windows, to_values
        self.low, self.high, self.scale = low, high, scale
        if point and kind == "likelihood":
            raise ValueError("the likelihood needs draws from the candidate distribution, not a point")
        self.point = point
        self.kind, self.samples, self.policy = kind, 1 if point else int(samples), policy
        self.previous, self.kl_weight = previous, float(kl_weight)
        self.epsilon, self.smooth = float(epsilon), float(smooth)
        self.unit = np.random.default_rng(seed).uniform(size=(self.samples, len(low)))
        self.evaluations = 0

    def simulate(self, values: np.ndarray) -> np.ndarray:
        """Simulated observations of every value vector (C, n) -> (C, W, k, obs_dim)."""
        w = self.windows
        if w.actions is not None:
            return self.simulator.replay(values, w.qpos, w.qvel, w.actions)
        return self.simulator.closed_loop(values, w.qpos, w.qvel, w.obs0, self.policy, w.target.shape[1])

    def __call__(self, candidates: list[Gaussian]) -> np.ndarray:
        """Loss of each candidate, shape (P,); lower is better."""
        if self.point:
            draws = np.stack([np.clip(g.mean, self.low, self.high) for g in candidates])
        else:
            draws = np.concatenate([g.sample(self.unit, self.low, self.high) for g in candidates])
        sim = self.simulate(self.to_values(draws))
        sim = sim.reshape(len(candidates), self.samples, *sim.shape[1:])  # (P, M, W, k, d)
        w = self.windows
        mask = w.mask.astype(np.float64)
        if self.kind == "discrepancy":
            per = discrepancy(w.target, sim, self.scale, smooth=self.smooth, mask=w.mask)  # (P, M, W)
            loss = per.mean(axis=(1, 2))
        else:
            z = sim / self.scale
            mu = z.mean(axis=1)
            var = z.var(axis=1) + self.epsilon
            real = w.target / self.scale
            nll = 0.5 * np.sum(np.log(2 * np.pi * var) + (real - mu) ** 2 / var, axis=-1)  # (P, W, k)
            loss = np.sum(nll * mask, axis=(1, 2)) / max(mask.sum(), 1.0)
        if self.previous is not None and self.kl_weight:
            loss = loss + self.kl_weight * np.array([g.kl(self.previous) for g in candidates])
        self.evaluations += len(candidates)
        # A candidate whose simulation blew up is the worst, not a crash.
        return np.nan_to_num(loss, nan=1e12, posinf=1e12, neginf=1e12)


@dataclass(frozen=True)
class Generation:
    """One CMA-ES generation: its number, evaluations so far, best and median loss, and the
    best distribution found so far."""

    generation: int
    evaluations: int
    best_loss: float
    median_loss: float
    best: Gaussian


class _Randn:
    """CMA-ES's normal draws from a seeded Generator (never the global ``np.random``)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


class CMAFitter:
    """CMA-ES over ``(mean, log std)`` of a :class:`Gaussian`, one generation per :meth:`step`.

    Args:
        objective: Scores a list of candidates.
        low: Lower limits of the mean, normalized, shape (n,).
        high: Upper limits of the mean, normalized, shape (n,).
        initial: Where the search starts (default: the middle of the prior box, std 0.25).
        seed: Seeds CMA-ES.
        sigma0: CMA-ES's initial step size in normalized units (log std moves 4x as far).
        popsize: Candidates per generation (default CMA-ES's ``4 + 3 ln(2n)``).
        std_bounds: Range of the fitted std, normalized.
        fit_std: Search the std too; ``False`` searches the mean alone (a point estimate:
            half the dimensions; pair it with a ``point`` objective), and :attr:`best` reports
            CMA-ES's own per-coordinate spread as the std.
    """

    def __init__(
        self, objective: Callable[[list[Gaussian]], np.ndarray], low: np.ndarray, high: np.ndarray,
        initial: Gaussian | None = None, seed: int = 0, sigma0: float = 0.5, popsize: int | None = None,
        std_bounds: tuple[float, float] = STD_BOUNDS, fit_std: bool = True,
    ) -> None:
        import cma

        n = len(low)
        self.n = n
        self.objective = objective
        self.fit_std = fit_std
        self.std_floor = std_bounds[0]
        initial = initial or Gaussian(np.clip(np.full(n, 0.5), low, high), np.full(n, 0.25))
        if fit_std:
            x0 = np.concatenate([initial.mean, np.log(np.clip(initial.std, *std_bounds))])
            lower = np.concatenate([low, np.full(n, np.log(std_bounds[0]))])
            upper = np.concatenate([high, np.full(n, np.log(std_bounds[1]))])
            stds = [1.0] * n + [4.0] * n
        else:
            x0, lower, upper, stds = np.asarray(initial.mean, dtype=np.float64), low, high, [1.0] * n
        options = {
            "seed": np.nan, "randn": _Randn(seed), "bounds": [lower.tolist(), upper.tolist()],
            "CMA_stds": stds, "verbose": -9, "verb_log": 0, "verb_disp": 0,
            "tolfun": 0, "tolx": 0, "tolfunhist": 0, "tolstagnation": 1e9, "tolflatfitness": 1e9,
        }
        if popsize:
            options["popsize"] = int(popsize)
        self.es = cma.CMAEvolutionStrategy(x0.tolist(), sigma0, options)
        self.generation = 0
        self.evaluations = 0
        self.best_loss = np.inf
        self.best_x = x0

    def _gaussian(self, x: np.ndarray) -> Gaussian:
        x = np.asarray(x, dtype=np.float64)
        if not self.fit_std:
            return Gaussian(x, np.full(self.n, self.std_floor))
        return Gaussian(x[: self.n], np.exp(x[self.n :]))

    @property
    def best(self) -> Gaussian:
        """The best candidate so far (with CMA-ES's spread as std when the std is not searched)."""
        if self.fit_std:
            return self._gaussian(self.best_x)
        spread = self.es.sigma * np.asarray(self.es.sigma_vec.scaling) * np.sqrt(np.diag(self.es.C))
        return Gaussian(np.asarray(self.best_x, dtype=np.float64), np.maximum(spread, self.std_floor))

    def step(self) -> Generation:
        """Ask, score and tell one generation."""
        xs = self.es.ask()
        losses = self.objective([self._gaussian(x) for x in xs])
        self.es.tell(xs, losses.tolist())
        i = int(np.argmin(losses))
        if losses[i] < self.best_loss:
            self.best_loss, self.best_x = float(losses[i]), np.array(xs[i])
        self.generation += 1
        self.evaluations += len(xs)
        return Generation(self.generation, self.evaluations, self.best_loss, float(np.median(losses)), self.best)

    def run(self, budget: int, callback: Callable[[Generation], None] | None = None) -> Gaussian:
        """Run generations until ``budget`` candidate evaluations are spent (at least one)."""
        while True:
            record = self.step()
            if callback is not None:
                callback(record)
            if self.evaluations >= budget:
                return self.best

    def state_dict(self) -> dict[str, Any]:
        """The whole search state (CMA-ES included), to continue exactly where it stopped."""
        return {
            "es": pickle.dumps(self.es), "generation": self.generation, "evaluations": self.evaluations,
            "best_loss": self.best_loss, "best_x": self.best_x.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.es = pickle.loads(state["es"])
        self.generation, self.evaluations = int(state["generation"]), int(state["evaluations"])
        self.best_loss, self.best_x = float(state["best_loss"]), np.array(state["best_x"])
