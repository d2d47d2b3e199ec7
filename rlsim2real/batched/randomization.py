"""Randomization of a batch of worlds: the same terms as the Gymnasium wrappers, on arrays.

Sampling is the project's joint sampler: each world owns a
:class:`~rlsim2real.wrappers.randomizer.Randomizer` (its own seeded generator, distribution,
pins and tags), so world ``i`` of a batch seeded ``s`` draws exactly what Gymnasium worker
``i`` of a VecEnv seeded ``s`` draws, strategies can give each world its own distribution
(Active DR's particles) and tags (ADR's boundaries) reach the strategy as before. The
randomizer hands its world's vector to a :class:`WorldTerms` layer, which only stores it;
the appliers here then write the vectors of every world that resets, at once:

- :class:`BatchedDynamics`: model fields through :mod:`rlsim2real.mjfields` bindings, each
  rebuilt from the nominal values (nothing compounds), inertia following mass,
  ``mj_setConst`` per world where a field needs it;
- :class:`BatchedObservationNoise`: ``obs * scale + (std * N(0, 1) + bias)`` per world, noise
  drawn from each world's own stream in blocks, as :class:`ObservationNoise` draws it;
- :class:`BatchedActionDelay`: a ring buffer per world, as :class:`ActionDelay`'s queue.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlsim2real.batched.backend import SimBackend
from rlsim2real.mjfields import FIELDS, bind, field_array
from rlsim2real.params import ParamSpace
from rlsim2real.wrappers.randomizer import Randomizer
from rlsim2real.wrappers.sensors import NOISE_BLOCK, OBS_FIELDS, ObservationNoise, _obs_indices


class WorldTerms:
    """The one randomization layer of one world: checks values like the Gymnasium stack
    (``template``, the joint sampler of a Gymnasium training env of the same spec) and
    passes each drawn vector to the batch.

    It implements the layer hooks that :class:`Randomizer` calls (``_apply``,
    ``nominal_value``, ``_check_value``, streams) and nothing else.
    """

    kind = "world"

    def __init__(self, space: ParamSpace, template: Randomizer, world: int, owner: "BatchedRandomization") -> None:
        self.space = space
        self._template = template
        self._world = world
        self._owner = owner

    def nominal_value(self, name: str) -> float:
        return float(self._template.nominal[self._template.space.index(name)])

    def _check_value(self, name: str, value: float) -> None:
        self._template.check_physics(name, value)

    def _apply(self, values: np.ndarray) -> None:
        self._owner.vectors[self._world] = values

    def _route_step(self) -> None:
        pass  # nothing per step: the batch applies the vectors

    def _seed_streams(self, seed: int | None) -> None:
        self._owner.noise.seed(self._world, seed)

    def _stream_state(self) -> Any:
        return self._owner.noise.stream_state(self._world)

    def _load_stream_state(self, state: Any) -> None:
        self._owner.noise.load_stream_state(self._world, state)


class BatchedDynamics:
    """Write the model terms of a (k, n_terms) matrix into worlds ``ids`` of a backend.

    Semantics of :class:`~rlsim2real.wrappers.dynamics.DynamicsRandomization`: each field is
    rebuilt from its nominal values term by term (a later term wins where two overlap),
    scaling a body's mass scales its inertia, ``mj_setConst`` follows fields that need it.

    Args:
        backend: The worlds.
        space: The model terms (targets like ``body_mass[torso]``).
    """

    def __init__(self, backend: SimBackend, space: ParamSpace) -> None:
        model = backend.model
        self.backend = backend
        bound = [bind(model, p) for p in space]
        fields = sorted({b.field for b in bound} | ({"body_inertia"} if any(b.field == "body_mass" for b in bound) else set()))
        self._nominal = {f: np.array(field_array(model, f), dtype=np.float64, copy=True).reshape(-1) for f in fields}
        self._terms = {f: [] for f in fields}
        for k, b in enumerate(bound):
            shape = np.shape(field_array(model, b.field))
            flat = np.arange(int(np.prod(shape)), dtype=np.intp).reshape(shape)[b.index].reshape(-1)
            self._terms[b.field].append((k, b.param.mode, flat, self._nominal[b.field][flat]))
        self._live = {f: backend.model_field(f).reshape(backend.n_worlds, -1) for f in fields}
        # Fields whose terms all scale are rebuilt together in one gather and one
        # multiplication: nominal times a factor per element, taken from the term that writes
        # it last (1 where none does), the same IEEE operation as term by term.
        gathered = [f for f, terms in self._terms.items() if terms and all(t[1] == "scale" for t in terms)]
        owners, self._spans = [], {}
        start = 0
        for f in gathered:
            owner = np.full(self._nominal[f].size, len(bound), dtype=np.intp)
            for k, _, flat, _ in self._terms[f]:
                owner[flat] = k
            owners.append(owner)
            self._spans[f] = slice(start, start + owner.size)
            start += owner.size
        self._owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.intp)
        self._gathered_nominal = np.concatenate([self._nominal[f] for f in gathered]) if gathered else np.zeros(0)
        self._termwise = [f for f, terms in self._terms.items() if terms and f not in self._spans]
        self._set_const = any(FIELDS[b.field].set_const for b in bound)
        if "body_mass" in fields:
            mass = self._nominal["body_mass"]
            self._mass_positive = mass > 0
            self._mass_divisor = np.where(self._mass_positive, mass, 1.0)
            self._inertia_shape = np.shape(model.body_inertia)

    def apply(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Worlds ``ids`` (shape (k,)) take the term values ``values`` (shape (k, n_terms))."""
        if not self._terms or not len(ids):
            return
        rebuilt = {}
        if self._spans:
            factors = np.concatenate((values, np.ones((len(ids), 1))), axis=1)
            flat = self._gathered_nominal * factors[:, self._owner]
            for f, span in self._spans.items():
                rebuilt[f] = flat[:, span]
        for f in self._termwise:
            out = np.repeat(self._nominal[f][None, :], len(ids), axis=0)
            for k, mode, index, nominal in self._terms[f]:
                column = values[:, k : k + 1]
                if mode == "scale":
                    out[:, index] = nominal * column
                elif mode == "add":
                    out[:, index] = nominal + column
                else:
                    out[:, index] = column
            rebuilt[f] = out
        if "body_mass" in rebuilt:
            ratio = np.ones_like(rebuilt["body_mass"])  # 1 for bodies without a positive mass
            np.divide(rebuilt["body_mass"], self._mass_divisor, out=ratio, where=self._mass_positive)
            inertia = rebuilt.get("body_inertia", self._nominal["body_inertia"][None, :])  # terms of its own first
            inertia = inertia.reshape(-1, *self._inertia_shape) * ratio[:, :, None]
            rebuilt["body_inertia"] = inertia.reshape(len(ids), -1)
        for f, out in rebuilt.items():
            self._live[f][ids] = out
        if self._set_const:
            self.backend.set_const(ids)


