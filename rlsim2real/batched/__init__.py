"""Batched simulation: many randomized worlds of a built-in task in one SB3 ``VecEnv``.

``BatchedVecEnv`` (``vec_env = "batched"`` in an experiment) steps N worlds on a
:class:`~rlsim2real.batched.backend.SimBackend` (``mujoco.batch`` on CPU threads) and
computes observations, rewards, terminations, resets and randomization on arrays, with the
semantics of the Gymnasium v5 envs and wrappers it replaces. See docs/batched.md.
"""

from rlsim2real.batched.tasks import SUPPORTED_IDS, batched_support


def __getattr__(name: str):
    # The VecEnv pulls in SB3; spec validation only needs batched_support.
    if name in ("BatchedVecEnv", "WorldView"):
        from rlsim2real.batched import vec_env

        return getattr(vec_env, name)
    raise AttributeError(f"module 'rlsim2real.batched' has no attribute {name!r}")


__all__ = ["BatchedVecEnv", "SUPPORTED_IDS", "WorldView", "batched_support"]
