"""Atomic file writes: a crash mid-write never leaves a half file under the final name.

Files get the mode a plain ``open()`` would give them (``0o666`` less the umask, so
usually ``0o644``), not the ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place.

    Args:
        path: Final location.
        write: Writes the file at the path it is given.
        suffix: Suffix for the temporary name (some writers insist on an extension).

    Returns:
        ``path`` as a :class:`Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # After writing: a writer may have replaced the file instead of writing into it.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, which briefly changes the mode of files
    other threads create (TensorBoard's writer, for one); Linux reports it in
    ``/proc/self/status``, so that is tried first.
    """
    try:
        with open("/proc/self/status") as fh:
            match = re.search(r"^Umask:\s*([0-7]+)", fh.read(), re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
