"""Distributions over named parameters: small picklable values that draw whole vectors.

A strategy owns a distribution in the learner process and pushes it to the env workers
(``VecEnv.env_method("set_distribution", dist)``). Each env draws ONE vector from it per
episode with its own seeded generator (:class:`~rlsim2real.wrappers.randomizer.Randomizer`)
and hands every randomization layer its slice, so a distribution can couple parameters of
different layers (a boundary pinned in one dimension, a covariance, a particle).

A sample is a vector aligned with :attr:`Distribution.names`; dicts appear only at the
edges (``info["dr_params"]``, logs, TOML). A distribution may attach a tag to a sample
(:meth:`Distribution.sample_tagged`, e.g. which parameter sits at which boundary); the tag
travels with the episode's result back to the strategy.

Example:
    >>> import numpy as np
    >>> from rlsim2real.params import Param, ParamSpace
    >>> dist = BoxDistribution(ParamSpace([Param("m", "body_mass[torso]", (0.5, 1.5))]))
    >>> v = dist.sample(np.random.default_rng(0))
    >>> v.shape, dist.names, bool(0.5 <= v[0] <= 1.5)
    ((1,), ('m',), True)
    >>> dist.sample_batch(np.random.default_rng(0), 3).shape
    (3, 1)
    >>> round(dist.entropy(), 6)  # log of the box width
    0.0
    >>> Fixed({"m": 1.2}).sample(np.random.default_rng(0))
    array([1.2])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlsim2real.params import Param, ParamSpace


class Distribution:
    """Base class: a distribution over a vector of named scalar parameters."""

    @property
    def names(self) -> tuple[str, ...]:
        """The parameters, in the order of a sample's entries."""
        raise NotImplementedError

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One sample drawn with ``rng``, shape (n_params,), aligned with :attr:`names`."""
        raise NotImplementedError

    def sample_tagged(self, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        """One sample and its tag (``None`` unless the distribution says otherwise).

        The tag is a small picklable value that reaches the strategy with the result of the
        episode that ran on the sample.
        """
        return self.sample(rng), None

    def sample_batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` samples, shape (n, n_params) (for batched backends and strategies)."""
        return np.stack([self.sample(rng) for _ in range(int(n))]) if n else np.zeros((0, len(self.names)))

    def sample_tagged_many(self, rngs: Sequence[np.random.Generator]) -> tuple[np.ndarray, list[Any]]:
        """One tagged sample from each generator: row ``j`` and tag ``j`` are exactly what
        ``sample_tagged(rngs[j])`` gives (a batched env's worlds each draw from their own
        stream, as Gymnasium workers do, in one call).

        Returns:
            The samples, shape (len(rngs), n_params), and one tag per sample.
        """
        pairs = [self.sample_tagged(rng) for rng in rngs]
        if not pairs:
            return np.zeros((0, len(self.names))), []
        return np.stack([x for x, _ in pairs]), [tag for _, tag in pairs]

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest value any sample can take per parameter, shapes (n_params,).

        Workers check the support against each parameter's limits and physics before a
        distribution touches a model.
        """
        raise NotImplementedError

    def subset(self, names: Iterable[str]) -> "Distribution":
        """The marginal over ``names`` (names it does not hold are ignored)."""
        raise NotImplementedError

    def entropy(self) -> float:
        """Differential entropy in nats (sum over independent dimensions)."""
        raise NotImplementedError

    def to_dict(self, vector: np.ndarray) -> dict[str, float]:
        """A sample as ``{name: value}``."""
        return dict(zip(self.names, np.asarray(vector, dtype=np.float64).tolist()))

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serializable description that :func:`distribution_from_state` restores."""
        raise NotImplementedError


