"""Train a policy from an experiment spec: ``rs.train(...)`` / ``rlsim2real train``.

The learner process owns the strategy (and so the randomization distribution) and pushes
it to every env worker; each worker samples its own parameters with its own seed. Every
``checkpoint_every`` steps the model, its ``VecNormalize`` statistics and the strategy state
are written together, atomically; ``resume=True`` continues from the newest checkpoint with
the step count, normalization and distribution it had.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

from rlsim2real.distributions import Distribution
from rlsim2real.factory import make_env
from rlsim2real.io import atomic_write, write_json
from rlsim2real.params import SpecError
from rlsim2real.runs import Run, RunLock, check_device, check_new_run_dir, check_resumable, check_writable, find_resumable
from rlsim2real.specs import EnvSpec, ExperimentSpec, algorithm_class, load_experiment_spec
from rlsim2real.strategies import Strategy, make_strategy
from rlsim2real.strategies.feedback import StrategyFeedback
from rlsim2real.targets import TargetSource


def limit_torch_threads() -> None:
    """Use one torch thread on CPU unless ``RLSIM2REAL_TORCH_THREADS`` says otherwise.

    The policies here are small: extra intra-op threads buy little and, on a machine whose
    cores also step the envs, spin against them (a 10x slowdown was seen on 2 busy cores).
    """
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("RLSIM2REAL_TORCH_THREADS", "1"))))


def _worker(spec: EnvSpec, seed: int, distribution: Distribution):
    def build():
        return Monitor(make_env(spec, seed=seed, distribution=distribution))

    return build


def make_vec_env(
    spec: EnvSpec, n_envs: int, seed: int, distribution: Distribution, kind: str = "dummy", reseed: bool = True
) -> VecEnv:
    """``n_envs`` randomized workers; worker ``i`` is seeded ``seed + i``.

    Args:
        spec: The env spec.
        n_envs: Number of workers.
        seed: Base seed.
        distribution: The initial distribution every worker samples from.
        kind: ``"dummy"`` (in process) or ``"subproc"`` (one process per worker).
        reseed: Seed the first reset (``False`` when sampler states are restored instead).
    """
    fns = [_worker(spec, seed + i, distribution) for i in range(n_envs)]
    venv = SubprocVecEnv(fns) if kind == "subproc" else DummyVecEnv(fns)
    if reseed:
        venv.seed(seed)
    return venv


class RunCheckpoint(BaseCallback):
    """Every ``every`` steps, save the model, normalization, strategy state and every
    worker's sampler state together (see :func:`save_artifacts`)."""

    def __init__(self, run_dir: Path, every: int, strategy: Strategy) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.every = every
        self.strategy = strategy
        self._next = 0

    def _init_callback(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.every + 1) * self.every
            folder = self.run_dir / "checkpoints" / f"step_{self.num_timesteps:09d}"
            save_artifacts(self.model, self.strategy, folder)
        return True


def save_artifacts(model: Any, strategy: Strategy, folder: Path) -> None:
    """Write a faithful continuation point into ``folder``.

    ``vecnormalize.pkl`` (observation statistics), ``strategy.pkl`` (everything the strategy
    needs to continue: arrays, queues, networks, generators), ``samplers.pkl`` (each worker's
    sampler state, so a resumed run continues the parameter stream), ``strategy.json`` (a
    readable summary) and ``model.zip``. Each file is renamed into place when complete;
    ``model.zip`` goes last, so a folder with a ``model.zip`` always has the rest.
    """
    folder.mkdir(parents=True, exist_ok=True)
    venv = model.get_env()
    if isinstance(venv, VecNormalize):
        atomic_write(folder / "vecnormalize.pkl", venv.save)
    atomic_write(folder / "strategy.pkl", lambda p: _pickle(p, strategy.state_dict()))
    samplers = venv.env_method("sampler_state") if venv is not None else []
    atomic_write(folder / "samplers.pkl", lambda p: _pickle(p, samplers))
    write_json(folder / "strategy.json", strategy.summary())
    atomic_write(folder / "model.zip", model.save, suffix=".zip")


def _pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read checkpoint state ({type(exc).__name__}: {exc})") from None


