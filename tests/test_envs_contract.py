"""Contract of every built-in env spec through ``make_env``: Gymnasium API, seeding, reported params."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env

import rlsim2real as rs

ENVS = ["hopper", "walker2d", "half_cheetah", "ant", "inverted_pendulum"]


def actions_for(env: gym.Env, n: int = 30, seed: int = 0) -> np.ndarray:
    space = env.action_space
    return np.random.default_rng(seed).uniform(space.low, space.high, (n, *space.shape)).astype(space.dtype)


def rollout(env: gym.Env, actions: np.ndarray, seed: int | None = None):
    """Observations and rewards of one episode (cut at the end of the actions or the episode)."""
    obs, info = env.reset(seed=seed)
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return info["dr_params"], np.array(observations), np.array(rewards)


@pytest.mark.parametrize("name", ENVS)
def test_check_env_passes(name):
    env = rs.make_env(name, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # check_env warns that the env is wrapped
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize("name", ENVS)
def test_unwrapped_is_the_mujoco_env(name):
    env = rs.make_env(name, seed=0)
    assert isinstance(env.unwrapped, MujocoEnv)
    assert env.unwrapped.spec.id == rs.load_env_spec(name).env_id


@pytest.mark.parametrize("name", ENVS)
def test_observations_stay_in_the_observation_space(name):
    env = rs.make_env(name, seed=0)
    env.action_space.seed(0)
    obs, _ = env.reset()
    assert obs in env.observation_space
    for _ in range(150):  # long enough to cross episode ends with random actions
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs in env.observation_space and np.isfinite(reward)
        if terminated or truncated:
            obs, _ = env.reset()
            assert obs in env.observation_space


@pytest.mark.parametrize("name", ENVS)
def test_same_seed_gives_same_params_and_same_episode(name):
    a, b, c = (rs.make_env(name, seed=s) for s in (0, 0, 1))
    actions = actions_for(a)
    params_a, obs_a, rewards_a = rollout(a, actions)
    params_b, obs_b, rewards_b = rollout(b, actions)
    assert params_a == params_b
    assert np.array_equal(obs_a, obs_b) and np.array_equal(rewards_a, rewards_b)
    params_c, obs_c, _ = rollout(c, actions)
    assert params_c != params_a
    assert obs_c.shape != obs_a.shape or not np.array_equal(obs_c, obs_a)


@pytest.mark.parametrize("name", ENVS)
def test_reset_seed_reseeds_the_sampler(name):
    env = rs.make_env(name)  # unseeded: only reset(seed=...) decides
    first, _, _ = rollout(env, actions_for(env, 5), seed=5)
    _, info = env.reset()
    assert info["dr_params"] != first  # an unseeded reset draws anew
    _, info = env.reset(seed=5)
    assert info["dr_params"] == first
    _, info = env.reset(seed=6)
    assert info["dr_params"] != first


@pytest.mark.parametrize("name", ENVS)
def test_dr_params_in_info_match_the_wrapper_attribute(name):
    spec = rs.load_env_spec(name)
    env = rs.make_env(spec, seed=0)
    for _ in range(3):
        _, info = env.reset()
        params = info["dr_params"]
        assert params == env.get_wrapper_attr("params")
        assert set(params) == set(spec.all_params.names)
        for p in spec.params:
            assert p.low <= params[p.name] <= p.high
        for p in spec.heldout_params:  # held out: nominal in training
            assert params[p.name] == p.identity


@pytest.mark.parametrize("name", ["hopper", "inverted_pendulum"])
def test_vec_env_workers_sample_different_params(name):
    def sample_params(seed: int) -> list[dict]:
        vec = make_vec_env(lambda: rs.make_env(name), n_envs=3, seed=seed)
        vec.reset()
        params = [info["dr_params"] for info in vec.reset_infos]
        assert params == vec.get_attr("params")
        vec.close()
        return params

    params = sample_params(0)
    names = rs.load_env_spec(name).params.names
    vectors = {tuple(p[n] for n in names) for p in params}
    assert len(vectors) == 3  # each worker draws its own physics
    assert sample_params(0) == params  # ... reproducibly from the VecEnv seed
    assert sample_params(1) != params


def test_set_distribution_reaches_every_vec_worker():
    vec = make_vec_env(lambda: rs.make_env("inverted_pendulum"), n_envs=2, seed=0)
    vec.env_method("set_distribution", rs.Fixed({"pole_mass": 1.25, "obs_scale": 1.3}))
    vec.reset()
    for params in vec.get_attr("params"):
        assert params["pole_mass"] == 1.25 and params["obs_scale"] == 1.3
        assert params["cart_mass"] == 1.0  # not named: nominal
