"""A run directory: what ``train`` writes and ``evaluate`` reads.

Layout of ``runs/<name>/``::

    config.json        the resolved experiment (env spec, agent, strategy, budget, seed)
    model.zip          final policy (SB3 format)
    vecnormalize.pkl   observation-normalization statistics (if normalized)
    strategy.json      randomization/strategy state
    run.json           status ("running" | "complete"), timesteps, wall time
    checkpoints/step_000010000/{model.zip, vecnormalize.pkl, strategy.json}
    logs/              progress.csv and TensorBoard events
    transfer.json / transfer.md / transfer.png   written by evaluation
    .lock              while a command writes into the run (see :class:`RunLock`)

Evaluating a checkpoint (``evaluate --checkpoint``/``--step``) writes its report into that
checkpoint's folder, never over the run's own ``transfer.*``.

Besides :class:`Run`, this module holds the checks a command makes before it builds or
writes anything: :func:`find_resumable` / :func:`check_resumable` for ``--resume``,
:func:`check_new_run_dir`, :func:`check_writable`, :func:`check_device`, and loaders that
turn a truncated or corrupt ``model.zip`` / ``vecnormalize.pkl`` into one-line errors.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsim2real.params import SpecError
from rlsim2real.runlock import LOCK_NAME, RunLock, refusal
from rlsim2real.specs import EnvSpec, algorithm_class

__all__ = [
    "Run", "RunLock", "check_device", "check_new_run_dir", "check_resumable", "check_writable",
    "config_difference", "find_resumable", "load_model_file", "load_normalizer",
]

BUDGET_KEYS = ("timesteps",)
"""Top-level config keys a resumed run may change: the budget."""


@dataclass
class Run:
    """A run directory and its resolved configuration.

    Attributes:
        path: The directory.
        config: Contents of ``config.json``.
    """

    path: Path
    config: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Run":
        """Open a run directory written by :func:`rlsim2real.train`.

        Raises:
            SpecError: if it is not a run directory.
        """
        path = Path(path)
        cfg = path / "config.json"
        if not cfg.is_file():
            raise SpecError(f"{path}: not a run directory (no config.json)")
        try:
            config = json.loads(cfg.read_text())
        except json.JSONDecodeError as exc:
            raise SpecError(f"{cfg}: corrupt config ({exc})") from None
        return cls(path, config)

    @property
    def env_spec(self) -> EnvSpec:
        return EnvSpec.from_dict(self.config["env"])

    @property
    def algorithm(self) -> str:
        return self.config["agent"]["algorithm"]

    @property
    def status(self) -> dict[str, Any]:
        """Contents of ``run.json`` (``{"status": "unknown"}`` if it is missing or unreadable)."""
        f = self.path / "run.json"
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            return {"status": "unknown"}
        return data if isinstance(data, dict) else {"status": "unknown"}

    @property
    def complete(self) -> bool:
        return self.status.get("status") == "complete" and (self.path / "model.zip").is_file()

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first."""
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("step_*") if (p / "model.zip").is_file())

    def model_dir(self) -> Path:
        """The run root, where the final policy lives; never a checkpoint in its place.

        Raises:
            SpecError: if the run has no ``model.zip``, naming the checkpoints that could be
                chosen instead (``--checkpoint`` / ``--step``).
        """
        if (self.path / "model.zip").is_file():
            return self.path
        status = self.status
        state = f"run {status.get('status', 'unknown')} at step {status.get('timesteps', '?')}"
        steps = [_step_of(c) for c in self.checkpoints()]
        if not steps:
            raise SpecError(f"{self.path / 'model.zip'}: no such file ({state}) and no checkpoint to choose instead")
        shown = ", ".join(str(s) for s in steps[-8:])
        raise SpecError(
            f"{self.path / 'model.zip'}: no such file ({state}); choose a checkpoint with --checkpoint PATH "
            f"or --step N (steps: {shown})"
        )

    def checkpoint(self, step: int | None = None, path: str | os.PathLike | None = None) -> Path:
        """A checkpoint folder, by step or by path (absolute, or relative to the cwd or the run).

        Args:
            step: The step in the folder name ``checkpoints/step_<step>``.
            path: A checkpoint folder, or the ``model.zip`` inside one.

        Raises:
            SpecError: if there is no such checkpoint, listing the steps there are.
        """
        steps = ", ".join(str(_step_of(c)) for c in self.checkpoints()[-8:]) or "none yet"
        if step is not None:
            folder = checkpoint_folder(self.path, step)
            if not (folder / "model.zip").is_file():
                raise SpecError(f"{self.path}: --step {step}: no checkpoint at that step; steps: {steps}")
            return folder
        if path is None:
            raise SpecError("checkpoint: expected a step or a path")
        given = Path(path)
        for candidate in (given, self.path / given):
            folder = candidate.parent if candidate.name == "model.zip" else candidate
            if (folder / "model.zip").is_file():
                return folder
        raise SpecError(f"{given}: --checkpoint: not a checkpoint folder (no model.zip); steps of {self.path}: {steps}")

    def load_model(self, folder: Path | None = None, device: str = "auto", env: Any = None) -> Any:
        """Load the SB3 model from ``folder`` (default :meth:`model_dir`).

        Raises:
            SpecError: naming the file, if it is missing, empty, truncated or corrupt.
        """
        folder = folder or self.model_dir()
        return load_model_file(folder / "model.zip", self.algorithm, device=device, env=env)

    def __str__(self) -> str:
        return str(self.path)


