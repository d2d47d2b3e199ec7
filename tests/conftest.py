import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Two xdist workers share two cores: more threads per worker only contend.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
