"""The joint sampler behind an env's randomization layers: one vector per env and episode.

Every randomization layer of one env (dynamics, sensors, action delay, later visual) joins
one :class:`Randomizer`. At each reset the outermost layer asks it for ONE sample of the
whole parameter space, drawn from the current distribution with the env's own seeded
generator, and every layer applies its slice. A strategy can therefore reason about whole
vectors: a boundary pinned in one dimension, a covariance across a mass and a sensor bias,
an Active DR particle.

Parameters that the distribution does not name stay at their nominal values. Every
distribution is checked before it reaches a model: each dimension's support must lie inside
the parameter's ``limits`` (when set) and keep the physics valid (a positive mass, a
non-negative noise level, a whole, bounded delay), or :class:`SpecError` names the parameter
and the value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from rlsim2real.distributions import BoxDistribution, Distribution
from rlsim2real.params import ParamSpace, SpecError

if TYPE_CHECKING:
    from rlsim2real.wrappers.base import RandomizationWrapper

# Seeds the joint sample's stream (layers' own streams, e.g. sensor noise, use other salts).
SALT = 0x5EED00


class EpisodeSample(NamedTuple):
    """What one episode ran on, as sent up with its last step (``info["dr_episode"]``).

    Attributes:
        vector: The joint sample, shape (n_params,), ordered as the env's ``param_names``.
        tag: The distribution's tag for this sample (``None`` for plain samples and pins).
        pinned: Whether the values were pinned rather than drawn.
    """

    vector: np.ndarray
    tag: Any
    pinned: bool


class Randomizer:
    """One generator, one distribution and one sample for all randomization layers of an env.

    Layers join it as they are built (inside out); the last to join (the outermost) drives
    it at reset. Users rarely touch it directly: the layers' ``set_distribution``, ``pin``,
    ``unpin``, ``params`` and ``sampler_state`` go through it.

    Args:
        seed: Seeds the generator (and the first reset of the env).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.space = ParamSpace()
        self.layers: list[tuple["RandomizationWrapper", slice]] = []
        self.driver: "RandomizationWrapper | None" = None
        self.resample_every: int | None = None
        self.pending_seed = seed
        self.rng = _make_rng(seed)
        self._explicit: Distribution | None = None
        self._distribution: Distribution | None = None
        self._pinned: np.ndarray | None = None
        self._ready = False
        self.vector = np.zeros(0)
        self.tag: Any = None
        self._owner: dict[str, "RandomizationWrapper"] = {}
        self.restored = False

    # -- building --------------------------------------------------------------------
    def join(
        self,
        layer: "RandomizationWrapper",
        distribution: Distribution | None,
        seed: int | None,
        resample_every: int | None,
    ) -> None:
        """Add ``layer``'s parameters to the joint space; ``layer`` becomes the driver."""
        clash = sorted(set(layer.space.names) & set(self.space.names))
        if clash:
            raise SpecError(f"{type(layer).__name__}: parameters {', '.join(clash)} already belong to another layer")
        start = len(self.space)
        self.space = ParamSpace([*self.space, *layer.space])
        # A layer's parameters are a contiguous block of the joint vector: its slice is a view.
        self.layers.append((layer, slice(start, len(self.space))))
        for name in layer.space.names:
            self._owner[name] = layer
        if distribution is not None:
            if self._explicit is not None and distribution != self._explicit:
                raise SpecError("the layers of one env sample one distribution; got two different ones")
            self._explicit = distribution
        if seed is not None:
            self.pending_seed = seed
            self.rng = _make_rng(seed)
        if resample_every:
            self.resample_every = int(resample_every)
        self.driver = layer
        self._ready = False

    def _prepare(self) -> None:
        # Deferred until every layer has joined: the nominal vector and the distribution's
        # placement in the joint space depend on all of them.
        if self._ready:
            return
        self._ready = True
        self.nominal = np.array([self._owner[n].nominal_value(n) for n in self.space.names], dtype=np.float64)
        if self._pinned is not None and len(self._pinned) != len(self.nominal):
            self._pinned = None
        self.vector = self.nominal.copy()
        self._place(self._explicit if self._explicit is not None else BoxDistribution(self.space), strict=False)

    # -- what to run on --------------------------------------------------------------
    @property
    def distribution(self) -> Distribution:
        self._prepare()
        return self._distribution

    def set_distribution(self, distribution: Distribution) -> None:
        """Sample from ``distribution`` from the next draw on, after checking it.

        Raises:
            SpecError: on a parameter this env does not have, a support outside a
                parameter's limits, or values that break the physics.
        """
        self._prepare()
        self._place(distribution, strict=True)

    def _place(self, distribution: Distribution, strict: bool) -> None:
        names = distribution.names
        unknown = [n for n in names if n not in self.space]
        if unknown and strict:
            raise SpecError(
                f"distribution names unknown parameters {', '.join(unknown)}; "
                f"this env has: {', '.join(self.space.names) or '(none)'}"
            )
        low, high = (np.asarray(x, dtype=np.float64) for x in distribution.support())
        for k, name in enumerate(names):
            if name in self.space:
                self.check(name, float(low[k]), float(high[k]))
        keep = [k for k, n in enumerate(names) if n in self.space]
        self._take = None if len(keep) == len(names) else np.array(keep, dtype=np.intp)
        self._at = np.array([self.space.index(names[k]) for k in keep], dtype=np.intp)
        # The common case, a distribution over exactly this space in its order: no scatter.
        self._whole = self._take is None and names == self.space.names
        self._order = np.argsort(self._at)  # column of the distribution's sample for each parameter
        self._distribution = distribution

    def check(self, name: str, low: float, high: float | None = None) -> None:
        """Raise :class:`SpecError` if ``[low, high]`` leaves ``name``'s limits or physics."""
        high = low if high is None else high
        param = self.space[name]
        for value in (low, high):
            if not np.isfinite(value):
                raise SpecError(f"param {name!r}: value {value} is not finite; expected a bounded distribution")
        if param.limits is not None:
            lo, hi = param.limits
            tol = 1e-9 * max(1.0, abs(lo), abs(hi))
            if low < lo - tol or high > hi + tol:
                bad = low if low < lo - tol else high
                raise SpecError(f"param {name!r}: value {bad:g} is outside its limits [{lo:g}, {hi:g}]")
        layer = self._owner[name]
        layer._check_value(name, low)
        if high != low:
            layer._check_value(name, high)

    def check_physics(self, name: str, value: float) -> None:
        """Raise :class:`SpecError` if ``value`` is unphysical for ``name`` (limits aside, as
        for a pin); batched worlds check their values through a Gymnasium env's sampler."""
        self._prepare()
        self._owner[name]._check_value(name, float(value))

    def pin(self, values: Mapping[str, float]) -> None:
        """Run on fixed values from the next draw on; parameters not named stay nominal.

        Raises:
            SpecError: on an unknown name or an unphysical value.
        """
        self._prepare()
        unknown = sorted(set(values) - set(self.space.names))
        if unknown:
            raise SpecError(
                f"pin: unknown parameters {', '.join(unknown)}; known: {', '.join(self.space.names) or '(none)'}"
            )
        pinned = self.nominal.copy()
        for name, value in values.items():
            self._owner[name]._check_value(name, float(value))
            pinned[self.space.index(name)] = float(value)
        self._pinned = pinned

    def unpin(self) -> None:
        self._pinned = None

    @property
    def pinned(self) -> bool:
        return self._pinned is not None

    # -- drawing ---------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Re-seed the joint stream and every layer's own streams (sensor noise, ...)."""
        self.rng = _make_rng(seed)
        for layer, _ in self.layers:
            layer._seed_streams(seed)

    def draw(self) -> np.ndarray:
        """Draw (or take the pinned) joint vector and hand each layer its slice.

        Returns:
            The joint vector, shape (n_params,).
        """
        self._prepare()
        if self._pinned is not None:
            vector, tag = self._pinned, None
        else:
            x, tag = self._distribution.sample_tagged(self.rng)
            if self._whole:
                vector = np.asarray(x, dtype=np.float64)
            else:
                vector = self.nominal.copy()
                vector[self._at] = x if self._take is None else x[self._take]
        for layer, index in self.layers:
            layer._apply(vector[index])
            layer._route_step()
        self.vector, self.tag = vector, tag
        return vector

    @staticmethod
    def draw_many(samplers: Sequence["Randomizer"]) -> np.ndarray:
        """Every sampler's :meth:`draw`, in one pass over the samplers of one space (the
        worlds of a batched env that reset together).

        Samplers that share a distribution draw with one ``sample_tagged_many`` call, each
        from its own generator, so each gets exactly the vector and tag its own ``draw()``
        would give; pinned samplers take their pins. Each sampler's layers get their slices.

        Returns:
            The joint vectors, shape (len(samplers), n_params), row ``j`` sampler ``j``'s.
        """
        if not samplers:
            return np.zeros((0, 0))
        groups: dict[int, list[int]] = {}
        pinned = []
        for j, sampler in enumerate(samplers):
            sampler._prepare()
            if sampler._pinned is not None:
                pinned.append(j)
            else:
                groups.setdefault(id(sampler._distribution), []).append(j)
        tags: list[Any] = [None] * len(samplers)
        if not pinned and len(groups) == 1:  # the usual case: one distribution for all
            out, tags = samplers[0]._place_many(samplers)
        else:
            out = np.empty((len(samplers), len(samplers[0].nominal)))
            for j in pinned:
                out[j] = samplers[j]._pinned
            for rows in groups.values():
                block, drawn = samplers[rows[0]]._place_many([samplers[j] for j in rows])
                out[rows] = block
                for j, tag in zip(rows, drawn):
                    tags[j] = tag
        for sampler, vector, tag in zip(samplers, out, tags):
            for layer, index in sampler.layers:
                layer._apply(vector[index])
                layer._route_step()
            sampler.vector, sampler.tag = vector, tag
        return out

    def _place_many(self, samplers: Sequence["Randomizer"]) -> tuple[np.ndarray, list[Any]]:
        # Samplers of one space drawing from this sampler's distribution: the same placement.
        x, tags = self._distribution.sample_tagged_many([s.rng for s in samplers])
        if self._whole:
            return np.asarray(x, dtype=np.float64), tags
        if self._take is None and self._at.size == len(self.nominal):  # every parameter, in another order
            return x.take(self._order, axis=1), tags
        out = np.empty((len(samplers), len(self.nominal)))
        out[:] = self.nominal
        out[:, self._at] = x if self._take is None else x[:, self._take]
        return out, tags

    def params(self) -> dict[str, float]:
        """The values in force, ``{name: value}`` in each Param's own units."""
        self._prepare()
        return dict(zip(self.space.names, self.vector.tolist()))

    def sample(self) -> EpisodeSample:
        return EpisodeSample(self.vector, self.tag, self._pinned is not None)

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The generator states, distribution and pins: a resumed env continues the stream."""
        self._prepare()
        return {
            "rng": self.rng.bit_generator.state,
            "distribution": self._distribution,
            "pinned": None if self._pinned is None else self._pinned.copy(),
            "names": self.space.names,
            "layers": [layer._stream_state() for layer, _ in self.layers],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the next draw continues the saved stream.

        Raises:
            SpecError: if the state belongs to an env with other parameters.
        """
        self._prepare()
        if tuple(state["names"]) != self.space.names:
            raise SpecError(
                f"sampler state is for parameters {', '.join(state['names'])}, "
                f"not this env's {', '.join(self.space.names)}"
            )
        self.set_distribution(state["distribution"])
        self.rng.bit_generator.state = state["rng"]
        self._pinned = None if state["pinned"] is None else np.array(state["pinned"], dtype=np.float64)
        self.pending_seed = None
        # The next reset continues the restored streams even if it is handed a seed: SB3
        # re-seeds a VecEnv whenever it builds or loads a model, which would replay them.
        self.restored = True
        for (layer, _), layer_state in zip(self.layers, state["layers"]):
            layer._load_stream_state(layer_state)


def _make_rng(seed: int | None) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, SALT])