def checkpoint_folder(run_dir: Path, step: int) -> Path:
    """Where the checkpoint taken at ``step`` lives: ``run_dir/checkpoints/step_<step>``."""
    return Path(run_dir) / "checkpoints" / f"step_{int(step):09d}"


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


# ------------------------------------------------------------------------ loaders
def load_model_file(path: Path, algorithm: str, device: str = "auto", env: Any = None) -> Any:
    """Load an SB3 ``model.zip``, with a one-line error for a broken file.

    Args:
        path: The ``model.zip``.
        algorithm: ``"recurrent_ppo"`` or ``"ppo"``.
        device: Torch device.
        env: Env to attach (optional).

    Raises:
        SpecError: naming the file, if it is missing, empty, truncated or not a model.
    """
    path = Path(path)
    _check_nonempty(path, "model")
    if not zipfile.is_zipfile(path):
        raise SpecError(f"{path}: not a readable model (not a zip archive: truncated or corrupt)")
    cls = algorithm_class(algorithm)
    try:
        return cls.load(path, env=env, device=device)
    except SpecError:
        raise
    except Exception as exc:  # SB3 raises whatever its readers raise on a broken archive
        raise SpecError(f"{path}: not a readable {algorithm} model ({type(exc).__name__}: {_one_line(exc)})") from None


def load_normalizer(path: Path, venv: Any = None) -> Any:
    """Load ``vecnormalize.pkl``, with a one-line error for a broken file.

    Args:
        path: The pickle SB3's ``VecNormalize.save`` wrote.
        venv: If given, the statistics are attached to it (``VecNormalize.load``); otherwise
            the unpickled object is returned as is (for frozen normalization in evaluation).

    Raises:
        SpecError: naming the file, if it is missing, empty, truncated or not a VecNormalize.
    """
    path = Path(path)
    if venv is not None:
        _check_nonempty(path, "normalization")
        try:
            from stable_baselines3.common.vec_env import VecNormalize

            return VecNormalize.load(str(path), venv)
        except Exception as exc:  # unpickling raises many types on a damaged file
            raise SpecError(f"{path}: not a readable VecNormalize file ({type(exc).__name__}: {_one_line(exc)})") from None
    obj = load_pickle(path, "VecNormalize", "normalization")
    if not hasattr(obj, "normalize_obs"):
        raise SpecError(f"{path}: expected SB3 VecNormalize statistics, got a {type(obj).__name__}")
    return obj


def load_pickle(path: Path, what: str, kind: str | None = None) -> Any:
    """Unpickle a file this project wrote (normalization, strategy or sampler state), with a
    one-line error for a broken one.

    Args:
        path: The file.
        what: What it should hold, for the message (``"VecNormalize"``, ``"strategy state"``).
        kind: How a missing or empty file is named (default: ``what``).

    Raises:
        SpecError: naming the file, if it is missing, empty, truncated or corrupt.
    """
    path = Path(path)
    _check_nonempty(path, kind or what)
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except Exception as exc:  # unpickling raises many types on a damaged file
        raise SpecError(f"{path}: not a readable {what} file ({type(exc).__name__}: {_one_line(exc)})") from None