class BoxDistribution(Distribution):
    """Independent marginals, one per :class:`Param` (uniform, loguniform or truncated normal).

    This is the one sampler of the project (Params and spaces have none of their own), so
    one seed gives one value wherever it is drawn.

    Args:
        space: The parameters; each Param's ``range``, ``dist``, ``mean`` and ``std`` define
            its marginal.
    """

    def __init__(self, space: ParamSpace) -> None:
        self.space = space
        params = list(space)
        self._names = tuple(p.name for p in params)
        # Uniform and loguniform dimensions are drawn with one generator call (in log space
        # for loguniform), truncated normals one by one after them, in order.
        self._flat = np.array([p.dist != "normal" and p.low < p.high for p in params], dtype=bool)
        is_log = np.array([p.dist == "loguniform" for p in params], dtype=bool)
        low, high = space.low, space.high
        scaled_low = np.where(is_log, np.log(np.where(is_log, low, 1.0)), low)
        scaled_high = np.where(is_log, np.log(np.where(is_log, high, 1.0)), high)
        self._flat_at = np.flatnonzero(self._flat)
        self._lo = scaled_low[self._flat]
        self._width = (scaled_high - scaled_low)[self._flat]
        log = is_log[self._flat]
        self._any_log = bool(log.any())
        # Points (low == high) and normals start from the range's low end / are filled in.
        self._base = low.copy()
        self._normals = [(i, p) for i, p in enumerate(params) if p.dist == "normal" and p.low < p.high]
        # The common case: every dimension uniform or loguniform with a width; then a sample
        # is built in place from one generator call.
        self._all_flat = self._flat_at.size == len(params) and len(params) > 0
        self._log_at = np.flatnonzero(log)
        if self._log_at.size and self._log_at[-1] - self._log_at[0] + 1 == self._log_at.size:
            self._log_at = slice(int(self._log_at[0]), int(self._log_at[-1]) + 1)  # a view: no gather

    def __getstate__(self) -> dict[str, Any]:
        return {"space": self.space}  # small on the wire to every worker; rebuilt there

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["space"])

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def _draw_flat(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """The uniform and loguniform dimensions, shape (*shape, n_flat), built in place."""
        return self._scale_flat(rng.random((*shape, self._flat_at.size)))

    def _scale_flat(self, x: np.ndarray) -> np.ndarray:
        """Uniform [0, 1) draws, shape (..., n_flat), turned into the marginals in place."""
        x *= self._width
        x += self._lo
        if self._any_log:
            x[..., self._log_at] = np.exp(x[..., self._log_at])
        return x

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self._all_flat:
            return self._draw_flat(rng, ())
        out = self._base.copy()
        if self._flat_at.size:
            out[self._flat_at] = self._draw_flat(rng, ())
        for i, p in self._normals:
            out[i] = _truncated_normal(rng, p)
        return out

    def sample_tagged_many(self, rngs: Sequence[np.random.Generator]) -> tuple[np.ndarray, list[Any]]:
        # The plain box, every dimension uniform or loguniform (the usual training box): one
        # generator call per stream into a row, then one transformation of all rows, the
        # same IEEE operations element by element as each row's own sample(). Subclasses
        # that tag or draw otherwise, and truncated normals, take the row-by-row path.
        cls = type(self)
        if not self._all_flat or cls.sample is not BoxDistribution.sample or cls.sample_tagged is not Distribution.sample_tagged:
            return super().sample_tagged_many(rngs)
        x = np.empty((len(rngs), self._flat_at.size))
        for row, rng in zip(x, rngs):
            rng.random(out=row)
        return self._scale_flat(x), [None] * len(rngs)

    def sample_batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        n = int(n)
        out = np.repeat(self._base[None, :], n, axis=0)
        if self._flat_at.size and n:
            out[:, self._flat_at] = self._draw_flat(rng, (n,))
        for i, p in self._normals:
            out[:, i] = [_truncated_normal(rng, p) for _ in range(n)]
        return out

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        return self.space.low, self.space.high

    def subset(self, names: Iterable[str]) -> "BoxDistribution":
        return BoxDistribution(self.space.subset(names))

    def with_bounds(self, low: np.ndarray, high: np.ndarray) -> "BoxDistribution":
        """A copy with new bounds per dimension, shape (n_params,) each (used by ADR)."""
        return BoxDistribution(ParamSpace(p.with_range(lo, hi) for p, lo, hi in zip(self.space, low, high)))

    def entropy(self) -> float:
        return float(sum(marginal_entropy(p) for p in self.space))

    def state_dict(self) -> dict[str, Any]:
        return {"type": "box", "params": self.space.to_list()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.space == other.space

    def __repr__(self) -> str:
        inner = ", ".join(f"{p.name}={p.dist}[{p.low:g}, {p.high:g}]" for p in self.space)
        return f"{type(self).__name__}({inner})"


class Fixed(Distribution):
    """A point mass: every sample is ``values`` (used to pin held-out "real" configurations).

    Args:
        values: ``{name: value}`` in each Param's own units.
    """

    def __init__(self, values: Mapping[str, float]) -> None:
        self.values = {k: float(v) for k, v in values.items()}
        self._vector = np.array(list(self.values.values()), dtype=np.float64)

    def __getstate__(self) -> dict[str, Any]:
        return {"values": self.values}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["values"])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self._vector.copy()

    def sample_tagged_many(self, rngs: Sequence[np.random.Generator]) -> tuple[np.ndarray, list[Any]]:
        return np.tile(self._vector, (len(rngs), 1)), [None] * len(rngs)

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        return self._vector.copy(), self._vector.copy()

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


class AdrDistribution(BoxDistribution):
    """A box with boundary sampling: with probability ``boundary_prob`` one adapted dimension,
    chosen uniformly, sits at its lower or upper bound; the tag says which.

    Tags are ``(adapted index, side, value)`` with side 0 (lower) or 1 (upper), or ``None``.

    Args:
        space: The parameters with their current ranges.
        adapted: Positions (in ``space``) of the adapted dimensions.
        boundary_prob: Probability of a boundary episode.
    """

    def __init__(self, space: ParamSpace, adapted: Sequence[int], boundary_prob: float) -> None:
        super().__init__(space)
        self.adapted = np.asarray(adapted, dtype=np.intp)
        self.boundary_prob = float(boundary_prob)
        self._low, self._high = space.low, space.high

    def __getstate__(self) -> dict[str, Any]:
        return {"space": self.space, "adapted": self.adapted.tolist(), "boundary_prob": self.boundary_prob}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["space"], state["adapted"], state["boundary_prob"])

    def sample_tagged(self, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        x = self.sample(rng)
        if self.adapted.size and rng.random() < self.boundary_prob:
            j = int(rng.integers(self.adapted.size))
            side = int(rng.integers(2))
            i = self.adapted[j]
            value = float(self._low[i] if side == 0 else self._high[i])
            x[i] = value
            return x, (j, side, value)
        return x, None

    def state_dict(self) -> dict[str, Any]:
        return {"type": "adr", "params": self.space.to_list(), "adapted": self.adapted.tolist(),
                "boundary_prob": self.boundary_prob}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "AdrDistribution":
        return cls(ParamSpace(param_from_dict(d) for d in state["params"]), state["adapted"], state["boundary_prob"])

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, AdrDistribution) and self.space == other.space
                and self.adapted.tolist() == other.adapted.tolist() and self.boundary_prob == other.boundary_prob)


