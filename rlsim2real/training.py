"""Train a policy from an experiment spec: ``rs.train(...)`` / ``rlsim2real train``.

The learner process owns the strategy (and so the randomization distribution) and pushes
it to every env worker; each worker samples its own parameters with its own seed. Every
``checkpoint_every`` steps the model, its ``VecNormalize`` statistics and the strategy state
are written together, atomically; ``resume=True`` continues from the newest checkpoint with
the step count, normalization and distribution it had.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import CSVOutputFormat, Logger, configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

from rlsim2real.agents.threads import limit_torch_threads
from rlsim2real.distributions import Distribution
from rlsim2real.factory import make_env
from rlsim2real.io import atomic_write, write_json
from rlsim2real.params import SpecError
from rlsim2real.runs import (
    Run, RunLock, check_device, checkpoint_folder, check_new_run_dir, check_resumable, check_writable, find_resumable, load_model_file,
    load_normalizer, load_pickle,
)
from rlsim2real.specs import EnvSpec, ExperimentSpec, algorithm_class, load_experiment_spec
from rlsim2real.strategies import Strategy, make_strategy
from stable_baselines3.common.preprocessing import is_image_space
from rlsim2real.strategies.feedback import StrategyFeedback
from rlsim2real.targets import TargetSource


def _worker(spec: EnvSpec, seed: int, distribution: Distribution):
    def build():
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            # A SubprocVecEnv worker: Ctrl-C in a terminal reaches the whole process group;
            # the learner handles it (and saves a checkpoint through the workers), so the
            # workers must not die of it first.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return Monitor(make_env(spec, seed=seed, distribution=distribution))

    return build


def make_vec_env(
    spec: EnvSpec, n_envs: int, seed: int, distribution: Distribution, kind: str = "dummy", reseed: bool = True,
    threads: int = 1, backend: str = "mujoco_batch", backend_options: dict[str, Any] | None = None,
) -> VecEnv:
    """``n_envs`` randomized workers; worker ``i`` is seeded ``seed + i``.

    Args:
        spec: The env spec.
        n_envs: Number of workers.
        seed: Base seed.
        distribution: The initial distribution every worker samples from.
        kind: ``"dummy"`` (in process), ``"subproc"`` (one process per worker) or
            ``"batched"`` (one :class:`~rlsim2real.batched.BatchedVecEnv`: the worlds
            stepped together on ``threads`` threads, built-in tasks only).
        reseed: Seed the first reset (``False`` when sampler states are restored instead).
        threads: Simulation threads of a batched env (0: all CPUs).
        backend: Simulation backend of a batched env (``"mujoco_batch"`` or ``"warp"``).
        backend_options: That backend's options (``warp``: ``device``, ``nconmax``, ``njmax``, ``deterministic``).
    """
    if kind == "batched":
        from rlsim2real.batched import BatchedVecEnv

        venv = BatchedVecEnv(spec, n_envs, seed=seed, distribution=distribution, threads=threads, backend=backend,
                             backend_options=backend_options)
        if reseed:
            venv.seed(seed)
        return venv
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
            folder = checkpoint_folder(self.run_dir, self.num_timesteps)
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
    normalizer = model.get_vec_normalize_env()  # under SB3's VecTransposeImage for images
    if normalizer is not None:
        atomic_write(folder / "vecnormalize.pkl", normalizer.save)
    atomic_write(folder / "strategy.pkl", lambda p: _pickle(p, strategy.state_dict()))
    samplers = venv.env_method("sampler_state") if venv is not None else []
    atomic_write(folder / "samplers.pkl", lambda p: _pickle(p, samplers))
    write_json(folder / "strategy.json", strategy.summary())
    atomic_write(folder / "model.zip", model.save, suffix=".zip")


def _pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)


def restore_strategy(strategy: Strategy, checkpoint: Path) -> None:
    """Load the strategy state of ``checkpoint`` (``strategy.pkl``; older runs: ``strategy.json``)."""
    state_file = checkpoint / "strategy.pkl"
    if state_file.is_file():
        strategy.load_state_dict(load_pickle(state_file, "strategy state"))
    else:
        strategy.load_state_dict(json.loads((checkpoint / "strategy.json").read_text()))


def restore_samplers(venv: VecEnv, checkpoint: Path) -> bool:
    """Give every worker its saved sampler state; ``False`` if the checkpoint has none."""
    state_file = checkpoint / "samplers.pkl"
    if not state_file.is_file():
        return False
    states = load_pickle(state_file, "sampler state")
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
    from rlsim2real.wrappers.stability import LOG_ENV

    # MuJoCo's warnings (from workers too: they inherit the environment) go to the run's
    # logs, rate-limited, instead of stderr and MUJOCO_LOG.TXT in the working directory.
    previous = os.environ.get(LOG_ENV)
    os.environ[LOG_ENV] = str(run_dir / "logs" / "mujoco.log")
    try:
        return _train_logged(spec, run_dir, checkpoint, resume, evaluate, progress_bar, verbose)
    finally:
        if previous is None:
            os.environ.pop(LOG_ENV, None)
        else:
            os.environ[LOG_ENV] = previous


def _train_logged(spec, run_dir, checkpoint, resume, evaluate, progress_bar, verbose):
    limit_torch_threads()

    strategy = make_strategy(spec.strategy, spec.train_env, spec.strategy_settings, spec.seed)
    if checkpoint is not None:
        restore_strategy(strategy, checkpoint)
    resumed_samplers = checkpoint is not None and (checkpoint / "samplers.pkl").is_file()
    venv = make_vec_env(
        spec.train_env, spec.n_envs, spec.seed, strategy.distribution, spec.vec_env, reseed=not resumed_samplers,
        threads=spec.threads, backend=spec.backend, backend_options=spec.backend_options,
    )
    try:
        if resumed_samplers:
            restore_samplers(venv, checkpoint)
        if spec.normalize:
            stats = checkpoint / "vecnormalize.pkl" if checkpoint is not None else None
            # Images are not standardized (the CNN scales uint8 pixels itself); rewards are.
            image = is_image_space(venv.observation_space)
            venv = load_normalizer(stats, venv) if stats and stats.is_file() else VecNormalize(venv, norm_obs=not image)
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
    logs = run_dir / "logs"
    resumed_at = int(model.num_timesteps) if checkpoint is not None else None
    model.set_logger(_run_logger(logs, verbose, resumed_at))
    if resumed_at is not None:
        _truncate_episode_log(logs / "episodes.csv", resumed_at)
    feedback = StrategyFeedback(strategy, spec.env.success_return, logs / "episodes.csv")
    feedback.count_logged()
    interrupts = InterruptCheckpoint(run_dir, strategy)
    callbacks: list[BaseCallback] = [feedback, interrupts]
    if spec.checkpoint_every:
        callbacks.append(RunCheckpoint(run_dir, spec.checkpoint_every, strategy))
    remaining = spec.timesteps - model.num_timesteps
    start = time.time()
    if progress_bar is None:
        progress_bar = sys.stderr.isatty()
    verb = "resuming" if resumed_at is not None else "training"
    print(
        f"rlsim2real: {verb} {spec.name} ({spec.strategy} DR, {spec.agent.algorithm}) in {run_dir}: "
        f"{int(model.num_timesteps):,} -> {spec.timesteps:,} steps, {spec.n_envs} envs, device {model.device}",
        file=sys.stderr, flush=True,
    )
    try:
        with interrupts.catching():
            if remaining > 0:
                model.learn(
                    total_timesteps=remaining,
                    callback=CallbackList(callbacks),
                    reset_num_timesteps=checkpoint is None,
                    progress_bar=progress_bar,
                )
        if interrupts.signum is not None:
            folder = interrupts.save(model)
            status = _summary(feedback, model, start, "interrupted")
            status.update(signal=signal.Signals(interrupts.signum).name, checkpoint=str(folder.relative_to(run_dir)))
            write_json(run_dir / "run.json", status)
            raise TrainingInterrupted(interrupts.signum, run_dir, int(model.num_timesteps), spec)
        save_artifacts(model, strategy, run_dir)
        strategy.save_figures(run_dir)
    except (TrainingInterrupted, SpecError):
        raise
    except Exception as exc:
        status = _summary(feedback, model, start, "failed")
        status["error"] = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):  # a full or read-only disk may refuse this too
            write_json(run_dir / "run.json", status)
        raise SpecError(
            f"{run_dir}: training failed at step {int(model.num_timesteps):,}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; run.json marks the run failed, its checkpoints are kept"
        ) from exc
    finally:
        warnings_seen = _mujoco_warnings(venv)
        venv.close()
    status = _summary(feedback, model, start, "complete")
    status["mujoco_warnings"] = warnings_seen
    write_json(run_dir / "run.json", status)
    _warn_instability(status)
    run = Run.open(run_dir)
    if spec.evaluate if evaluate is None else evaluate:
        from rlsim2real.evaluation import evaluate_transfer

        report = evaluate_transfer(run, episodes=spec.eval_episodes, sets=spec.eval_sets, grid=spec.eval_grid)
        print(report.table())
    return run


def _mujoco_warnings(venv: VecEnv) -> int:
    try:
        counts = dict(venv.env_method("mujoco_warning_count"))  # one entry per process
    except Exception:  # a worker that died cannot report; the count is then unknown
        return -1
    return int(sum(counts.values()))


def _summary(feedback: StrategyFeedback, model: Any, start: float, status: str) -> dict[str, Any]:
    n = feedback.episodes
    return {
        "status": status,
        "timesteps": int(model.num_timesteps),
        "wall_seconds": round(time.time() - start, 2),
        "episodes": n,
        "unstable_episodes": feedback.unstable,
        "unstable_fraction": round(feedback.unstable / n, 4) if n else 0.0,
        "very_short_episodes": feedback.very_short,
        "very_short_fraction": round(feedback.very_short / n, 4) if n else 0.0,
        "strategy_updates": feedback.broadcasts,
    }


# Above these fractions of episodes, the end-of-training summary says loudly that the
# physics, not the policy, decided the run.
UNSTABLE_WARN = 0.05
SHORT_WARN = 0.5


def _warn_instability(status: dict[str, Any]) -> None:
    lines = []
    if status["unstable_fraction"] > UNSTABLE_WARN:
        lines.append(
            f"{status['unstable_episodes']:,} of {status['episodes']:,} episodes ({status['unstable_fraction']:.0%}) "
            "were cut short by unstable physics (NaN or diverging state)"
        )
    if status["very_short_fraction"] > SHORT_WARN:
        lines.append(
            f"{status['very_short_episodes']:,} of {status['episodes']:,} episodes ({status['very_short_fraction']:.0%}) "
            "lasted at most 2 steps"
        )
    for line in lines:
        print(f"rlsim2real: WARNING: {line}; check the randomization ranges and the timestep "
              "(see run.json and logs/episodes.csv)", file=sys.stderr, flush=True)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after saving a checkpoint at the current step."""

    def __init__(self, signum: int, run_dir: Path, step: int, spec: ExperimentSpec) -> None:
        self.signum, self.run_dir, self.step = signum, run_dir, step
        where = spec.path if spec.path is not None else spec.name
        self.resume_command = f"rlsim2real train {where} --out {run_dir} --resume"
        super().__init__(
            f"{signal.Signals(signum).name}: saved a checkpoint at step {step:,} in {run_dir}; "
            f"resume with: {self.resume_command}"
        )

    @property
    def exit_status(self) -> int:
        return 128 + int(self.signum)