class BatchedObservationNoise:
    """Observation noise, bias and scale per world (:class:`ObservationNoise` on arrays).

    Args:
        n_worlds: Number of worlds.
        obs_dim: Observation size.
        space: The ``obs.*`` terms.
    """

    def __init__(self, n_worlds: int, obs_dim: int, space: ParamSpace) -> None:
        nominal = {"obs.noise_std": 0.0, "obs.bias": 0.0, "obs.scale": 1.0}  # make_env's nominal sensors
        self._nominal = {f: np.full(obs_dim, v) for f, v in nominal.items()}
        self._terms = [(k, p.mode, p.parsed.field, _obs_indices(p.parsed.element, obs_dim, f"param {p.name!r}"))
                       for k, p in enumerate(space)]
        self.current = {f: np.tile(v, (n_worlds, 1)) for f, v in self._nominal.items()}
        # Per field, its terms in order (fields without terms stay nominal).
        self._plans = [(field, [(k, mode, idx) for k, mode, f, idx in self._terms if f == field]) for field in OBS_FIELDS]
        self._plans = [(field, terms) for field, terms in self._plans if terms]
        self._noisy = np.zeros(n_worlds, dtype=bool)
        self._identity = np.ones(n_worlds, dtype=bool)
        self._all_identity = True
        self._all_noisy = False
        self._worlds = np.arange(n_worlds)
        self._z = np.zeros((n_worlds, NOISE_BLOCK, obs_dim))
        self._row = np.full(n_worlds, NOISE_BLOCK, dtype=np.intp)
        self._rngs: list[np.random.Generator] = [np.random.default_rng() for _ in range(n_worlds)]

    def apply(self, ids: np.ndarray, values: np.ndarray) -> None:
        if not self._terms or not len(ids):
            return
        for field, terms in self._plans:
            nominal = self._nominal[field]
            if len(terms) == 1 and len(terms[0][2]) == len(nominal):  # one term over every element
                k, mode, _ = terms[0]
                column = values[:, k : k + 1]
                self.current[field][ids] = nominal * column if mode == "scale" else nominal + column if mode == "add" else column
                continue
            out = np.repeat(nominal[None, :], len(ids), axis=0)
            for k, mode, idx in terms:
                column = values[:, k : k + 1]
                part = nominal[idx]
                out[:, idx] = part * column if mode == "scale" else part + column if mode == "add" else column
            self.current[field][ids] = out
        std, bias, scale = (self.current[f][ids] for f in OBS_FIELDS)
        self._noisy[ids] = (std != 0).any(axis=1)
        self._identity[ids] = ~self._noisy[ids] & ~(bias != 0).any(axis=1) & ~(scale != 1).any(axis=1)
        self._all_identity = bool(self._identity.all())
        self._all_noisy = bool(self._noisy.all())

    def observe(self, obs: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Corrupted observations of worlds ``ids`` (all: ``None``), shape as ``obs``."""
        if self._all_identity or (ids is not None and self._identity[ids].all()):
            return obs
        sel = slice(None) if ids is None else ids
        std, bias, scale = (self.current[f][sel] for f in OBS_FIELDS)
        out = obs * scale
        if ids is None and self._all_noisy:  # the common case, without masks
            rows = self._row
            if rows.max() == NOISE_BLOCK:
                self._refill(np.flatnonzero(rows == NOISE_BLOCK))
            z = self._z[self._worlds, rows]
            rows += 1
        else:
            noisy = self._noisy[sel]
            z = np.zeros_like(obs)
            if noisy.any():
                worlds = np.flatnonzero(noisy) if ids is None else np.asarray(ids)[noisy]
                self._refill(worlds[self._row[worlds] == NOISE_BLOCK])
                z[noisy] = self._z[worlds, self._row[worlds]]
                self._row[worlds] += 1
        out += z * std + bias
        return out

    def _refill(self, worlds: np.ndarray) -> None:
        for w in worlds.tolist():
            # A block per generator call, as ObservationNoise draws it: the same stream.
            self._rngs[w].standard_normal(out=self._z[w])
            self._row[w] = 0

    def seed(self, world: int, seed: int | None) -> None:
        salt = ObservationNoise.noise_salt
        self._rngs[world] = np.random.default_rng(None if seed is None else [int(seed) & 0xFFFFFFFF, salt, 1])
        self._row[world] = NOISE_BLOCK

    def stream_state(self, world: int) -> dict[str, Any]:
        return {"rng": self._rngs[world].bit_generator.state, "z": self._z[world].copy(), "row": int(self._row[world])}

    def load_stream_state(self, world: int, state: dict[str, Any]) -> None:
        self._rngs[world].bit_generator.state = state["rng"]
        self._z[world] = state["z"]
        self._row[world] = int(state["row"])


class BatchedActionDelay:
    """Each world's actions arrive ``delay`` control steps late (:class:`ActionDelay` on arrays).

    Args:
        n_worlds: Number of worlds.
        neutral: What the env receives until ``delay`` actions are queued, shape (nu,).
        space: At most one ``action.delay`` term.
    """

    def __init__(self, n_worlds: int, neutral: np.ndarray, space: ParamSpace) -> None:
        self._param = next(iter(space), None)
        self._neutral = neutral
        self.delay = np.zeros(n_worlds, dtype=np.intp)
        self._queue = np.zeros((n_worlds, 0, len(neutral)), dtype=neutral.dtype)
        self._head = np.zeros(n_worlds, dtype=np.intp)
        self._delayed = np.zeros(0, dtype=np.intp)

    def apply(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Set the delays of worlds ``ids`` from their term values, shape (k, 0 or 1)."""
        if self._param is None or not len(ids):
            return
        mode, value = self._param.mode, values[:, 0]
        # As ActionDelay: the term applied to the nominal delay (0 in make_env), rounded half
        # to even (np.rint rounds as Python's round does).
        self.delay[ids] = np.rint(value if mode == "abs" else 0.0 * value if mode == "scale" else 0.0 + value)
        self._delayed = np.flatnonzero(self.delay)
        longest = int(self.delay.max())
        if longest > self._queue.shape[1]:
            grown = np.zeros((len(self.delay), longest, self._queue.shape[2]), dtype=self._queue.dtype)
            grown[:, : self._queue.shape[1]] = self._queue
            self._queue = grown

    def start_episode(self, ids: np.ndarray) -> None:
        """Worlds ``ids`` start with their queues full of neutral actions."""
        if self._queue.shape[1]:
            self._queue[ids] = self._neutral
            self._head[ids] = 0

    def act(self, actions: np.ndarray) -> np.ndarray:
        """The actions each world's env receives now, shape (n_worlds, nu)."""
        delayed = self._delayed
        if not delayed.size:
            return actions
        out = actions.astype(self._queue.dtype, copy=True)
        head = self._head[delayed]
        out[delayed] = self._queue[delayed, head]
        self._queue[delayed, head] = actions[delayed]
        self._head[delayed] = (head + 1) % self.delay[delayed]
        return out


class BatchedRandomization:
    """The joint samplers of every world and the appliers of their vectors.

    Args:
        backend: The worlds.
        template: The joint sampler of a Gymnasium training env of the same spec (its space,
            nominal values and checks are the worlds').
        obs_dim: Observation size.
        neutral_action: What a delayed env receives first, shape (nu,).
        distribution: What every world samples first (``None``: the spec's training box).
        seed: World ``i`` is seeded ``seed + i`` (``None``: fresh entropy).
    """

    def __init__(
        self, backend: SimBackend, template: Randomizer, obs_dim: int, neutral_action: np.ndarray,
        distribution: Any, seed: int | None,
    ) -> None:
        n = backend.n_worlds
        template.distribution  # settles the joint space and its nominal vector
        space = template.space
        self.space = space
        self.vectors = np.tile(template.nominal, (n, 1))
        kinds = [p.parsed.kind for p in space]
        # The Gymnasium stack orders the joint vector dynamics, action, obs (make_env's layers).
        self._columns = {kind: np.array([k for k, x in enumerate(kinds) if x == kind], dtype=np.intp)
                         for kind in ("model", "action", "obs")}
        self.dynamics = BatchedDynamics(backend, space.select("model"))
        self.delay = BatchedActionDelay(n, neutral_action, space.select("action"))
        self.noise = BatchedObservationNoise(n, obs_dim, space.select("obs"))
        self.samplers: list[Randomizer] = []
        for w in range(n):
            sampler = Randomizer()
            layer = WorldTerms(space, template, w, self)
            sampler.join(layer, distribution, None if seed is None else seed + w, None)
            layer._seed_streams(sampler.pending_seed)
            self.samplers.append(sampler)

    def apply(self, ids: np.ndarray) -> None:
        """Write the vectors the samplers of worlds ``ids`` drew last into those worlds."""
        rows = self.vectors[ids]
        self.dynamics.apply(ids, rows[:, self._columns["model"]])
        self.delay.apply(ids, rows[:, self._columns["action"]])
        self.noise.apply(ids, rows[:, self._columns["obs"]])