def restore_strategy(strategy: Strategy, checkpoint: Path) -> None:
    """Load the strategy state of ``checkpoint`` (``strategy.pkl``; older runs: ``strategy.json``)."""
    state_file = checkpoint / "strategy.pkl"
    if state_file.is_file():
        strategy.load_state_dict(_unpickle(state_file))
    else:
        strategy.load_state_dict(json.loads((checkpoint / "strategy.json").read_text()))


def restore_samplers(venv: VecEnv, checkpoint: Path) -> bool:
    """Give every worker its saved sampler state; ``False`` if the checkpoint has none."""
    state_file = checkpoint / "samplers.pkl"
    if not state_file.is_file():
        return False
    states = _unpickle(state_file)
    if len(states) != venv.num_envs:
        raise SpecError(f"{state_file}: holds {len(states)} worker states; this run has n_envs = {venv.num_envs}")
    for i, state in enumerate(states):
        venv.env_method("load_sampler_state", state, indices=[i])
    return True


def _out_dir(spec: ExperimentSpec, out: str | os.PathLike | None, resume: bool) -> Path:
    if out is not None:
        path = Path(out)
        if resume:
            if not (path / "config.json").is_file():
                raise SpecError(f"{path}: cannot resume: not a run directory (no config.json)")
            return path
        return check_new_run_dir(path)
    base = Path("runs") / spec.name
    if resume:
        return find_resumable(Path("runs"), spec.name)
    path, i = base, 1
    while path.exists() and any(path.iterdir()):
        i += 1
        path = base.with_name(f"{spec.name}_{i}")
    return path


def train(
    experiment: str | os.PathLike | ExperimentSpec,
    timesteps: int | None = None,
    seed: int | None = None,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    resume: bool = False,
    evaluate: bool | None = None,
    progress_bar: bool | None = None,
    verbose: int = 0,
) -> Run:
    """Train the experiment's agent on its randomized env; evaluate transfer at the end.

    Args:
        experiment: An experiment name, ``.toml`` path or :class:`ExperimentSpec`.
        timesteps: Total environment steps (overrides the spec).
        seed: Seed (overrides the spec).
        out: Run directory (default ``runs/<name>``, numbered if taken).
        device: ``auto``, ``cpu`` or ``cuda`` (overrides the spec).
        resume: Continue the run in ``out`` from its newest checkpoint.
        evaluate: Evaluate on the held-out sets at the end (default: the spec's setting).
        progress_bar: Show SB3's progress bar (default: when stderr is a terminal).
        verbose: SB3 verbosity; 1 also prints the log table.

    Returns:
        The finished :class:`Run`.

    Raises:
        SpecError: on invalid specs or an unusable output directory, before anything is written.
    """
    spec = experiment if isinstance(experiment, ExperimentSpec) else load_experiment_spec(experiment)
    spec = replace(
        spec,
        timesteps=spec.timesteps if timesteps is None else int(timesteps),
        seed=spec.seed if seed is None else int(seed),
        device=spec.device if device is None else device,
    )
    if spec.timesteps < 1:
        raise SpecError(f"timesteps must be positive, got {spec.timesteps}")
    check_device(spec.device, "device")
    run_dir = _out_dir(spec, out, resume)
    with RunLock(run_dir, "train"):
        if resume:
            checkpoint = check_resumable(run_dir, spec.to_dict()).checkpoints()[-1]
        else:
            checkpoint = None
            check_new_run_dir(run_dir)
        check_writable(run_dir)
        return _train_locked(spec, run_dir, checkpoint, resume, evaluate, progress_bar, verbose)


