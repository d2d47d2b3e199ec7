"""Distributions over a :class:`~rlsim2real.params.ParamSpace`: small picklable values.

A strategy owns a distribution in the learner process and pushes it to the env workers
(``VecEnv.env_method("set_distribution", dist)``); each worker samples it with its own
seeded generator at every reset. Wrappers take the part of a distribution that names
their own parameters (:meth:`Distribution.subset`).

Example:
    >>> import numpy as np
    >>> from rlsim2real.params import Param, ParamSpace
    >>> dist = BoxDistribution(ParamSpace([Param("m", "body_mass[torso]", (0.5, 1.5))]))
    >>> sorted(dist.sample(np.random.default_rng(0)))
    ['m']
    >>> round(dist.entropy(), 6)  # log of the box width
    0.0
    >>> Fixed({"m": 1.2}).sample(np.random.default_rng(0))
    {'m': 1.2}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from rlsim2real.params import Param, ParamSpace


class Distribution:
    """Base class: a distribution over named scalar parameters."""

    @property
    def names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """One sample ``{name: value}`` drawn with ``rng``."""
        raise NotImplementedError

    def subset(self, names: Iterable[str]) -> "Distribution":
        """The marginal over ``names`` (names it does not hold are ignored)."""
        raise NotImplementedError

    def entropy(self) -> float:
        """Differential entropy in nats (sum over independent dimensions)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serializable description that :func:`distribution_from_state` restores."""
        raise NotImplementedError


class BoxDistribution(Distribution):
    """Independent marginals, one per :class:`Param` (uniform, loguniform or truncated normal).

    Args:
        space: The parameters; each Param's ``range``, ``dist``, ``mean`` and ``std`` define
            its marginal.
    """

    def __init__(self, space: ParamSpace) -> None:
        self.space = space
        # Sampling runs at every reset of every worker: uniform and loguniform dimensions
        # are drawn with one generator call; truncated normals one by one (rejection).
        params = list(space)
        self._names = [p.name for p in params]
        self._flat = np.array([p.dist != "normal" and p.low < p.high for p in params], dtype=bool)
        is_log = np.array([p.dist == "loguniform" for p in params], dtype=bool)
        def scaled(x: np.ndarray) -> np.ndarray:
            return np.where(is_log, np.log(np.where(is_log, x, 1.0)), x)

        low, high = scaled(space.low), scaled(space.high)
        # Bounds of the uniform/loguniform dimensions as Python floats: a layer holds a
        # handful of parameters, and scalar arithmetic on a short list is cheaper than numpy
        # calls on tiny arrays (the same IEEE operations, so the same values).
        self._lo = low[self._flat].tolist()
        self._width = (high - low)[self._flat].tolist()
        self._n_flat = len(self._lo)
        self._log_at = np.flatnonzero(is_log[self._flat]).tolist()
        self._flat_at = np.flatnonzero(self._flat).tolist()
        self._others = [(i, p) for i, p in enumerate(params) if not self._flat[i]]

    def __getstate__(self) -> dict[str, Any]:
        return {"space": self.space}  # small on the wire to every worker; rebuilt there

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["space"])

    @property
    def names(self) -> tuple[str, ...]:
        return self.space.names

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        if not self._names:
            return {}
        # One generator call for every flat dimension, then the truncated normals in order.
        n = self._n_flat
        u = rng.random(n).tolist() if n > 1 else [rng.random()] if n else []
        flat = [lo + width * x for lo, width, x in zip(self._lo, self._width, u)]
        for i in self._log_at:
            # numpy's exp, not math.exp: the two can differ in the last bit, and a seed
            # must keep giving the same parameters.
            flat[i] = float(np.exp(flat[i]))
        if not self._others:  # the common case: every dimension uniform or loguniform
            return dict(zip(self._names, flat))
        values: list[float] = [0.0] * len(self._names)
        for i, value in zip(self._flat_at, flat):
            values[i] = value
        for i, p in self._others:
            values[i] = float(p.sample(rng))
        return dict(zip(self._names, values))

    def subset(self, names: Iterable[str]) -> "BoxDistribution":
        return BoxDistribution(self.space.subset(names))

    def with_bounds(self, low: np.ndarray, high: np.ndarray) -> "BoxDistribution":
        """A copy with new bounds per dimension, shape (n_params,) each (used by ADR)."""
        return BoxDistribution(ParamSpace(p.with_range(lo, hi) for p, lo, hi in zip(self.space, low, high)))

    def entropy(self) -> float:
        return float(sum(_marginal_entropy(p) for p in self.space))

    def state_dict(self) -> dict[str, Any]:
        return {"type": "box", "params": self.space.to_list()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoxDistribution) and self.space == other.space

    def __repr__(self) -> str:
        inner = ", ".join(f"{p.name}={p.dist}[{p.low:g}, {p.high:g}]" for p in self.space)
        return f"BoxDistribution({inner})"


class Fixed(Distribution):
    """A point mass: every sample is ``values`` (used to pin held-out "real" configurations).

    Args:
        values: ``{name: value}`` in each Param's own units.
    """

    def __init__(self, values: Mapping[str, float]) -> None:
        self.values = {k: float(v) for k, v in values.items()}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        return dict(self.values)

    def subset(self, names: Iterable[str]) -> "Fixed":
        wanted = set(names)
        return Fixed({k: v for k, v in self.values.items() if k in wanted})

    def entropy(self) -> float:
        return -math.inf if self.values else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"type": "fixed", "values": dict(self.values)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fixed) and self.values == other.values

    def __repr__(self) -> str:
        return f"Fixed({self.values!r})"


def distribution_from_state(state: Mapping[str, Any]) -> Distribution:
    """Rebuild a distribution from :meth:`Distribution.state_dict` output."""
    kind = state.get("type")
    if kind == "box":
        params = [Param(**{k: (tuple(v) if k == "range" else v) for k, v in d.items()}) for d in state["params"]]
        return BoxDistribution(ParamSpace(params))
    if kind == "fixed":
        return Fixed(state["values"])
    raise ValueError(f"unknown distribution state type {kind!r}; expected 'box' or 'fixed'")


def _marginal_entropy(p: Param) -> float:
    low, high = p.range
    if high <= low:
        return -math.inf
    if p.dist == "uniform":
        return math.log(high - low)
    if p.dist == "loguniform":
        # Density 1/(x log(h/l)) on [l, h]: H = log(log(h/l)) + E[log x].
        return math.log(math.log(high / low)) + 0.5 * (math.log(low) + math.log(high))
    mean = 0.5 * (low + high) if p.mean is None else p.mean
    std = 0.25 * (high - low) if p.std is None else p.std
    a, b = (low - mean) / std, (high - mean) / std
    phi = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = cdf(b) - cdf(a)
    return math.log(math.sqrt(2 * math.pi * math.e) * std * z) + (a * phi(a) - b * phi(b)) / (2 * z)