class ParticleDistribution(BoxDistribution):
    """A box whose searched dimensions are set by one of a few particles (Active DR).

    Every sample draws the box, then overwrites the searched dimensions with the vector of
    one particle, chosen uniformly among those this distribution serves; the tag
    ``(particle, round)`` says which particle and which proposal round it ran on.

    Args:
        space: All parameters with their training box.
        searched: Positions (in ``space``) of the dimensions the particles set.
        vectors: Each particle's values of the searched dimensions, shape (particles, n_searched),
            in each Param's own units.
        round: The proposal round the vectors belong to.
        serve: The particles this distribution draws from (default: all); a strategy gives
            each worker its own.

    Example:
        >>> from rlsim2real.params import Param, ParamSpace
        >>> space = ParamSpace([Param("m", "body_mass[torso]", (0.5, 1.5)), Param("f", "geom_friction[floor]", (0.5, 1.5))])
        >>> d = ParticleDistribution(space, [0], [[0.6], [1.4]], round=3, serve=[1])
        >>> x, tag = d.sample_tagged(np.random.default_rng(0))
        >>> float(x[0]), tag
        (1.4, (1, 3))
    """

    def __init__(
        self, space: ParamSpace, searched: Sequence[int], vectors: Any, round: int = 0, serve: Sequence[int] | None = None
    ) -> None:
        super().__init__(space)
        self.searched = np.asarray(searched, dtype=np.intp)
        self.vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, self.searched.size)
        self.round = int(round)
        self.serve = np.arange(len(self.vectors)) if serve is None else np.asarray(serve, dtype=np.intp)
        if not self.serve.size:
            raise ValueError("ParticleDistribution: serves no particle")

    def __getstate__(self) -> dict[str, Any]:
        return {"space": self.space, "searched": self.searched.tolist(), "vectors": self.vectors, "round": self.round,
                "serve": self.serve.tolist()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["space"], state["searched"], state["vectors"], state["round"], state["serve"])

    def serving(self, particles: Sequence[int]) -> "ParticleDistribution":
        """The same particles, drawing only from ``particles`` (one worker's share)."""
        return ParticleDistribution(self.space, self.searched, self.vectors, self.round, particles)

    def sample_tagged(self, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        x = super().sample(rng)
        i = int(self.serve[0] if self.serve.size == 1 else self.serve[rng.integers(self.serve.size)])
        x[self.searched] = self.vectors[i]
        return x, (i, self.round)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.sample_tagged(rng)[0]

    def sample_batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.stack([self.sample(rng) for _ in range(int(n))]) if n else np.zeros((0, len(self.names)))

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        low, high = self.space.low.copy(), self.space.high.copy()
        served = self.vectors[self.serve]
        low[self.searched] = served.min(axis=0)
        high[self.searched] = served.max(axis=0)
        return low, high

    def entropy(self) -> float:
        # A mixture of points in the searched dimensions: no density.
        return -math.inf if self.searched.size else super().entropy()

    def state_dict(self) -> dict[str, Any]:
        return {"type": "particles", "params": self.space.to_list(), "searched": self.searched.tolist(),
                "vectors": self.vectors.tolist(), "round": self.round, "serve": self.serve.tolist()}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ParticleDistribution) and self.space == other.space
                and self.searched.tolist() == other.searched.tolist() and np.array_equal(self.vectors, other.vectors)
                and self.round == other.round and self.serve.tolist() == other.serve.tolist())

    def __repr__(self) -> str:
        return f"ParticleDistribution({len(self.vectors)} particles over {len(self.searched)} dims, round {self.round})"


