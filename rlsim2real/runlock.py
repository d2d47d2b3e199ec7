"""One writer per run directory: ``RUN_DIR/.lock``.

A command that writes into a run directory (``train``, ``evaluate``) holds its lock for as
long as it writes. The lock is a small JSON file created with ``O_CREAT | O_EXCL``, so only
one process can create it; it names its holder (pid, host, purpose, start time), so a
refused second writer can say who holds the run. A holder that died without releasing it
(``kill -9``, a power cut) leaves a stale lock: one on this host whose process is gone is
taken over; one from another host is never guessed at (its pid means nothing here).

Within one process the lock is re-entrant for the thread that holds it: ``train`` holds it
while it trains and still calls :func:`~rlsim2real.evaluation.evaluate_transfer`, which
takes it again.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with RunLock(folder, "train") as lock:
    ...         holder = RunLock.holder(folder)
    ...     (holder["purpose"], (Path(folder) / ".lock").exists())
    ('train', False)
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsim2real.params import SpecError

LOCK_NAME = ".lock"


@dataclass
class _Held:
    thread: int
    depth: int
    token: str


# Locks this process holds, by resolved directory: makes the lock re-entrant per thread.
_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.RLock()


class RunLock:
    """Exclusive right to write into one run directory.

    Use it as a context manager (or call :meth:`acquire` / :meth:`release`). The directory
    is created if it does not exist, and removed again on release if this lock created it
    and nothing else was written there, so a command that fails early leaves no trace.

    Args:
        run_dir: The run directory.
        purpose: What the holder does (``"train"``, ``"evaluate"``); shown to a refused
            second writer.

    Raises:
        SpecError: from :meth:`acquire`, in one line: another live process holds the run
            (naming its pid, host, purpose and start time), the directory cannot be written
            (read-only, full disk) or is a file.
    """

    def __init__(self, run_dir: str | os.PathLike, purpose: str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.purpose = purpose
        self._token = uuid.uuid4().hex
        self._held = False
        self._nested = False
        self._created_dir = False
        self._key = ""

    # ------------------------------------------------------------------ public
    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._held

    def acquire(self) -> "RunLock":
        """Take the lock, taking over a stale one; returns ``self``.

        Raises:
            SpecError: if another live process holds it or the directory is not writable.
        """
        if self._held:
            return self
        self._make_dir()
        self._key = os.path.realpath(self.run_dir)
        with _HELD_GUARD:
            mine = _HELD.get(self._key)
            if mine is not None:
                if mine.thread != threading.get_ident():
                    raise SpecError(f"{self.run_dir}: in use by another thread of this process; one writer per run")
                mine.depth += 1
                self._held = self._nested = True
                return self
            for _ in range(5):
                if self._create():
                    _HELD[self._key] = _Held(threading.get_ident(), 1, self._token)
                    self._held = True
                    return self
                holder = _read(self.path)
                if holder is None or not _is_stale(holder):
                    self._forget_dir()
                    raise SpecError(refusal(self.run_dir, holder))
                _remove_if_unchanged(self.run_dir, self.path, holder)
        self._forget_dir()
        raise SpecError(f"{self.path}: could not take the run's lock: it keeps changing hands")

    def release(self) -> None:
        """Give the lock up; a second call does nothing."""
        if not self._held:
            return
        self._held = False
        with _HELD_GUARD:
            mine = _HELD.get(self._key)
            if self._nested:
                if mine is not None:
                    mine.depth -= 1
                return
            _HELD.pop(self._key, None)
        holder = _read(self.path, wait=0.0)
        # Only our own file: never delete a lock someone else holds.
        if holder is not None and holder.get("token") == self._token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self._forget_dir()

    @staticmethod
    def holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
        """The live holder of ``run_dir``'s lock (its JSON), or ``None`` if it is free.

        A stale lock (its process gone) counts as free. An unreadable lock file is
        reported as ``{"unreadable": True}``.
        """
        path = Path(run_dir) / LOCK_NAME
        if not path.exists():
            return None
        holder = _read(path)
        if holder is None:
            return {"unreadable": True} if path.exists() else None
        return None if _is_stale(holder) else holder

    @staticmethod
    def held_by_this_process(run_dir: str | os.PathLike) -> bool:
        """Whether this process holds ``run_dir``'s lock."""
        with _HELD_GUARD:
            return os.path.realpath(run_dir) in _HELD

    # ----------------------------------------------------------------- helpers
    def _make_dir(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise SpecError(f"{self.run_dir}: is a file; expected a run directory")
        if self.run_dir.is_dir():
            return
        try:
            self.run_dir.mkdir(parents=True)
            self._created_dir = True
        except FileExistsError:
            if not self.run_dir.is_dir():
                raise SpecError(f"{self.run_dir}: is a file; expected a run directory") from None
        except NotADirectoryError:
            raise SpecError(f"{self.run_dir}: a parent of it is a file; expected a directory") from None
        except OSError as exc:
            raise SpecError(f"{self.run_dir}: cannot create the run directory: {exc.strerror}") from None

    def _forget_dir(self) -> None:
        # A directory this lock created and nobody wrote into goes away again.
        if self._created_dir:
            try:
                self.run_dir.rmdir()
            except OSError:
                pass
            self._created_dir = False

    def _create(self) -> bool:
        """Create the lock file; ``False`` if it exists already."""
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "pid_start": _process_start(os.getpid()),
            "token": self._token,
        }
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            self._forget_dir()
            raise SpecError(f"{self.run_dir}: cannot write to the run directory: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            self._forget_dir()
            raise SpecError(f"{self.run_dir}: cannot write to the run directory: {exc.strerror}") from None
        return True


def refusal(run_dir: Path, holder: dict[str, Any] | None) -> str:
    """The one-line message for a run another process holds."""
    lock = Path(run_dir) / LOCK_NAME
    if holder is None or holder.get("unreadable"):
        return f"{run_dir}: in use: its lock {lock} is unreadable; delete it if no rlsim2real command uses this run"
    return (
        f"{run_dir}: in use by another process (pid {holder.get('pid')} on {holder.get('host')}, "
        f"{holder.get('purpose')} since {holder.get('started')}); wait for it to finish, "
        f"or delete {lock} if that process is gone"
    )


def _read(path: Path, wait: float = 1.0) -> dict[str, Any] | None:
    """The lock's JSON, or ``None`` if it is gone or unreadable.

    A holder writes its record right after creating the file: an empty or half-written
    file is read again for up to ``wait`` seconds before it counts as unreadable.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                return data
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _is_stale(holder: dict[str, Any]) -> bool:
    """A lock on this host whose process is gone (or is not the process that took it)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        # Ours only if we hold it; else an earlier process with our pid left it.
        with _HELD_GUARD:
            return holder.get("token") not in {h.token for h in _HELD.values()}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (owned by another user)
    started = holder.get("pid_start")
    now = _process_start(pid)
    # A zombie has exited; a different start time means the pid was reused.
    return now == "zombie" or (started is not None and now is not None and now != started)


def _process_start(pid: int) -> Any:
    """The process's start time in clock ticks since boot (``/proc``), ``"zombie"``, or ``None``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields and fields[0] in ("Z", "X"):
        return "zombie"
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _remove_if_unchanged(run_dir: Path, path: Path, stale: dict[str, Any]) -> None:
    """Delete a stale lock, unless another process has replaced it meanwhile.

    The check and the delete run under an ``flock`` on the directory, so two processes
    taking over the same stale lock cannot delete each other's fresh one (stale locks are
    only ever taken over on their own host, where ``flock`` works).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard, the race is left to O_EXCL
        fcntl = None
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _read(path, wait=0.0) == stale:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)  # closing releases the flock