class InterruptCheckpoint(BaseCallback):
    """Turns SIGINT/SIGTERM into a clean stop at the next env step, so the run can save a
    checkpoint at the step it reached (a second SIGINT aborts at once)."""

    def __init__(self, run_dir: Path, strategy: Strategy) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.strategy = strategy
        self.signum: int | None = None

    @contextlib.contextmanager
    def catching(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            self.signum = signum
            print(f"\nrlsim2real: {signal.Signals(signum).name} received; saving a checkpoint at the next step "
                  "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _on_step(self) -> bool:
        return self.signum is None

    def save(self, model: Any) -> Path:
        folder = checkpoint_folder(self.run_dir, model.num_timesteps)
        save_artifacts(model, self.strategy, folder)
        return folder


def _run_logger(logs: Path, verbose: int, resumed_at: int | None) -> Logger:
    """SB3's logger (CSV, TensorBoard, stdout when verbose); on resume the CSV keeps the
    rows up to the checkpoint and appends, instead of starting over."""
    formats = ["tensorboard"] + (["stdout"] if verbose else [])
    logger = configure(str(logs), formats)
    logger.output_formats.append(_ResumableCSV(logs / "progress.csv", resumed_at))
    return logger


class _ResumableCSV(CSVOutputFormat):
    """SB3's CSV writer, opened on the rows a resumed run keeps (those up to its step)."""

    def __init__(self, path: Path, keep_until: int | None) -> None:
        rows, keys = [], []
        if keep_until is not None and path.is_file():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                keys = list(reader.fieldnames or [])
                rows = [r for r in reader if _step_of(r) <= keep_until]
        super().__init__(str(path))
        if keys:
            writer = csv.DictWriter(self.file, keys, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            self.file.flush()
            self.keys = keys


def _step_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("time/total_timesteps") or row.get("timesteps") or 0)
    except ValueError:
        return 0.0


def _truncate_episode_log(path: Path, keep_until: int) -> None:
    """Drop the episodes a killed run logged after its checkpoint: the resumed run reruns them."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        lines = fh.read().splitlines(keepends=True)
    if not lines:
        return
    header, body = lines[0], lines[1:]
    kept = [line for line in body if _step_of({"timesteps": line.split(",", 1)[0]}) <= keep_until]
    if len(kept) != len(body):
        atomic_write(path, lambda p: p.write_text(header + "".join(kept)))


def _build_model(spec: ExperimentSpec, venv: VecEnv, checkpoint: Path | None, verbose: int) -> Any:
    if checkpoint is not None:
        return load_model_file(checkpoint / "model.zip", spec.agent.algorithm, device=spec.device, env=venv)
    cls = algorithm_class(spec.agent.algorithm)
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
