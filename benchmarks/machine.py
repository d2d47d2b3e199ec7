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
