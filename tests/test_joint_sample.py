"""The joint sample: one vector per env and episode, sliced to every layer; sampler state."""

from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env

import rlsim2real as rs
from rlsim2real import BoxDistribution, Param, ParamSpace
from rlsim2real.distributions import AdrDistribution
from rlsim2real.wrappers import ActionDelay, DynamicsRandomization, ObservationNoise
from rlsim2real.wrappers.randomizer import SALT

SPEC = rs.load_env_spec("inverted_pendulum")


def joint_box(*names_ranges) -> BoxDistribution:
    return BoxDistribution(ParamSpace(SPEC.all_params[n].with_range(lo, hi) for n, lo, hi in names_ranges))


DIST = joint_box(("pole_mass", 0.5, 2.0), ("obs_bias", -0.1, 0.1), ("motor_strength", 0.6, 1.4), ("action_delay", 0, 3))


def test_one_seed_gives_the_same_vector_whatever_the_layers():
    full = rs.make_env(SPEC, seed=4, distribution=DIST)  # dynamics, delay and sensor layers
    _, info = full.reset()
    # The same distribution drawn by hand with the env's seeded stream: the layers do not matter.
    by_hand = DIST.to_dict(DIST.sample(np.random.default_rng([4, SALT])))
    assert {k: info["dr_params"][k] for k in by_hand} == by_hand
    # Another stack, with the layers built separately and another wrapper in between.
    space = SPEC.all_params
    env = DynamicsRandomization(gym.make("InvertedPendulum-v5"), space.select("model"), DIST, seed=4)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = ObservationNoise(ActionDelay(env, space.select("action"), distribution=DIST), space.select("obs"), distribution=DIST)
    _, info2 = env.reset()
    assert {k: info2["dr_params"][k] for k in by_hand} == by_hand


def test_every_layer_applies_its_slice_of_one_sample():
    env = rs.make_env(SPEC, seed=0, distribution=DIST)
    clean = rs.make_real_env(SPEC, "nominal", seed=0)
    nominal_pole = clean.unwrapped.model.body_mass[2]
    for episode in range(5):
        obs, info = env.reset(seed=episode)
        clean_obs, _ = clean.reset(seed=episode)
        p = info["dr_params"]
        assert env.unwrapped.model.body_mass[2] == pytest.approx(p["pole_mass"] * nominal_pole)
        assert env.get_wrapper_attr("delay") == round(p["action_delay"])
        assert obs - clean_obs == pytest.approx(np.full(4, p["obs_bias"]))


def test_boundary_sampling_pins_exactly_one_parameter_across_all_layers():
    space = ParamSpace(SPEC.all_params[n].with_range(lo, hi) for n, lo, hi in
                       [("pole_mass", 0.5, 2.0), ("obs_noise", 0.0, 0.05), ("action_delay", 0.0, 3.0), ("cart_mass", 0.8, 1.2)])
    dist = AdrDistribution(space, adapted=[0, 1, 2], boundary_prob=1.0)
    env = rs.make_env(SPEC, seed=1)
    env.set_distribution(dist)
    seen = set()
    for _ in range(60):
        _, info = env.reset()
        values, tag = info["dr_params"], env.get_wrapper_attr("randomizer").tag
        j, side, value = tag
        name = space.names[dist.adapted[j]]
        seen.add((name, side))
        at_bound = [n for n in ("pole_mass", "obs_noise", "action_delay")
                    if values[n] in (space[n].low, space[n].high)]
        assert at_bound == [name] and values[name] == value == space[name].range[side]
        assert values["cart_mass"] not in (0.8, 1.2)  # not adapted: never pinned
    assert len(seen) == 6  # every (parameter, side), the sensor and delay terms included
    assert env.get_wrapper_attr("delay") in (0, 1, 2, 3)


def test_per_worker_streams_differ_and_repeat_with_the_seed():
    def draws(seed):
        vec = make_vec_env(lambda: rs.make_env(SPEC), n_envs=3, seed=seed)
        vec.env_method("set_distribution", DIST)
        vec.reset()
        return [tuple(p.values()) for p in vec.get_attr("params")]

    first = draws(7)
    assert len(set(first)) == 3
    assert draws(7) == first


def test_sampler_state_continues_the_parameter_and_noise_streams():
    dist = joint_box(("pole_mass", 0.5, 2.0), ("obs_noise", 0.01, 0.05), ("action_delay", 0, 2))
    a = rs.make_env(SPEC, seed=11, distribution=dist)
    for _ in range(3):
        a.reset()
        a.step(np.zeros(1))
    state = a.get_wrapper_attr("sampler_state")()
    after = []
    for _ in range(4):
        obs, info = a.reset()
        after.append((info["dr_params"], obs.tolist(), a.step(np.zeros(1))[0].tolist()))
    b = rs.make_env(SPEC, seed=999, distribution=dist)  # another seed: the state decides
    b.get_wrapper_attr("load_sampler_state")(state)
    resumed = []
    for _ in range(4):
        obs, info = b.reset()
        resumed.append((info["dr_params"], obs.tolist(), b.step(np.zeros(1))[0].tolist()))
    assert resumed == after


