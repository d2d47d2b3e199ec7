"""Randomization of a batch of worlds: the same terms as the Gymnasium wrappers, on arrays.

Sampling is the project's joint sampler: each world owns a
:class:`~rlsim2real.wrappers.randomizer.Randomizer` (its own seeded generator, distribution,
pins and tags), so world ``i`` of a batch seeded ``s`` draws exactly what Gymnasium worker
``i`` of a VecEnv seeded ``s`` draws, strategies can give each world its own distribution
(Active DR's particles) and tags (ADR's boundaries) reach the strategy as before. The
randomizer hands its world's vector to a :class:`WorldTerms` layer, which only stores it;
the appliers here then write the vectors of every world that resets, at once:

- :class:`BatchedDynamics`: model fields through :mod:`rlsim2real.mjfields` bindings, each
  rebuilt from the nominal values (nothing compounds), inertia following mass, committed
  to the backend (a device backend uploads them), ``mj_setConst`` per world where a field
  needs it;
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
from rlsim2real.wrappers.randomizer import EpisodeSample, Randomizer
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
    scaling a body's mass scales its inertia, the written fields are committed to the
    backend (:meth:`SimBackend.commit`), ``mj_setConst`` follows fields that need it.

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
        self._fields = tuple(fields)  # what every apply writes, for SimBackend.commit
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
        # The terms whose fields mj_setConst reads: only their changes call for it.
        self.const_at = np.array([k for k, b in enumerate(bound) if FIELDS[b.field].set_const], dtype=np.intp)
        self._ones = np.ones((backend.n_worlds, 1))
        if "body_mass" in fields:
            mass = self._nominal["body_mass"]
            self._mass_positive = mass > 0
            self._mass_divisor = np.where(self._mass_positive, mass, 1.0)
            self._inertia_has_terms = bool(self._terms["body_inertia"])
            self._nominal_inertia = self._nominal["body_inertia"].reshape(np.shape(model.body_inertia))
            self._inertia = backend.model_field("body_inertia")  # (n_worlds, nbody, 3)

    def apply(self, ids: np.ndarray, values: np.ndarray, const_ids: np.ndarray | None = None) -> None:
        """Worlds ``ids`` (shape (k,)) take the term values ``values`` (shape (k, n_terms)).

        Args:
            ids: The worlds.
            values: Their term values.
            const_ids: The worlds whose derived constants must be recomputed (``None``: all
                of ``ids`` where a field needs ``mj_setConst``); :class:`BatchedRandomization`
                passes the worlds where a term on such a field took a new value.
        """
        if not self._terms or not len(ids):
            return
        live = self._live
        mass = None
        if self._spans:
            factors = np.concatenate((values, self._ones[: len(ids)]), axis=1)
            flat = self._gathered_nominal * factors.take(self._owner, axis=1)
            for f, span in self._spans.items():
                live[f][ids] = out = flat[:, span]
                if f == "body_mass":
                    mass = out
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
            live[f][ids] = out
            if f == "body_mass":
                mass = out
        if mass is not None:
            ratio = np.ones_like(mass)  # 1 for bodies without a positive mass
            np.divide(mass, self._mass_divisor, out=ratio, where=self._mass_positive)
            # Terms of its own first (already written), then the mass ratio.
            inertia = self._inertia[ids] if self._inertia_has_terms else self._nominal_inertia
            self._inertia[ids] = inertia * ratio[:, :, None]
        self.backend.commit(self._fields, ids)
        if self._set_const:
            const_ids = ids if const_ids is None else const_ids
            if len(const_ids):
                self.backend.set_const(const_ids)


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
        # std, bias and scale of every world, one array (3, n_worlds, obs_dim) so that a
        # reset writes (and an observation of a few worlds reads) all three at once.
        self._current = np.stack([np.tile(self._nominal[f], (n_worlds, 1)) for f in OBS_FIELDS])
        self.current = {f: self._current[i] for i, f in enumerate(OBS_FIELDS)}
        # Per field, its terms in order (fields without terms stay nominal).
        self._plans = [(i, field, [(k, mode, idx) for k, mode, f, idx in self._terms if f == field])
                       for i, field in enumerate(OBS_FIELDS)]
        self._plans = [(i, field, terms) for i, field, terms in self._plans if terms]
        # The usual case: each field with terms has one, over every element (``obs.bias[*]``)
        # of a uniform nominal vector, so a world's field is one number broadcast.
        self._uniform = all(len(terms) == 1 and len(terms[0][2]) == obs_dim for _, _, terms in self._plans)
        self._nominal_list = [nominal[f] for f in OBS_FIELDS]
        self._uniform_plan = [(i, terms[0][0], terms[0][1]) for i, _, terms in self._plans] if self._uniform else []
        self._noisy = np.zeros(n_worlds, dtype=bool)
        self._identity = np.ones(n_worlds, dtype=bool)
        self._all_identity = True
        self._all_noisy = False
        self._z = np.zeros((n_worlds, NOISE_BLOCK, obs_dim))
        self._z_rows = self._z.reshape(n_worlds * NOISE_BLOCK, obs_dim)  # a view: row w * NOISE_BLOCK + r
        self._first_row = np.arange(n_worlds) * NOISE_BLOCK
        self._row = np.full(n_worlds, NOISE_BLOCK, dtype=np.intp)
        self._rngs: list[np.random.Generator] = [np.random.default_rng() for _ in range(n_worlds)]

    def apply(self, ids: np.ndarray, values: np.ndarray) -> None:
        if not self._terms or not len(ids):
            return
        if self._uniform:
            # As ObservationNoise's uniform fields: the mode's operation on the nominal number,
            # on Python floats (the same IEEE operation), a handful per world.
            numbers, noisy, identity = [], [], []
            for row in values.tolist():
                world = list(self._nominal_list)  # std, bias, scale
                for i, k, mode in self._uniform_plan:
                    c = world[i]
                    world[i] = c * row[k] if mode == "scale" else c + row[k] if mode == "add" else row[k]
                std, bias, scale = world
                numbers.append(world)
                noisy.append(std != 0)
                identity.append(std == 0 and bias == 0 and scale == 1)
            self._current[:, ids] = np.array(numbers).T[:, :, None]
        else:
            fields = np.empty((len(OBS_FIELDS), len(ids), self._z.shape[2]))  # (3, k, obs_dim)
            for i, field in enumerate(OBS_FIELDS):
                fields[i] = self._nominal[field]
            for i, field, terms in self._plans:
                for k, mode, idx in terms:
                    column = values[:, k : k + 1]
                    part = self._nominal[field][idx]
                    fields[i][:, idx] = part * column if mode == "scale" else part + column if mode == "add" else column
            self._current[:, ids] = fields
            noisy = (fields[0] != 0).any(axis=1)
            identity = ~noisy & ~(fields[1] != 0).any(axis=1) & ~(fields[2] != 1).any(axis=1)
        self._noisy[ids] = noisy
        self._identity[ids] = identity
        self._all_identity = bool(self._identity.all())
        self._all_noisy = bool(self._noisy.all())

    def observe(self, obs: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Corrupted observations of worlds ``ids`` (all: ``None``), shape as ``obs``."""
        if self._all_identity:
            return obs
        if ids is None:
            std, bias, scale = self._current
            if self._all_noisy:  # the common case, without masks
                rows = self._row
                if rows.max() == NOISE_BLOCK:
                    self._refill(np.flatnonzero(rows == NOISE_BLOCK))
                z = self._z_rows.take(self._first_row + rows, axis=0)
                rows += 1
                out = obs * scale
                out += z * std + bias
                return out
            worlds = np.flatnonzero(self._noisy)
            noisy = self._noisy
        elif self._all_noisy:
            std, bias, scale = self._current[:, ids]
            noisy, worlds = None, ids
        else:
            identity = self._identity[ids]
            if identity.all():
                return obs
            std, bias, scale = self._current[:, ids]
            noisy = self._noisy[ids]
            worlds = ids[noisy]
        out = obs * scale
        if worlds.size == len(obs):  # every world noisy
            z = self._draw_rows(worlds)
        else:
            z = np.zeros_like(obs)
            if worlds.size:
                z[noisy] = self._draw_rows(worlds)
        out += z * std + bias
        return out

    def _draw_rows(self, worlds: np.ndarray) -> np.ndarray:
        """The next row of standard normals of each of ``worlds``, shape (k, obs_dim)."""
        rows = self._row[worlds]
        empty = rows == NOISE_BLOCK
        if empty.any():
            self._refill(worlds[empty])
            rows = self._row[worlds]
        self._row[worlds] = rows + 1
        return self._z_rows.take(self._first_row[worlds] + rows, axis=0)

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
        self._all_delayed = False
        self._first_slot = np.zeros(n_worlds, dtype=np.intp)  # world w's queue starts at w * longest

    def apply(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Set the delays of worlds ``ids`` from their term values, shape (k, 0 or 1)."""
        if self._param is None or not len(ids):
            return
        mode = self._param.mode
        # As ActionDelay: the term applied to the nominal delay (0 in make_env), on Python
        # floats, rounded half to even; a handful of worlds, so no numpy calls until a delay
        # changes (whole steps: a new value often gives the same delay).
        delay = [round(v if mode == "abs" else 0.0 * v if mode == "scale" else 0.0 + v) for v in values[:, 0].tolist()]
        if delay == self.delay[ids].tolist():
            return
        self.delay[ids] = delay
        self._delayed = np.flatnonzero(self.delay)
        self._all_delayed = self._delayed.size == len(self.delay)
        longest = int(self.delay.max())
        if longest > self._queue.shape[1]:
            grown = np.zeros((len(self.delay), longest, self._queue.shape[2]), dtype=self._queue.dtype)
            grown[:, : self._queue.shape[1]] = self._queue
            self._queue = grown
            self._first_slot = np.arange(len(self.delay)) * longest

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
        if not np.can_cast(actions.dtype, self._queue.dtype, "safe"):
            # Wider actions than the space's (float64 into a float32 space): queued as they
            # are, as ActionDelay queues them, not rounded (the queue's values widen exactly).
            self._queue = self._queue.astype(np.result_type(actions.dtype, self._queue.dtype))
        if self._all_delayed:  # the usual case under a delay term: no masks
            slots = self._queue.reshape(-1, self._queue.shape[2])  # a view: slot w * longest + head
            at = self._first_slot + self._head
            out = slots.take(at, axis=0)
            slots[at] = actions
            self._head += 1
            np.remainder(self._head, self.delay, out=self._head)
            return out
        out = actions.astype(self._queue.dtype, copy=True)  # the same values: the queue is as wide
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
        # The Gymnasium stack orders the joint vector dynamics, action, obs (make_env's
        # layers), so each applier's columns are one block of it.
        blocks = {}
        for kind in ("model", "action", "obs"):
            at = [k for k, x in enumerate(kinds) if x == kind]
            blocks[kind] = slice(at[0], at[-1] + 1) if at else slice(0, 0)
            if at and at != list(range(blocks[kind].start, blocks[kind].stop)):
                raise ValueError(f"the {kind} terms are not one block of the joint vector: {at}")
        self.dynamics = BatchedDynamics(backend, space.select("model"))
        self.delay = BatchedActionDelay(n, neutral_action, space.select("action"))
        self.noise = BatchedObservationNoise(n, obs_dim, space.select("obs"))
        self._appliers = [(applier, blocks[kind]) for applier, kind in
                          ((self.dynamics, "model"), (self.delay, "action"), (self.noise, "obs")) if blocks[kind].stop]
        self._const_columns = [blocks["model"].start + int(k) for k in self.dynamics.const_at]
        # What each world's model, sensors and delay hold, as a list (None: nothing written
        # yet, so the first vector is written whatever it is, as a Gymnasium layer's first
        # sample is).
        self._applied: list[list[float] | None] = [None] * n
        self.samplers: list[Randomizer] = []
        for w in range(n):
            sampler = Randomizer()
            layer = WorldTerms(space, template, w, self)
            sampler.join(layer, distribution, None if seed is None else seed + w, None)
            layer._seed_streams(sampler.pending_seed)
            self.samplers.append(sampler)

    def draw(self, ids: np.ndarray) -> tuple[list[EpisodeSample], list[dict[str, float]]]:
        """The samplers of worlds ``ids`` draw their next vectors (each from its own stream,
        as each would alone: :meth:`Randomizer.draw_many`).

        Returns:
            Per world, what its episode runs on (``dr_episode``) and the values by name
            (``dr_params``).
        """
        samplers = [self.samplers[w] for w in ids.tolist()]
        vectors = Randomizer.draw_many(samplers)  # each world's layer stores its row in self.vectors
        names = self.space.names
        return [s.sample() for s in samplers], [dict(zip(names, row)) for row in vectors.tolist()]

    def apply(self, ids: np.ndarray) -> None:
        """Write the vectors the samplers of worlds ``ids`` drew last into those worlds.

        As the Gymnasium layers do, each applier skips the worlds whose values for it did
        not change since their last write (a pinned or nominal sensor stays as it is), and
        ``mj_setConst`` runs only for worlds where a term on a field it reads changed.
        """
        rows = self.vectors[ids]
        listed = rows.tolist()
        worlds = ids.tolist()
        applied = self._applied
        # Changed values are found on lists (a handful of floats: cheaper than numpy).
        previous = [applied[w] for w in worlds]
        for w, row in zip(worlds, listed):
            applied[w] = row
        for applier, block in self._appliers:
            moved = [j for j, (row, old) in enumerate(zip(listed, previous)) if old is None or row[block] != old[block]]
            if not moved:
                continue
            everyone = len(moved) == len(worlds)
            which = ids if everyone else ids[moved]
            values = rows[:, block] if everyone else rows[moved, block]
            if applier is self.dynamics:
                const = [j for j in moved if previous[j] is None
                         or any(listed[j][k] != previous[j][k] for k in self._const_columns)]
                applier.apply(which, values, which if len(const) == len(moved) else ids[const])
            else:
                applier.apply(which, values)