def _check_nonempty(path: Path, what: str) -> None:
    if not path.is_file():
        raise SpecError(f"{path}: no such {what} file")
    if path.stat().st_size == 0:
        raise SpecError(f"{path}: empty {what} file (truncated when it was written?)")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


# ------------------------------------------------------------- checks before writing
def check_device(device: str, where: str = "--device") -> str:
    """Refuse a torch device that is not available here, before anything runs.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        where: Names the setting in the message.

    Returns:
        ``device`` unchanged.

    Raises:
        SpecError: on an unknown device name, or CUDA without a CUDA device.
    """
    text = str(device)
    if text not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", text):
        raise SpecError(f"{where}: expected auto, cpu, cuda or cuda:N, got {text!r}")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SpecError(f"{where} {text!r}: no CUDA device is available here; use auto or cpu")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise SpecError(f"{where} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse a folder that cannot take new files (read-only, full, not a folder).

    A small probe file is written, synced and removed, so a full disk shows too.

    Raises:
        SpecError: naming the folder and the reason.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecError(f"{folder}: not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
    except OSError as exc:
        raise SpecError(f"{folder}: cannot write here: {exc.strerror}") from None
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    except OSError as exc:
        raise SpecError(f"{folder}: cannot write here: {exc.strerror}") from None
    finally:
        os.close(fd)
        Path(probe).unlink(missing_ok=True)


def check_new_run_dir(run_dir: str | os.PathLike) -> Path:
    """Refuse to start a new run in a directory that holds anything (its own lock aside).

    Call it after taking the :class:`RunLock` too: between a first check and the lock,
    another run may have finished there.

    Raises:
        SpecError: if ``run_dir`` is a file or already holds files.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SpecError(f"{run_dir}: is a file; expected a directory for the run (--out)")
    if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        raise SpecError(f"{run_dir}: output directory exists and is not empty; pass resume=True / --resume to continue it")
    return run_dir


# ---------------------------------------------------------------------------- resume
def run_state(run_dir: Path) -> str:
    """``"complete"``, ``"in use (pid N, purpose)"`` or ``"interrupted at step N"``."""
    run = Run(run_dir, {})
    if run.complete:
        return "complete"
    holder = RunLock.holder(run_dir)
    if holder is not None and not RunLock.held_by_this_process(run_dir):
        return f"in use (pid {holder.get('pid')}, {holder.get('purpose')})"
    return f"interrupted at step {run.status.get('timesteps', 0)}"


def find_resumable(runs_dir: str | os.PathLike, name: str) -> Path:
    """The run ``--resume`` without ``--out`` continues: the newest interrupted one.

    Candidates are ``runs_dir/<name>``, ``runs_dir/<name>_2``, ``runs_dir/<name>_3``, ...
    holding a ``config.json``; "interrupted" means not complete and not held by a live
    process. The newest is the one whose ``config.json`` (written when the run started)
    is youngest.

    Args:
        runs_dir: The folder new runs go to (``runs``).
        name: The experiment's name.

    Returns:
        The run directory.

    Raises:
        SpecError: if there is none, listing the runs that exist and their state.
    """
    runs_dir = Path(runs_dir)
    pattern = re.compile(re.escape(name) + r"(_[0-9]+)?")
    found: list[tuple[float, int, Path, str]] = []
    for path in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match is None or not (path / "config.json").is_file():
            continue
        try:
            if Run.open(path).config.get("name", name) != name:
                continue  # another experiment whose name looks like a numbered run of this one
        except SpecError:
            continue
        number = int(match.group(1)[1:]) if match.group(1) else 1
        found.append(((path / "config.json").stat().st_mtime, number, path, run_state(path)))
    interrupted = [f for f in found if f[3].startswith("interrupted")]
    if interrupted:
        return max(interrupted, key=lambda f: (f[0], f[1]))[2]
    if not found:
        raise SpecError(f"{runs_dir / name}: no run of {name!r} to resume; start one without --resume")
    listed = ", ".join(f"{path} ({state})" for _, _, path, state in sorted(found, key=lambda f: f[1]))
    raise SpecError(f"no interrupted run of {name!r} to resume: {listed}; pass --out RUN_DIR to choose one")


def check_resumable(run_dir: str | os.PathLike, new_config: Mapping[str, Any]) -> "Run":
    """Refuse to resume a run that is complete, held by another process, or another experiment.

    Args:
        run_dir: The run directory.
        new_config: The experiment as it would be written now (``ExperimentSpec.to_dict()``,
            with the command line's overrides applied).

    Returns:
        The :class:`Run`.

    Raises:
        SpecError: in one line: not a run directory; the run is complete; another live
            process holds its lock; it has no checkpoint to continue from; or the
            experiment differs from its ``config.json`` in anything but the budget
            (naming the first difference as a dotted key path, with both values).
    """
    run = Run.open(run_dir)
    if run.complete:
        steps = run.status.get("timesteps", "?")
        raise SpecError(
            f"{run.path}: cannot resume: the run is complete ({steps} steps); resume continues interrupted runs, "
            f"so start a new run (another --out) to train more"
        )
    holder = RunLock.holder(run.path)
    if holder is not None and not RunLock.held_by_this_process(run.path):
        raise SpecError(f"cannot resume: {refusal(run.path, holder)}")
    difference = config_difference(run.config, new_config)
    if difference is not None:
        key, old, new = difference
        raise SpecError(
            f"{run.path}: cannot resume: the experiment differs from the run's config.json at {key}: "
            f"was {_shown(old)}, now {_shown(new)}; only the budget (timesteps) may change"
        )
    if not run.checkpoints():
        raise SpecError(f"{run.path}: cannot resume: no checkpoint yet; start a new run instead")
    return run


_ABSENT = object()
_PATH_KEYS = ("path", "file")  # spec files and the DANN target file


def config_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first place two run configs differ, ignoring what may legitimately change.

    Ignored: the budget (top-level ``timesteps``); ``path`` / ``file`` values naming the same file
    (relative vs absolute, a symlink); a key absent on one side and ``null`` on the other
    (a setting added to the config format since the run was written).

    Returns:
        ``(dotted key path, old value, new value)``, or ``None`` if they match. A missing
        value is reported as the string ``"(absent)"``.
    """
    new = json.loads(json.dumps(dict(new), default=_jsonable))
    old = {k: v for k, v in old.items() if k not in BUDGET_KEYS}
    new = {k: v for k, v in new.items() if k not in BUDGET_KEYS}
    found = _diff(old, new, "")
    if found is None:
        return None
    key, a, b = found
    return key, "(absent)" if a is _ABSENT else a, "(absent)" if b is _ABSENT else b


def _diff(old: Any, new: Any, where: str) -> tuple[str, Any, Any] | None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in [*old, *(k for k in new if k not in old)]:
            a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
            sub = f"{where}.{key}" if where else str(key)
            if {a is _ABSENT, b is _ABSENT} == {True, False} and (a is None or b is None):
                continue
            if key in _PATH_KEYS and isinstance(a, str) and isinstance(b, str) and _same_file(a, b):
                continue
            found = _diff(a, b, sub)
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list):
        names_a, names_b = _names(old), _names(new)
        if names_a is not None and names_b is not None:
            # Lists of named entries (parameters): say which one differs, by name.
            if names_a != names_b:
                return f"{where} (names)", names_a, names_b
            for name, a, b in zip(names_a, old, new):
                found = _diff(a, b, f"{where}.{name}")
                if found is not None:
                    return found
            return None
        if len(old) != len(new) or not any(isinstance(v, (Mapping, list)) for v in (*old, *new)):
            # A short list of values (a range, a list of set names) is shown whole.
            return None if _same_values(old, new) else (where, old, new)
        for i, (a, b) in enumerate(zip(old, new)):
            found = _diff(a, b, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if old != new or (type(old) is not type(new) and not _same_number(old, new)):
        return where, old, new
    return None


def _same_values(old: list[Any], new: list[Any]) -> bool:
    return len(old) == len(new) and all(_diff(a, b, "") is None for a, b in zip(old, new))


def _same_number(a: Any, b: Any) -> bool:
    # 1 and 1.0 are the same setting (TOML and JSON keep the difference); True and 1 are not.
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return number(a) and number(b) and a == b


def _names(items: list[Any]) -> list[str] | None:
    if items and all(isinstance(i, Mapping) and isinstance(i.get("name"), str) for i in items):
        names = [i["name"] for i in items]
        return names if len(set(names)) == len(names) else None
    return None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
