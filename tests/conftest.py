import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

# Tests build raw Gymnasium MuJoCo envs too (HalfCheetah's asset uses a deprecated compiler
# attribute): route MuJoCo's warnings through the project's counter, so a test run leaves
# no MUJOCO_LOG.TXT in the working directory.
from rlsim2real.wrappers.stability import install_warning_handler  # noqa: E402

install_warning_handler()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Two xdist workers share two cores: more threads per worker only contend.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