def param_from_dict(d: Mapping[str, Any]) -> Param:
    """A :class:`Param` from :meth:`ParamSpace.to_list` output."""
    return Param(
        d["name"], d["target"], tuple(d["range"]), d.get("mode", "scale"), d.get("dist", "uniform"),
        d.get("mean"), d.get("std"), tuple(d["limits"]) if d.get("limits") is not None else None,
    )


def distribution_from_state(state: Mapping[str, Any]) -> Distribution:
    """Rebuild a distribution from :meth:`Distribution.state_dict` output."""
    kind = state.get("type")
    if kind == "box":
        return BoxDistribution(ParamSpace(param_from_dict(d) for d in state["params"]))
    if kind == "fixed":
        return Fixed(state["values"])
    if kind == "adr":
        return AdrDistribution.from_state(state)
    if kind == "particles":
        return ParticleDistribution(ParamSpace(param_from_dict(d) for d in state["params"]), state["searched"],
                                    state["vectors"], state["round"], state["serve"])
    raise ValueError(f"unknown distribution state type {kind!r}; expected 'box', 'fixed', 'adr' or 'particles'")


def _truncated_normal(rng: np.random.Generator, p: Param) -> float:
    low, high = p.range
    mean = 0.5 * (low + high) if p.mean is None else float(p.mean)
    std = 0.25 * (high - low) if p.std is None else float(p.std)
    # Rejection is exact and cheap while the box holds a fair share of the mass; fall back to
    # clipping only for a box far in a tail, where rejection could spin for a long time.
    for _ in range(64):
        x = rng.normal(mean, std)
        if low <= x <= high:
            return float(x)
    return float(np.clip(rng.normal(mean, std), low, high))


def marginal_entropy(p: Param) -> float:
    """Differential entropy (nats) of one Param's marginal over its range."""
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