def test_a_distribution_that_leaves_the_limits_or_breaks_physics_is_refused_before_the_model():
    env = rs.make_env(SPEC, seed=0)
    env.reset()
    before = env.get_wrapper_attr("distribution")
    # A strategy's distribution carries its own copy of the terms; the worker checks it
    # against ITS parameters' limits.
    outside = BoxDistribution(ParamSpace([Param("pole_mass", "body_mass[pole]", (1.0, 5.0))]))
    with pytest.raises(rs.SpecError, match=r"param 'pole_mass': value 5 is outside its limits \[0.25, 4\]"):
        env.set_distribution(outside)
    # Without limits, physics still decides: a non-positive mass is refused with its value.
    free = rs.make_env(rs.EnvSpec(**{**SPEC.__dict__, "params": ParamSpace([Param("m", "body_mass[pole]", (0.5, 1.5))]),
                                     "heldout_params": ParamSpace(), "real_sets": {}}), seed=0)
    with pytest.raises(rs.SpecError, match=r"param 'm'.*-0.5.*expected > 0"):
        free.set_distribution(BoxDistribution(ParamSpace([Param("m", "body_mass[pole]", (-0.5, 1.5))])))
    with pytest.raises(rs.SpecError, match="unknown parameters no_such"):
        env.set_distribution(rs.Fixed({"no_such": 1.0}))
    assert env.get_wrapper_attr("distribution") == before  # refused: nothing changed
    for _ in range(20):
        _, info = env.reset()
        assert 0.7 <= info["dr_params"]["pole_mass"] <= 1.3


def test_check_env_passes_with_boundary_sampling():
    env = rs.make_env(SPEC, seed=0)
    space = ParamSpace(SPEC.all_params[n].with_range(lo, hi) for n, lo, hi in [("pole_mass", 0.5, 2.0), ("obs_bias", -0.1, 0.1)])
    env.set_distribution(AdrDistribution(space, adapted=[0, 1], boundary_prob=0.5))
    check_env(env, skip_render_check=True)


def test_sample_batch_matches_the_box_and_its_shape():
    rng = np.random.default_rng(0)
    batch = DIST.sample_batch(rng, 500)
    low, high = DIST.support()
    assert batch.shape == (500, 4) and np.all(batch >= low) and np.all(batch <= high)
    # Without truncated normals, a batch is the same stream as one sample after another.
    one_by_one = np.stack([DIST.sample(r) for r in [np.random.default_rng(3)] for _ in range(5)])
    assert np.array_equal(DIST.sample_batch(np.random.default_rng(3), 5), one_by_one)


def test_draw_many_gives_every_sampler_what_its_own_draw_would():
    from rlsim2real.distributions import Fixed
    from rlsim2real.wrappers.randomizer import Randomizer

    adr = AdrDistribution(DIST.space, adapted=[0, 1], boundary_prob=0.5)
    loguniform = BoxDistribution(ParamSpace([replace(SPEC.all_params["pole_mass"].with_range(0.5, 2.0), dist="loguniform"),
                                             SPEC.all_params["obs_bias"].with_range(-0.1, 0.1)]))

    def samplers():
        out = [rs.make_env(SPEC, seed=s, distribution=DIST).get_wrapper_attr("randomizer") for s in range(8)]
        out[1].set_distribution(adr)
        out[2].pin({"pole_mass": 1.5})
        out[3].set_distribution(Fixed({"obs_bias": 0.05}))
        out[4].set_distribution(loguniform)  # a subset of the space, in another order
        out[6].set_distribution(adr)
        return out

    alone, together = samplers(), samplers()
    for _ in range(3):
        one_by_one = [s.draw() for s in alone]
        batch = Randomizer.draw_many(together)
        assert np.array_equal(batch, np.stack(one_by_one))
        assert [s.tag for s in alone] == [s.tag for s in together]
        assert [s.params() for s in alone] == [s.params() for s in together]


def test_resampling_within_an_episode_redraws_the_vector_and_keeps_actions_in_flight():
    import dataclasses

    spec = dataclasses.replace(SPEC, resample_every=5)
    env = rs.make_env(spec, seed=0, distribution=joint_box(("pole_mass", 0.5, 2.0), ("action_delay", 1, 1)))
    _, info = env.reset(seed=0)
    masses = [info["dr_params"]["pole_mass"]]
    ctrl = []
    for k in range(12):
        _, _, terminated, truncated, info = env.step(np.array([0.01 * (k + 1)], dtype=np.float32))
        ctrl.append(float(env.unwrapped.data.ctrl[0]))
        if "dr_params" in info:
            masses.append(info["dr_params"]["pole_mass"])
        assert not (terminated or truncated)
    assert len(masses) == 3 and len(set(masses)) == 3  # redrawn at steps 5 and 10
    # One step of delay throughout: each step applies the previous action, across resamples.
    assert ctrl == pytest.approx([0.0] + [0.01 * (k + 1) for k in range(11)])
