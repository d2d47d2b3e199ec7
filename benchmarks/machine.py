"""What a benchmark result must say about where it was measured: CPU, cores, GPU, versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("rlsim2real", "mujoco", "gymnasium", "stable-baselines3", "sb3-contrib", "torch", "numpy", "cma")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """CPU, core count, GPU (if torch sees one), Python and library versions."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
    }


def describe(m: dict) -> str:
    """One Markdown paragraph naming the machine and versions."""
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items() if val)
    return f"Machine: {m['cpu']}, {m['cores']} cores, {'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}; Python {m['python']}; {v}."


def load_note(before: list[float] | tuple[float, ...], after: list[float] | tuple[float, ...] | None, cores: int) -> str:
    """One sentence on how busy the machine was, from the load averages around a run.

    The load average counts runnable processes over the last 1, 5 and 15 minutes: other
    jobs, but also the processes of a benchmark that ran just before (it trails by minutes).
    """
    shown = lambda load: ", ".join(f"{x:.1f}" for x in load)  # noqa: E731
    text = f"Load average {shown(before)} before" + (f" and {shown(after)} after" if after else "") + f", on {cores} cores: "
    if before[0] > cores:
        return text + ("**busy** (other jobs, or a benchmark that ran just before, which the average still counts), "
                       "so absolute numbers are noisy.")
    return text + "the machine had cores to spare."
