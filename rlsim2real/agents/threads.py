"""How many CPU threads torch may use here."""

from __future__ import annotations

import os


def limit_torch_threads() -> None:
    """Use one torch thread on CPU unless ``RLSIM2REAL_TORCH_THREADS`` says otherwise.

    The policies here are small: extra intra-op threads buy little and, on a machine whose
    cores also step the envs, spin against them (a 10x slowdown was seen on 2 busy cores).
    """
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("RLSIM2REAL_TORCH_THREADS", "1"))))
