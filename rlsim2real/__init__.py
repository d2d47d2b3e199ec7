"""rlsim2real: sim-to-real RL for MuJoCo."""
