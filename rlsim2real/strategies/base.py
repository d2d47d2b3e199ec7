"""What every strategy does: own a distribution in the learner, learn from episode records,
push the distribution to workers, and save everything it needs to continue exactly."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from rlsim2real.distributions import Distribution, distribution_from_state
from rlsim2real.params import SpecError

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

    from rlsim2real.specs import EnvSpec


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished training episode, as the strategy sees it.

    Attributes:
        env: Index of the worker that ran it.
        vector: The joint parameter sample it ran on, shape (n_params,), ordered as ``names``.
        names: The env's parameter names (the order of ``vector``).
        tag: The distribution's tag for the sample (e.g. which boundary ADR pinned), or ``None``.
        ret: Undiscounted return.
        length: Steps.
        success: Whether it counts as a success (the spec's ``success_return``, or reaching
            the time limit without terminating; never when unstable).
        unstable: Whether the physics blew up (truncated by the PhysicsGuard).
        pinned: Whether the values were pinned rather than drawn.
        timesteps: The learner's step count when the episode was seen.
        transitions: For strategies that ask for them (``wants_transitions``): the episode's
            transitions as rows ``[s, a, s']`` of raw (unnormalized) observations and the
            actions the env received, shape (steps, 2 * obs_dim + act_dim); the step that
            ended the episode is left out (its ``s'`` is the next episode's first
            observation). ``None`` otherwise.
    """

    env: int
    vector: np.ndarray
    names: tuple[str, ...]
    tag: Any
    ret: float
    length: int
    success: bool
    unstable: bool
    pinned: bool = False
    timesteps: int = 0
    transitions: np.ndarray | None = None

    def params(self) -> dict[str, float]:
        """The sample as ``{name: value}``."""
        return dict(zip(self.names, self.vector.tolist()))


@dataclass(frozen=True)
class StrategySettings:
    """Base of a strategy's settings: the ``[strategy]`` table of an experiment, typed.

    Subclasses are frozen dataclasses whose fields are the table's keys (with defaults);
    :meth:`from_table` checks keys and types, :meth:`validate` the values against the env.
    """

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str, strategy: str) -> "StrategySettings":
        """Build from a TOML table.

        Raises:
            SpecError: on an unknown key or a value of the wrong type, naming ``where.key``.
        """
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in names:
                expected = ", ".join(names) if names else "no settings"
                raise SpecError(f"{where}: unknown setting {key!r} for strategy {strategy!r}; expected {expected}")
            values[key] = _coerce(value, hints[key], f"{where}.{key}")
        return cls(**values)

    def validate(self, where: str, env: "EnvSpec") -> None:
        """Raise :class:`SpecError` on values that do not fit together or with ``env``."""

    def require(self, where: str, ok: bool, key: str, expected: str) -> None:
        """One line naming ``where.key``, what was expected and the value, unless ``ok``
        (``need = functools.partial(self.require, where)`` in :meth:`validate`)."""
        if not ok:
            raise SpecError(f"{where}.{key}: expected {expected}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple annotation (float, int, bool, str, tuple[str, ...],
    dict[str, X] and unions of these) and return it in that type."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    for option in options:
        origin = typing.get_origin(option)
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if option in (bool, str) and isinstance(value, option):
            return value
        if option is type(None) and value is None:
            return None
        if origin is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if origin is dict and isinstance(value, Mapping):
            inner = typing.get_args(option)[1]
            return {str(k): _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    raise SpecError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    words = []
    for option in options:
        origin = typing.get_origin(option)
        if origin is tuple:
            words.append("a list of names")
        elif origin is dict:
            words.append(f"a table of name = {_describe(typing.get_args(option)[1])}")
        else:
            words.append({float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(option, str(option)))
    return " or ".join(words)


class Strategy:
    """Owns the randomization distribution; updates it from episode records; broadcasts it.

    A strategy never touches an ``MjModel``: it sends a small picklable
    :class:`~rlsim2real.distributions.Distribution` to every env worker through
    ``VecEnv.env_method("set_distribution", dist)``; workers check it against each
    parameter's limits and physics, and draw from it at their next reset.

    Args:
        distribution: The initial distribution.
    """

    name: ClassVar[str] = "base"
    Settings: ClassVar[type[StrategySettings]] = StrategySettings
    wants_transitions: ClassVar[bool] = False
    """Whether episode records should carry their transitions (costs a copy per step)."""

    def __init__(self, distribution: Distribution) -> None:
        self.distribution = distribution
        self.timesteps = 0

    def attach(self, model: Any, venv: "VecEnv") -> None:
        """Called when training starts, with the agent and the training env (a strategy that
        rolls out the current policy itself, like Active DR on its reference env, keeps them)."""

    def broadcast(self, venv: "VecEnv") -> None:
        """Send the current distribution to every worker of ``venv``."""
        venv.env_method("set_distribution", self.distribution)

    def update(self, records: Sequence[EpisodeRecord]) -> bool:
        """Learn from a batch of finished episodes.

        Returns:
            Whether the distribution changed (and so must be broadcast).
        """
        return False

    def log_values(self) -> dict[str, float]:
        """Scalars to log after each update (``logs/progress.csv`` and TensorBoard)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """A human-readable JSON summary (``strategy.json``)."""
        return {"strategy": self.name, "distribution": self.distribution.state_dict()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (arrays, queues, networks, generators):
        pickled into every checkpoint."""
        return {"strategy": self.name, "distribution": self.distribution, "timesteps": self.timesteps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (or, for old runs, a ``strategy.json`` summary)."""
        if state.get("strategy") != self.name:
            raise SpecError(f"checkpoint holds a {state.get('strategy')!r} strategy, not {self.name!r}")
        dist = state["distribution"]
        self.distribution = dist if isinstance(dist, Distribution) else distribution_from_state(dist)
        self.timesteps = int(state.get("timesteps", 0))

    def save_figures(self, folder: Path) -> list[Path]:
        """Draw the strategy's figures into ``folder`` (e.g. ADR's ``ranges.png``)."""
        return []
