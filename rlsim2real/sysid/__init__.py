"""System identification from real logs: discrepancy, state-reset replay, closed-loop
simulation, and a CMA-ES fit of a Gaussian over the parameters (SimOpt, DROPO).

See docs/sysid.md for the log format and the ``rlsim2real sysid`` command.
"""

from rlsim2real.sysid.discrepancy import discrepancy, gaussian_smooth, observation_scale
from rlsim2real.sysid.fit import OBJECTIVES, CMAFitter, Gaussian, Generation, Objective, Windows
from rlsim2real.sysid.identify import SysIdResult, identify
from rlsim2real.sysid.observe import StateMap, state_map
from rlsim2real.sysid.problem import MODES, SysIdProblem
from rlsim2real.sysid.simulate import BatchSimulator

__all__ = [
    "MODES", "OBJECTIVES", "BatchSimulator", "CMAFitter", "Gaussian", "Generation", "Objective", "StateMap",
    "SysIdProblem", "SysIdResult", "Windows", "discrepancy", "gaussian_smooth", "identify",
    "observation_scale", "state_map",
]
