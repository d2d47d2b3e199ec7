"""The custom-env path, end to end: envs/sliding_block.toml names its own MJCF and MujocoEnv
subclass (envs/assets/sliding_block.{xml,py}) by a file entry point, with no library change."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rlsim2real as rs

SPEC_PATH = Path(__file__).resolve().parents[1] / "envs" / "sliding_block.toml"
REGISTERED_ID = "rlsim2real/sliding_block-v0"

# Which way raising each training-box parameter moves the distance the block travels under a
# fixed push-then-coast action sequence.
DISTANCE_SIGN = {"block_mass": -1, "payload_mass": -1, "friction": -1, "joint_damping": -1, "motor_strength": +1}
# Held-out sensor and actuator terms, set as the real sets do.
HELDOUT_VALUES = {"obs_bias": 0.05, "obs_noise": 0.02, "obs_scale": 1.1, "action_delay": 2.0}


@pytest.fixture(scope="module")
def spec() -> rs.EnvSpec:
    return rs.load_env_spec("sliding_block")


def push_then_coast(env: gym.Env, seed: int = 0) -> np.ndarray:
    """Block positions (x, y) over 15 steps of pushing and 15 of coasting, shape (31, 2)."""
    obs, _ = env.reset(seed=seed)
    path = [obs[:2]]
    for t in range(30):
        action = np.array([1.0, 0.6], dtype=np.float32) if t < 15 else np.zeros(2, dtype=np.float32)
        obs, *_ = env.step(action)
        path.append(obs[:2])
    return np.array(path)


def pd_controller(obs: np.ndarray) -> np.ndarray:
    """Push toward the goal, brake on velocity: obs = [x, y, vx, vy, dx, dy]."""
    return np.clip(10.0 * obs[4:6] - 3.0 * obs[2:4], -1.0, 1.0).astype(np.float32)


def mean_return(env: gym.Env, policy, episodes: int = 3) -> float:
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def test_spec_loads_and_validates(spec: rs.EnvSpec) -> None:
    assert spec.path == SPEC_PATH
    assert spec.env_id is None and spec.entry_point == "assets/sliding_block.py:SlidingBlockEnv"
    assert spec.max_episode_steps == 200
    assert set(spec.params.names) == set(DISTANCE_SIGN)
    assert set(spec.heldout_params.names) == {"obs_bias", "obs_noise", "obs_scale", "action_delay"}
    assert {"in_range", "heavy_payload", "light_slippery", "sensor_shift"} <= set(spec.real_sets)
    assert spec.success_return is not None
    assert spec.grid is not None and {spec.grid.x, spec.grid.y} <= set(spec.params.names)


def test_training_env_passes_check_env(spec: rs.EnvSpec) -> None:
    env = rs.make_env(spec, seed=0)
    assert type(env.unwrapped).__name__ == "SlidingBlockEnv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "wrapped env" and "unbounded Box" advice
        check_env(env, skip_render_check=True)
    env.close()


def test_unwrapped_env_passes_check_env(spec: rs.EnvSpec) -> None:
    env = rs.make_env(spec, seed=0)
    try:
        mujoco.Renderer(env.unwrapped.model, 16, 16).close()
        can_render = True
    except Exception:  # no offscreen GL here: check everything but the declared render modes
        can_render = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=not can_render)
    env.close()


def test_training_env_samples_the_box_and_leaves_heldout_terms_nominal(spec: rs.EnvSpec) -> None:
    env = rs.make_env(spec, seed=0)
    _, info = env.reset(seed=0)
    drawn = info["dr_params"]
    for p in spec.params:
        assert p.low <= drawn[p.name] <= p.high
    assert drawn["obs_bias"] == 0.0 and drawn["obs_noise"] == 0.0
    assert drawn["obs_scale"] == 1.0 and drawn["action_delay"] == 0.0
    # Same seed, same physics and same trajectory.
    again = rs.make_env(spec, seed=0)
    np.testing.assert_array_equal(push_then_coast(env), push_then_coast(again))


def term_cases():
    spec = rs.load_env_spec(SPEC_PATH)
    for p in spec.params:  # both ends of the training box
        for value in p.range:
            yield pytest.param(p.name, value, id=f"{p.name}={value:g}")
    for name, value in HELDOUT_VALUES.items():
        yield pytest.param(name, value, id=f"{name}={value:g}")


@pytest.mark.parametrize("name,value", term_cases())
def test_each_term_changes_the_trajectory(spec: rs.EnvSpec, name: str, value: float) -> None:
    nominal = push_then_coast(rs.make_real_env(spec, "nominal", seed=0))
    env = rs.make_real_env(spec, {name: value}, seed=0)
    changed = push_then_coast(env)
    assert env.get_wrapper_attr("params")[name] == pytest.approx(value)
    assert not np.allclose(nominal, changed, atol=1e-4), f"{name} = {value} left what the policy sees unchanged"
    if name in DISTANCE_SIGN:
        # In the physical direction too: heavier, stickier or more damped goes less far.
        travelled = {k: float(np.linalg.norm(path[-1] - path[0])) for k, path in (("nominal", nominal), ("changed", changed))}
        expected = DISTANCE_SIGN[name] * np.sign(value - spec.params[name].identity)
        assert np.sign(travelled["changed"] - travelled["nominal"]) == expected, travelled


def test_real_set_pins_its_values(spec: rs.EnvSpec) -> None:
    values = spec.real_set("in_range")
    env = rs.make_real_env(spec, "in_range", seed=0)
    model = env.unwrapped.model
    nominal = rs.make_real_env(spec, "nominal", seed=0).unwrapped.model
    for _ in range(2):  # pinned values hold across resets: nothing is resampled
        _, info = env.reset()
        for name, value in values.items():
            assert info["dr_params"][name] == pytest.approx(value)
        assert info["dr_params"]["obs_bias"] == 0.0  # not named by the set: nominal
        payload = model.body("payload").id
        assert model.body_mass[payload] == pytest.approx(nominal.body_mass[payload] * values["payload_mass"])
        np.testing.assert_allclose(model.geom_friction[:, 0], nominal.geom_friction[:, 0] * values["friction"])
        np.testing.assert_allclose(model.actuator_gear[:, 0], nominal.actuator_gear[:, 0] * values["motor_strength"])
        slides = [model.joint(j).dofadr[0] for j in ("slide_x", "slide_y", "slide_z")]
        factor = np.array([values["joint_damping"], values["joint_damping"], 1.0])  # slide_z has none
        np.testing.assert_allclose(model.dof_damping[slides], nominal.dof_damping[slides] * factor)


def test_sensor_shift_set_corrupts_observations(spec: rs.EnvSpec) -> None:
    clean, _ = rs.make_real_env(spec, "nominal", seed=0).reset(seed=3)
    shifted_env = rs.make_real_env(spec, "sensor_shift", seed=0)
    shifted, info = shifted_env.reset(seed=3)
    values = spec.real_set("sensor_shift")
    assert info["dr_params"]["obs_scale"] == pytest.approx(values["obs_scale"])
    noise = shifted - (clean * values["obs_scale"] + values["obs_bias"])
    assert np.all(np.abs(noise) < 6 * values["obs_noise"]) and np.any(noise != 0)


def test_success_return_is_reachable(spec: rs.EnvSpec) -> None:
    env = rs.make_real_env(spec, "nominal", seed=0)
    assert mean_return(env, pd_controller) > spec.success_return
    assert mean_return(env, lambda obs: np.zeros(2, dtype=np.float32)) < spec.success_return


def test_spec_loads_by_path_from_another_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Resolve the entry point afresh rather than reuse this process's earlier registration.
    monkeypatch.delitem(gym.registry, REGISTERED_ID, raising=False)
    for path in (SPEC_PATH, os.path.relpath(SPEC_PATH, tmp_path)):
        spec = rs.load_env_spec(path)
        assert spec.path == SPEC_PATH
        env = rs.make_env(spec, seed=0)
        obs, _ = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.shape == (6,) and np.isfinite(reward) and "distance" in info
        env.close()
