"""Build randomized training envs and fixed held-out "real" envs from an :class:`EnvSpec`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import gymnasium as gym

from rlsim2real.distributions import BoxDistribution, Distribution
from rlsim2real.params import SpecError
from rlsim2real.specs import EnvSpec, load_entry_point, load_env_spec
from rlsim2real.wrappers import ActionDelay, DynamicsRandomization, ObservationNoise, PhysicsGuard, PixelObservation
from rlsim2real.wrappers.stability import install_warning_handler


def _registered_id(spec: EnvSpec) -> str:
    """Register an ``entry_point`` env under a private id (once per process) and return it."""
    # Keyed on where the spec lives and what it names: two specs that share a file name in
    # different folders must not share a registration.
    key = f"{spec.path.resolve() if spec.path else ''}|{spec.entry_point}"
    env_id = f"rlsim2real/{spec.name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}-v0"
    if env_id not in gym.registry:
        relative_to = spec.path.parent if spec.path else None
        try:
            cls = load_entry_point(spec.entry_point, relative_to)
        except SpecError as exc:
            raise SpecError(f"{spec.source}: env.{exc}") from None
        gym.register(env_id, entry_point=cls, max_episode_steps=spec.max_episode_steps or 1000)
    return env_id


def make_base_env(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """The env the spec names, unrandomized (``gym.make`` with the spec's kwargs)."""
    env_id = spec.env_id if spec.env_id else _registered_id(spec)
    kwargs = dict(spec.kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if spec.max_episode_steps is not None:
        kwargs["max_episode_steps"] = spec.max_episode_steps
    try:
        return gym.make(env_id, **kwargs)
    except SpecError:
        raise
    except Exception as exc:  # a bad MJCF, a wrong kwarg, an unknown id: one line, not a traceback
        what = spec.env_id or spec.entry_point
        raise SpecError(f"{spec.source}: env: cannot make {what!r}: {type(exc).__name__}: {exc}") from None


def make_env(
    spec: EnvSpec | str | os.PathLike,
    seed: int | None = None,
    distribution: Distribution | None = None,
    randomize: bool = True,
    render_mode: str | None = None,
) -> gym.Env:
    """A training env: the spec's env with every randomization term of the spec applied.

    The stack, inside out: the MuJoCo env (with Gymnasium's time limit), a
    :class:`PhysicsGuard`, :class:`DynamicsRandomization`, :class:`ActionDelay`,
    :class:`ObservationNoise`, and for a spec with ``[pixels]`` a
    :class:`~rlsim2real.wrappers.pixels.PixelObservation` (rendered frames, image terms). ``env.unwrapped`` is the MuJoCo env. Held-out terms
    (``heldout_params``) are present but stay nominal unless pinned.

    Args:
        spec: An :class:`EnvSpec`, a spec name (``"hopper"``) or a path.
        seed: Seeds the samplers and the first reset.
        distribution: What to sample; defaults to the spec's training box.
        randomize: ``False`` pins every term to its nominal value.
        render_mode: Passed to the env.

    Returns:
        The wrapped env; ``env.get_wrapper_attr("params")`` gives this episode's values.
    """
    spec = load_env_spec(spec)
    # Before the model compiles: its warnings (e.g. deprecated compiler attributes of an
    # asset) are counted and rate-limited like the simulation's, not appended to a file in
    # the working directory.
    install_warning_handler()
    space = spec.all_params
    dist = distribution if distribution is not None else BoxDistribution(spec.params)
    env = PhysicsGuard(make_base_env(spec, render_mode))
    env = DynamicsRandomization(env, space.select("model"), dist, seed, spec.resample_every)
    env = ActionDelay(env, space.select("action"), distribution=dist, seed=seed)
    env = ObservationNoise(env, space.select("obs"), distribution=dist, seed=seed, resample_every=spec.resample_every)
    if spec.pixels is not None:
        env = PixelObservation(env, space.select("image"), distribution=dist, seed=seed,
                               resample_every=spec.resample_every, **spec.pixels.kwargs())
    if not randomize:
        env.pin({})
    return env


def make_real_env(
    spec: EnvSpec | str | os.PathLike,
    real_set: str | Mapping[str, float],
    seed: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """A held-out "real" env: fixed values, no randomization.

    Args:
        spec: An :class:`EnvSpec`, a spec name or a path.
        real_set: A real set's name, ``"nominal"``, or ``{param: value}`` (parameters not
            named stay nominal).
        seed: Seeds the first reset (and observation noise, if any).

    Raises:
        SpecError: on an unknown set or parameter name, or an unphysical value.
    """
    spec = load_env_spec(spec)
    if isinstance(real_set, str):
        values = {} if real_set == "nominal" and "nominal" not in spec.real_sets else spec.real_set(real_set)
    else:
        values = dict(real_set)
    env = make_env(spec, seed=seed, randomize=False, render_mode=render_mode)
    try:
        env.pin(values)
    except SpecError as exc:
        raise SpecError(f"{spec.source}: {exc}") from None
    return env
