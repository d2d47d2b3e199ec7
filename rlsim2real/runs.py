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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsim2real.params import SpecError
from rlsim2real.specs import EnvSpec, algorithm_class


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
        f = self.path / "run.json"
        return json.loads(f.read_text()) if f.is_file() else {"status": "unknown"}

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
        """Where the newest complete policy lives: the run root, else the last checkpoint.

        Raises:
            SpecError: if the run has neither.
        """
        if (self.path / "model.zip").is_file():
            return self.path
        ckpts = self.checkpoints()
        if ckpts:
            return ckpts[-1]
        raise SpecError(f"{self.path}: the run has no model.zip and no checkpoint yet")

    def load_model(self, folder: Path | None = None, device: str = "auto", env: Any = None) -> Any:
        """Load the SB3 model from ``folder`` (default :meth:`model_dir`)."""
        folder = folder or self.model_dir()
        cls = algorithm_class(self.algorithm)
        return cls.load(folder / "model.zip", env=env, device=device)

    def __str__(self) -> str:
        return str(self.path)
