"""Automatic domain randomization (OpenAI et al. 2019, "Solving Rubik's Cube"; the DeXtreme
variant of Handa et al. 2023).

Every adapted parameter has a current range that starts at its nominal value (or at the
spec's ``range``) and grows inside its ``limits`` while the policy copes. With probability
``boundary_prob`` an episode pins ONE adapted parameter, chosen uniformly, at its lower or
upper bound (all others are drawn from their current ranges); that episode's performance goes
into the (parameter, side) queue. A full queue whose mean performance is at least
``threshold_high`` moves that side outward by ``delta``; at most ``threshold_low`` moves it
back in (never inside the initial range); then the queue is cleared. Training-box
parameters that are not adapted keep their box.

Example (the update rule, fed by hand):
    >>> import numpy as np, rlsim2real as rs
    >>> from rlsim2real.strategies.base import EpisodeRecord
    >>> spec = rs.load_env_spec("inverted_pendulum")
    >>> adr = AutomaticStrategy(spec, AutomaticSettings(params=("pole_mass",), queue_length=2, delta=0.1,
    ...                                                  performance="return", threshold_high=900, threshold_low=100))
    >>> adr.bounds("pole_mass")
    (1.0, 1.0)
    >>> rec = lambda ret: EpisodeRecord(0, np.zeros(0), (), (0, 1, 1.0), ret, 1000, True, False)
    >>> adr.update([rec(950.0)]), adr.update([rec(990.0)])  # the queue fills, then the side expands
    (False, True)
    >>> adr.bounds("pole_mass")
    (1.0, 1.1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlsim2real.distributions import AdrDistribution, marginal_entropy
from rlsim2real.params import Param, ParamSpace, SpecError
from rlsim2real.strategies.base import EpisodeRecord, Strategy, StrategySettings

if TYPE_CHECKING:
    from rlsim2real.specs import EnvSpec

PERFORMANCE = ("success", "return")
INITIAL = ("nominal", "range")
DELTA_MODES = ("additive", "multiplicative")
LOWER, UPPER = 0, 1  # the sides of a range, as in AdrDistribution's tags


@dataclass(frozen=True)
class AutomaticSettings(StrategySettings):
    """The ``[strategy]`` table of ``name = "automatic"``.

    Attributes:
        params: Parameters whose ranges adapt (each needs ``limits``); default: every
            parameter of the spec (training box and held-out terms) that has limits.
        initial: ``"nominal"`` (ranges start at the nominal value) or ``"range"`` (at the
            spec's range).
        delta: Step by which a bound moves, in the parameter's own units (additive) or as a
            fraction (multiplicative: ``hi * (1 + delta)``, ``lo / (1 + delta)``); a number
            or a table ``{name = step}`` (names not listed take ``default_delta``).
        delta_mode: ``"additive"`` or ``"multiplicative"``, or a table per parameter.
        boundary_prob: Probability that an episode pins one parameter at a bound.
        queue_length: Boundary episodes per (parameter, side) before the bound is judged.
        threshold_high: Mean performance at or above which the bound moves outward.
        threshold_low: Mean performance at or below which the bound moves back in.
        performance: ``"success"`` (success rate, as evaluation defines success) or
            ``"return"`` (undiscounted return).
    """

    params: tuple[str, ...] = ()
    initial: str = "nominal"
    delta: float | dict[str, float] = 0.05
    default_delta: float = 0.05
    delta_mode: str | dict[str, str] = "additive"
    boundary_prob: float = 0.5
    queue_length: int = 20
    threshold_high: float = 0.8
    threshold_low: float = 0.4
    performance: str = "success"

    def validate(self, where: str, env: "EnvSpec") -> None:
        if self.performance not in PERFORMANCE:
            raise SpecError(f"{where}.performance: expected one of {', '.join(PERFORMANCE)}, got {self.performance!r}")
        if self.initial not in INITIAL:
            raise SpecError(f"{where}.initial: expected one of {', '.join(INITIAL)}, got {self.initial!r}")
        if not 0.0 <= self.boundary_prob <= 1.0:
            raise SpecError(f"{where}.boundary_prob: expected a probability in [0, 1], got {self.boundary_prob}")
        if self.queue_length < 1:
            raise SpecError(f"{where}.queue_length: expected an integer >= 1, got {self.queue_length}")
        if not self.threshold_low < self.threshold_high:
            raise SpecError(
                f"{where}.threshold_low: expected threshold_low < threshold_high, got "
                f"{self.threshold_low:g} >= {self.threshold_high:g}"
            )
        if self.performance == "success" and not (0.0 <= self.threshold_low and self.threshold_high <= 1.0):
            raise SpecError(f"{where}.threshold_high: a success rate lies in [0, 1]; got thresholds "
                            f"{self.threshold_low:g}, {self.threshold_high:g}")
        space = env.all_params
        adapted = adapted_names(self, env)
        if not adapted:
            raise SpecError(f"{where}.params: no parameter of {env.source} has limits; ADR needs limits = [lo, hi] to grow into")
        for name in self.params:
            if name not in space:
                raise SpecError(f"{where}.params: unknown parameter {name!r}; expected one of {', '.join(space.names)}")
            if space[name].limits is None:
                raise SpecError(f"{where}.params: parameter {name!r} has no limits in {env.source}; ADR needs limits to grow into")
        for key in ("delta", "delta_mode"):
            table = getattr(self, key)
            if isinstance(table, dict):
                for name in table:
                    if name not in adapted:
                        raise SpecError(f"{where}.{key}.{name}: not an adapted parameter; expected one of {', '.join(adapted)}")
        for name in adapted:
            step = self.step(name)
            if not step > 0:
                raise SpecError(f"{where}.delta: expected a step > 0 for {name!r}, got {step:g}")
            mode = self.mode(name)
            if mode not in DELTA_MODES:
                raise SpecError(f"{where}.delta_mode: expected one of {', '.join(DELTA_MODES)} for {name!r}, got {mode!r}")
            p = space[name]
            lo, hi = initial_range(self, env, p)
            lim_lo, lim_hi = p.limits
            if not lim_lo <= lo <= hi <= lim_hi:
                raise SpecError(f"{where}.initial: the initial range [{lo:g}, {hi:g}] of {name!r} is outside its limits [{lim_lo:g}, {lim_hi:g}]")
            if mode == "multiplicative" and not lo > 0:
                raise SpecError(f"{where}.delta_mode: multiplicative steps need a positive initial range for {name!r}, got [{lo:g}, {hi:g}]")

    def step(self, name: str) -> float:
        return float(self.delta.get(name, self.default_delta)) if isinstance(self.delta, dict) else float(self.delta)

    def mode(self, name: str) -> str:
        return self.delta_mode.get(name, "additive") if isinstance(self.delta_mode, dict) else self.delta_mode


def adapted_names(settings: AutomaticSettings, env: "EnvSpec") -> tuple[str, ...]:
    """The parameters whose ranges ADR moves, in the spec's order."""
    if settings.params:
        return tuple(n for n in env.all_params.names if n in settings.params)
    return tuple(p.name for p in env.all_params if p.limits is not None)


def initial_range(settings: AutomaticSettings, env: "EnvSpec", p: Param) -> tuple[float, float]:
    if settings.initial == "range":
        return p.range
    nominal = env.nominal.get(p.name, p.identity if p.identity is not None else 0.5 * (p.low + p.high))
    return float(nominal), float(nominal)


class AutomaticStrategy(Strategy):
    """Automatic DR: grow each adapted parameter's range while boundary episodes succeed.

    Args:
        env: The env spec (training box, held-out terms, limits, nominal values).
        settings: The ``[strategy]`` settings.
        seed: Unused (sampling happens in the workers, each with its own generator).
    """

    name = "automatic"
    Settings = AutomaticSettings

    def __init__(self, env: "EnvSpec", settings: AutomaticSettings | None = None, seed: int = 0) -> None:
        settings = settings or AutomaticSettings()
        settings.validate("strategy", env)
        self.settings = settings
        adapted = adapted_names(settings, env)
        # The distribution's space: the training box, then adapted held-out terms.
        params = list(env.params) + [p for p in env.heldout_params if p.name in adapted]
        self.adapted = adapted
        # Adapted parameters start at their initial range and are drawn uniformly (ADR's way).
        self._base = [p if p.name not in adapted else _uniform(p, *initial_range(settings, env, p)) for p in params]
        names = [p.name for p in self._base]
        self._at = [names.index(n) for n in adapted]
        self.initial = np.array([self._base[i].range for i in self._at], dtype=np.float64)  # (n, 2)
        self.limits = np.array([self._base[i].limits for i in self._at], dtype=np.float64)
        self.steps = np.array([settings.step(n) for n in adapted])
        self.multiplicative = np.array([settings.mode(n) == "multiplicative" for n in adapted])
        self.ranges = self.initial.copy()
        self.queues: list[list[list[float]]] = [[[], []] for _ in adapted]
        self.last_performance = np.full((len(adapted), 2), np.nan)
        self.expansions = 0
        self.shrinks = 0
        self.stale = 0
        self._boundary_seen: list[float] = []
        self.history: list[tuple[int, list[list[float]]]] = [(0, self.ranges.tolist())]
        super().__init__(self._build())

    def _build(self) -> AdrDistribution:
        params = list(self._base)
        for j, i in enumerate(self._at):
            params[i] = params[i].with_range(*self.ranges[j])
        return AdrDistribution(ParamSpace(params), self._at, self.settings.boundary_prob)

    def bounds(self, name: str) -> tuple[float, float]:
        """The current range of adapted parameter ``name``."""
        lo, hi = self.ranges[self.adapted.index(name)]
        return float(lo), float(hi)

    def performance(self, record: EpisodeRecord) -> float:
        if self.settings.performance == "return":
            return float(record.ret)
        return float(record.success)

    def update(self, records: Sequence[EpisodeRecord]) -> bool:
        changed = False
        m = self.settings.queue_length
        for record in records:
            self.timesteps = max(self.timesteps, int(record.timesteps))
            if record.tag is None or record.pinned:
                continue
            j, side, value = record.tag
            if value != self.ranges[j, side]:
                # Drawn before this bound last moved: it says nothing about the bound now.
                self.stale += 1
                continue
            performance = self.performance(record)
            self._boundary_seen.append(performance)
            queue = self.queues[j][side]
            queue.append(performance)
            if len(queue) < m:
                continue
            mean = float(np.mean(queue))
            queue.clear()
            self.last_performance[j, side] = mean
            if mean >= self.settings.threshold_high:
                changed |= self._move(j, side, outward=True)
            elif mean <= self.settings.threshold_low:
                changed |= self._move(j, side, outward=False)
        if changed:
            self.distribution = self._build()
            self.history.append((self.timesteps, self.ranges.tolist()))
        return changed

    def _move(self, j: int, side: int, outward: bool) -> bool:
        old = self.ranges[j, side]
        step, mult = self.steps[j], self.multiplicative[j]
        grow_up = (side == UPPER) == outward  # the bound's value increases
        if mult:
            new = old * (1.0 + step) if grow_up else old / (1.0 + step)
        else:
            new = old + step if grow_up else old - step
        lim_lo, lim_hi = self.limits[j]
        init_lo, init_hi = self.initial[j]
        if side == LOWER:
            new = max(new, lim_lo) if outward else min(new, init_lo)
            new = min(new, self.ranges[j, UPPER])
        else:
            new = min(new, lim_hi) if outward else max(new, init_hi)
            new = max(new, self.ranges[j, LOWER])
        if new == old:
            return False
        # A bound that moved makes the other side's pending judgements stale too only when
        # the range itself is what they measured; ADR keeps them (OpenAI's rule).
        self.ranges[j, side] = new
        if outward:
            self.expansions += 1
        else:
            self.shrinks += 1
        return True

    def entropy_per_dim(self) -> tuple[float, int]:
        """Differential entropy (nats per dimension) over dimensions of positive width, and
        how many dimensions are still points (a point has entropy minus infinity)."""
        widths = [marginal_entropy(p) for p in self.distribution.space]
        finite = [w for w in widths if math.isfinite(w)]
        return (float(np.mean(finite)) if finite else float("nan")), len(widths) - len(finite)

    def log_values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for j, name in enumerate(self.adapted):
            out[f"adr/{name}_lo"] = float(self.ranges[j, LOWER])
            out[f"adr/{name}_hi"] = float(self.ranges[j, UPPER])
            out[f"adr/{name}_lo_performance"] = float(self.last_performance[j, LOWER])
            out[f"adr/{name}_hi_performance"] = float(self.last_performance[j, UPPER])
        entropy, points = self.entropy_per_dim()
        out["dr/entropy_per_dim"] = entropy
        out["dr/point_dims"] = float(points)
        out["adr/boundary_performance"] = float(np.mean(self._boundary_seen)) if self._boundary_seen else float("nan")
        out["adr/boundary_episodes"] = float(len(self._boundary_seen))
        out["adr/expansions"] = float(self.expansions)
        out["adr/shrinks"] = float(self.shrinks)
        self._boundary_seen = []
        return out

    def summary(self) -> dict[str, Any]:
        entropy, points = self.entropy_per_dim()
        return {
            **super().summary(),
            "settings": self.settings.to_dict(),
            "ranges": {n: list(map(float, r)) for n, r in zip(self.adapted, self.ranges)},
            "initial": {n: list(map(float, r)) for n, r in zip(self.adapted, self.initial)},
            "limits": {n: list(map(float, r)) for n, r in zip(self.adapted, self.limits)},
            "entropy_per_dim": entropy,
            "point_dims": points,
            "expansions": self.expansions,
            "shrinks": self.shrinks,
            "timesteps": self.timesteps,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "adapted": self.adapted,
            "ranges": self.ranges.copy(),
            "queues": [[list(q) for q in sides] for sides in self.queues],
            "last_performance": self.last_performance.copy(),
            "expansions": self.expansions,
            "shrinks": self.shrinks,
            "stale": self.stale,
            "boundary_seen": list(self._boundary_seen),
            "history": [(t, [list(r) for r in ranges]) for t, ranges in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if tuple(state.get("adapted", ())) != self.adapted:
            raise SpecError(f"checkpoint adapts {', '.join(state.get('adapted', ()))}, not {', '.join(self.adapted)}")
        self.ranges = np.array(state["ranges"], dtype=np.float64)
        self.queues = [[list(q) for q in sides] for sides in state["queues"]]
        self.last_performance = np.array(state["last_performance"], dtype=np.float64)
        self.expansions, self.shrinks, self.stale = int(state["expansions"]), int(state["shrinks"]), int(state["stale"])
        self._boundary_seen = list(state["boundary_seen"])
        self.history = [(int(t), [list(r) for r in ranges]) for t, ranges in state["history"]]
        self.distribution = self._build()

    def save_figures(self, folder: Path) -> list[Path]:
        """``ranges.png``: each adapted range over training, against its limits."""
        from rlsim2real.plots import plot_ranges

        history = [*self.history, (self.timesteps, self.ranges.tolist())]
        return [plot_ranges(folder / "ranges.png", self.adapted, history, self.limits, self.initial)]


def _uniform(p: Param, low: float, high: float) -> Param:
    """``p`` over ``[low, high]``; a truncated normal becomes uniform, loguniform stays."""
    if p.dist != "normal":
        return p.with_range(low, high)
    return Param(p.name, p.target, (low, high), p.mode, "uniform", None, None, p.limits)
