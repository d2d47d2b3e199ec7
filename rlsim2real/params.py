"""Randomization terms as data: :class:`Param` and :class:`ParamSpace`.

A :class:`Param` names one scalar that a wrapper writes somewhere: an ``MjModel`` field
addressed by MuJoCo's own field and element names (``body_mass[torso]``,
``geom_friction[*,0]``, ``opt.gravity[2]``), or a sensor/actuator term
(``obs.noise_std[*]``, ``obs.bias[0]``, ``obs.scale[*]``, ``action.delay``). One value is
applied to every element the target selects, in one of three modes relative to the nominal
value the element had when the wrapper was built: ``scale`` (x nominal), ``add``
(+ nominal) or ``abs`` (the value itself).

Sampling is not here: :class:`~rlsim2real.distributions.BoxDistribution` is the one sampler.

Example:
    >>> space = ParamSpace([
    ...     Param("torso_mass", "body_mass[torso]", (0.7, 1.3)),
    ...     Param("friction", "geom_friction[*,0]", (0.5, 1.5), dist="loguniform"),
    ... ])
    >>> space.names
    ('torso_mass', 'friction')
    >>> space.low.tolist(), space.high.tolist()
    ([0.7, 0.5], [1.3, 1.5])
    >>> space.to_dict(space.from_normalized([0.5, 0.0]))
    {'torso_mass': 1.0, 'friction': 0.5}
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODES = ("scale", "add", "abs")
DISTS = ("uniform", "loguniform", "normal")

_TARGET_RE = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_.]*)(?:\[(?P<index>[^\]]*)\])?$")


class SpecError(ValueError):
    """A randomization term, spec file or trajectory file is invalid.

    The message names the place (file and key) and what was expected, on one line.
    """


@dataclass(frozen=True)
class Target:
    """A parsed target string: ``field[element, column]``.

    Attributes:
        field: MuJoCo field name (``body_mass``, ``opt.gravity``) or a sensor term
            (``obs.bias``, ``action.delay``).
        element: Element selector: a MuJoCo name, ``*`` (all), ``#i`` (index, for unnamed
            elements), several joined by ``|``, or ``None`` when the field has no elements.
        column: Column index for 2-D fields (``geom_friction[*,0]``), ``None`` for all columns.
    """

    field: str
    element: str | None
    column: int | None

    @property
    def kind(self) -> str:
        """``"obs"`` or ``"action"`` for sensor/actuator terms, ``"image"`` for the image-space
        and texture terms of pixel observations, else ``"model"``."""
        head = self.field.split(".", 1)[0]
        if head == "texture":
            return "image"
        return head if head in ("obs", "action", "image") else "model"

    @classmethod
    def parse(cls, text: str) -> "Target":
        """Parse ``field[element, column]``.

        Raises:
            SpecError: if the string does not have that shape.
        """
        match = _TARGET_RE.match(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise SpecError(f"target {text!r}: expected 'field[element]' or 'field[element,column]'")
        index = match.group("index")
        element: str | None = None
        column: int | None = None
        if index is not None:
            parts = [p.strip() for p in index.split(",")]
            if len(parts) > 2 or not parts[0]:
                raise SpecError(f"target {text!r}: expected at most [element, column]")
            element = parts[0]
            if len(parts) == 2:
                try:
                    column = int(parts[1])
                except ValueError:
                    raise SpecError(f"target {text!r}: column must be an integer, got {parts[1]!r}") from None
        return cls(match.group("field"), element, column)

    def __str__(self) -> str:
        if self.element is None:
            return self.field
        col = "" if self.column is None else f",{self.column}"
        return f"{self.field}[{self.element}{col}]"


@dataclass(frozen=True)
class Param:
    """One randomized scalar.

    Args:
        name: Unique name, used in specs, real sets, logs and ``info["dr_params"]``.
        target: Where the value goes, e.g. ``"body_mass[torso]"`` (see module docstring).
        range: ``(low, high)`` of the training distribution, in the Param's own units (the
            multiplier for mode ``scale``).
        mode: ``"scale"``, ``"add"`` or ``"abs"``.
        dist: ``"uniform"``, ``"loguniform"`` or ``"normal"`` (truncated to ``range``).
        mean: Mean of ``normal``; defaults to the middle of the range.
        std: Standard deviation of ``normal``; defaults to a quarter of the range width.
        limits: ``(low, high)``: the search box a strategy may grow the range into (ADR,
            SimOpt, Active DR); ``None``: strategies may not move this parameter.

    Raises:
        SpecError: on an unknown mode or distribution, ``low > high``, a ``loguniform``
            range that is not positive, or a range outside the limits.
    """

    name: str
    target: str
    range: tuple[float, float] = (1.0, 1.0)
    mode: str = "scale"
    dist: str = "uniform"
    mean: float | None = None
    std: float | None = None
    limits: tuple[float, float] | None = None
    parsed: Target = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"param {self.name!r}: name must be a non-empty string")
        where = f"param {self.name!r}"
        object.__setattr__(self, "parsed", _wrap(where, Target.parse, self.target))
        if self.mode not in MODES:
            raise SpecError(f"{where}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.dist not in DISTS:
            raise SpecError(f"{where}: dist {self.dist!r} is not one of {', '.join(DISTS)}")
        try:
            low, high = (float(x) for x in self.range)
        except (TypeError, ValueError):
            raise SpecError(f"{where}: range must be two numbers [low, high], got {self.range!r}") from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SpecError(f"{where}: range must be finite, got [{low}, {high}]")
        if low > high:
            raise SpecError(f"{where}: range low {low} > high {high}; expected low <= high")
        if self.dist == "loguniform" and low <= 0:
            raise SpecError(f"{where}: loguniform needs a positive range, got [{low}, {high}]")
        if self.std is not None and not self.std > 0:
            raise SpecError(f"{where}: std must be positive, got {self.std}")
        object.__setattr__(self, "range", (low, high))
        if self.limits is not None:
            try:
                lim_lo, lim_hi = (float(x) for x in self.limits)
            except (TypeError, ValueError):
                raise SpecError(f"{where}: limits must be two numbers [low, high], got {self.limits!r}") from None
            if not (math.isfinite(lim_lo) and math.isfinite(lim_hi)) or lim_lo > lim_hi:
                raise SpecError(f"{where}: limits must be finite with low <= high, got [{lim_lo}, {lim_hi}]")
            if not lim_lo <= low <= high <= lim_hi:
                raise SpecError(f"{where}: range [{low:g}, {high:g}] is outside limits [{lim_lo:g}, {lim_hi:g}]")
            if self.dist == "loguniform" and lim_lo <= 0:
                raise SpecError(f"{where}: loguniform needs positive limits, got [{lim_lo:g}, {lim_hi:g}]")
            object.__setattr__(self, "limits", (lim_lo, lim_hi))

    @property
    def low(self) -> float:
        return self.range[0]

    @property
    def high(self) -> float:
        return self.range[1]

    @property
    def identity(self) -> float | None:
        """The value that leaves the nominal model unchanged (``None`` for mode ``abs``)."""
        return {"scale": 1.0, "add": 0.0}.get(self.mode)

    def with_range(self, low: float, high: float) -> "Param":
        """A copy with another range, limits kept (used by strategies that move the bounds)."""
        return Param(self.name, self.target, (low, high), self.mode, self.dist, self.mean, self.std, self.limits)

    def to_dict(self) -> dict[str, Any]:
        out = {"target": self.target, "range": list(self.range), "mode": self.mode, "dist": self.dist}
        if self.mean is not None:
            out["mean"] = self.mean
        if self.std is not None:
            out["std"] = self.std
        if self.limits is not None:
            out["limits"] = list(self.limits)
        return out


def apply_mode(mode: str, nominal: Any, value: float) -> Any:
    """A term's value applied to its nominal: ``scale`` (x nominal), ``add`` (+ nominal), ``abs``.

    Works on arrays (an ``abs`` value fills the nominal's shape, as float64) and on Python
    floats alike, with the same IEEE operation either way.
    """
    if mode == "scale":
        return nominal * value
    if mode == "add":
        return nominal + value
    if isinstance(nominal, np.ndarray):
        return np.full_like(nominal, value, dtype=np.float64)
    return float(value)


def _wrap(where: str, fn, *args):
    try:
        return fn(*args)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


class ParamSpace:
    """An ordered set of :class:`Param` with conversions between dicts and vectors.

    Args:
        params: The terms, with unique names.

    Raises:
        SpecError: on duplicate names.
    """

    def __init__(self, params: Iterable[Param] = ()) -> None:
        self._params: tuple[Param, ...] = tuple(params)
        names = [p.name for p in self._params]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"duplicate parameter names: {', '.join(dupes)}")
        self._index = {p.name: i for i, p in enumerate(self._params)}
        self._names = tuple(names)

    def __iter__(self) -> Iterator[Param]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> Param:
        try:
            return self._params[self._index[name]]
        except KeyError:
            raise KeyError(f"unknown parameter {name!r}; known: {', '.join(self.names) or '(none)'}") from None

    def __repr__(self) -> str:
        return f"ParamSpace({list(self._params)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSpace) and self._params == other._params

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def low(self) -> np.ndarray:
        """Lower bounds, shape (n_params,)."""
        return np.array([p.low for p in self._params], dtype=np.float64)

    @property
    def high(self) -> np.ndarray:
        """Upper bounds, shape (n_params,)."""
        return np.array([p.high for p in self._params], dtype=np.float64)

    def index(self, name: str) -> int:
        self[name]
        return self._index[name]

    def subset(self, names: Iterable[str]) -> "ParamSpace":
        """The Params named, in this space's order."""
        wanted = set(names)
        return ParamSpace(p for p in self._params if p.name in wanted)

    def select(self, kind: str) -> "ParamSpace":
        """The Params whose target kind is ``"model"``, ``"obs"``, ``"action"`` or ``"image"``."""
        return ParamSpace(p for p in self._params if p.parsed.kind == kind)

    def to_dict(self, vector: Sequence[float] | np.ndarray) -> dict[str, float]:
        """Vector of shape (n_params,) -> ``{name: value}``."""
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vector.shape[0] != len(self):
            raise ValueError(f"expected a vector of {len(self)} values, got {vector.shape[0]}")
        return {p.name: float(v) for p, v in zip(self._params, vector)}

    def to_vector(self, values: Mapping[str, float], fill: str = "error") -> np.ndarray:
        """``{name: value}`` -> vector of shape (n_params,).

        Args:
            values: Values by name; names outside the space raise ``KeyError``.
            fill: What to do with a Param missing from ``values``: ``"error"`` raises,
                ``"identity"`` uses the Param's identity value, ``"mid"`` the range's middle.
        """
        unknown = sorted(set(values) - set(self._index))
        if unknown:
            raise KeyError(f"unknown parameters {unknown}; known: {', '.join(self.names)}")
        out = np.empty(len(self), dtype=np.float64)
        for i, p in enumerate(self._params):
            if p.name in values:
                out[i] = float(values[p.name])
            elif fill == "identity" and p.identity is not None:
                out[i] = p.identity
            elif fill in ("mid", "identity"):
                out[i] = 0.5 * (p.low + p.high)
            else:
                raise KeyError(f"missing value for parameter {p.name!r}")
        return out

    def normalize(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        """Map values to [0, 1] per dimension (log scale for ``loguniform``); shape kept.

        A Param whose range is a single point maps to 0.5.
        """
        x = np.asarray(vector, dtype=np.float64)
        low, high = self._scaled_bounds()
        width = np.where(high > low, high - low, 1.0)
        out = (self._scaled(x) - low) / width
        return np.where(high > low, out, 0.5)

    def from_normalized(self, unit: Sequence[float] | np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalize`; shape kept."""
        u = np.asarray(unit, dtype=np.float64)
        low, high = self._scaled_bounds()
        y = low + u * (high - low)
        is_log = self._log_mask()
        return np.where(is_log, np.exp(np.where(is_log, y, 0.0)), y)

    def _log_mask(self) -> np.ndarray:
        return np.array([p.dist == "loguniform" for p in self._params], dtype=bool)

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        is_log = self._log_mask()
        return np.where(is_log, np.log(np.where(is_log, np.maximum(x, 1e-300), 1.0)), x)

    def _scaled_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._scaled(self.low), self._scaled(self.high)

    def to_list(self) -> list[dict[str, Any]]:
        return [{"name": p.name, **p.to_dict()} for p in self._params]
