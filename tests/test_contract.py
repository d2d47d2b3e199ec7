"""The public contract of DESIGN.md section 4, exercised as a user writes it."""

import gymnasium as gym
import numpy as np

import rlsim2real as rs


def test_public_contract(tmp_path):
    spec = rs.load_env_spec("hopper")
    assert isinstance(spec.params, rs.ParamSpace) and "torso_mass" in spec.params
    assert {"in_range", "heavy_torso", "sensor_shift"} <= set(spec.real_sets)
    env = rs.make_env(spec, seed=0)
    assert isinstance(env, gym.Env) and env.unwrapped.__class__.__name__ == "HopperEnv"
    _, info = env.reset()
    assert env.get_wrapper_attr("params") == info["dr_params"]
    real = rs.make_real_env(spec, "heavy_torso", seed=0)
    assert real.reset()[1]["dr_params"]["torso_mass"] == 1.6
    real = rs.make_real_env(spec, {"torso_mass": 1.6, "friction": 0.3}, seed=0)
    params = real.reset()[1]["dr_params"]
    assert params["friction"] == 0.3 and params["thigh_mass"] == 1.0  # unnamed stay nominal

    space = rs.ParamSpace(
        [rs.Param("torso_mass", target="body_mass[torso]", range=(0.7, 1.3), mode="scale", dist="uniform")]
    )
    assert [p.name for p in list(space)] == list(space.names) == ["torso_mass"] and len(space) == 1
    p = list(space)[0]
    assert (p.name, p.target, p.range, p.mode, p.dist) == ("torso_mass", "body_mass[torso]", (0.7, 1.3), "scale", "uniform")
    dr = rs.DynamicsRandomization(gym.make("Hopper-v5"), space, seed=0)
    _, info = dr.reset()
    assert 0.7 <= info["dr_params"]["torso_mass"] <= 1.3

    trajs = rs.collect_trajectories(real, policy=None, episodes=2, seed=0)
    trajs.save(tmp_path / "real.npz")
    back = rs.load_trajectories(tmp_path / "real.npz")
    np.testing.assert_array_equal(back.rewards, trajs.rewards)

    from rlsim2real.agents import RecurrentPPO
    from rlsim2real.dann import DomainDiscriminator, GradientReversal, coral_loss, mmd_loss
    from sb3_contrib import RecurrentPPO as Reference

    assert issubclass(RecurrentPPO, Reference)
    assert callable(mmd_loss) and callable(coral_loss) and GradientReversal and DomainDiscriminator