def _train_locked(spec, run_dir, checkpoint, resume, evaluate, progress_bar, verbose):
    limit_torch_threads()

    strategy = make_strategy(spec.strategy, spec.env, spec.strategy_settings, spec.seed)
    if checkpoint is not None:
        restore_strategy(strategy, checkpoint)
    resumed_samplers = checkpoint is not None and (checkpoint / "samplers.pkl").is_file()
    venv = make_vec_env(
        spec.train_env, spec.n_envs, spec.seed, strategy.distribution, spec.vec_env, reseed=not resumed_samplers
    )
    try:
        if resumed_samplers:
            restore_samplers(venv, checkpoint)
        if spec.normalize:
            stats = checkpoint / "vecnormalize.pkl" if checkpoint is not None else None
            venv = VecNormalize.load(str(stats), venv) if stats and stats.is_file() else VecNormalize(venv)
            venv.training = True
        strategy.broadcast(venv)
        model = _build_model(spec, venv, checkpoint, verbose)
        # Reads and checks a target file, if one is named: a bad one fails here, before
        # anything is written.
        targets = None
        if spec.target is not None:
            normalizer = venv if isinstance(venv, VecNormalize) else None
            obs_shape = tuple(venv.observation_space.shape)
            targets = TargetSource(spec.env, spec.target, model, normalizer, spec.seed + 50_000, obs_shape)
    except BaseException:
        venv.close()
        raise
    # Only now, with specs, envs and model all built, does the run directory appear.
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_json(run_dir / "config.json", spec.to_dict())
    write_json(run_dir / "run.json", {"status": "running", "timesteps": int(model.num_timesteps)})

    if targets is not None and getattr(model, "dann_enabled", False):
        model.set_target_provider(targets)
    formats = ["csv", "tensorboard"] + (["stdout"] if verbose else [])
    model.set_logger(configure(str(run_dir / "logs"), formats))
    feedback = StrategyFeedback(strategy, spec.env.success_return, run_dir / "logs" / "episodes.csv")
    callbacks: list[BaseCallback] = [feedback]
    if spec.checkpoint_every:
        callbacks.append(RunCheckpoint(run_dir, spec.checkpoint_every, strategy))
    remaining = spec.timesteps - model.num_timesteps
    start = time.time()
    if progress_bar is None:
        progress_bar = sys.stderr.isatty()
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=checkpoint is None,
                progress_bar=progress_bar,
            )
        save_artifacts(model, strategy, run_dir)
        strategy.save_figures(run_dir)
    finally:
        venv.close()
    write_json(
        run_dir / "run.json",
        {
            "status": "complete",
            "timesteps": int(model.num_timesteps),
            "wall_seconds": round(time.time() - start, 2),
            "episodes": feedback.episodes,
            "unstable_episodes": feedback.unstable,
            "unstable_fraction": round(feedback.unstable / feedback.episodes, 4) if feedback.episodes else 0.0,
            "strategy_updates": feedback.broadcasts,
        },
    )
    run = Run.open(run_dir)
    if spec.evaluate if evaluate is None else evaluate:
        from rlsim2real.evaluation import evaluate_transfer

        report = evaluate_transfer(run, episodes=spec.eval_episodes, sets=spec.eval_sets, grid=spec.eval_grid)
        print(report.table())
    return run


def _build_model(spec: ExperimentSpec, venv: VecEnv, checkpoint: Path | None, verbose: int) -> Any:
    cls = algorithm_class(spec.agent.algorithm)
    if checkpoint is not None:
        return cls.load(checkpoint / "model.zip", env=venv, device=spec.device)
    extra = {"dann": dict(spec.agent.dann)} if spec.agent.dann else {}
    where = spec.agent.path or spec.agent.name
    try:
        return cls(
            spec.agent.policy,
            venv,
            seed=spec.seed,
            device=spec.device,
            verbose=verbose,
            policy_kwargs=_policy_kwargs(spec.agent.policy_kwargs),
            **extra,
            **spec.agent.hyperparameters,
        )
    except (ValueError, TypeError, AssertionError, KeyError) as exc:
        # SB3 checks hyperparameter values (batch sizes, policy names) when it builds the
        # model: report them as spec errors, in one line, naming the agent file.
        raise SpecError(f"{where}: cannot build {spec.agent.algorithm} with these settings: {type(exc).__name__}: {exc}") from None


def _policy_kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    # TOML has no Python objects: activation functions are named ("tanh", "relu", ...).
    import torch.nn as nn

    out = dict(raw)
    act = out.get("activation_fn")
    if isinstance(act, str):
        table = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}
        if act.lower() not in table:
            raise SpecError(f"policy_kwargs.activation_fn: expected one of {', '.join(table)}, got {act!r}")
        out["activation_fn"] = table[act.lower()]
    extractor = out.get("features_extractor_class")
    if isinstance(extractor, str):
        from rlsim2real.dann import MlpEncoder

        extractors = {"mlp": MlpEncoder}
        if extractor not in extractors:
            raise SpecError(f"policy_kwargs.features_extractor_class: expected one of {', '.join(extractors)}, got {extractor!r}")
        out["features_extractor_class"] = extractors[extractor]
    return out
