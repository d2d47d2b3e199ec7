"""Transfer evaluation: batching, success, the grid and its heat map, trajectories I/O."""

import numpy as np
import pytest

import rlsim2real as rs
from rlsim2real.evaluation import GridResult, evaluate_grid, evaluate_policy, plot_grid
from rlsim2real.specs import GridSpec


class ConstantPolicy:
    """Pushes the cart with a fixed force: a policy whose returns we can reason about."""

    def __init__(self, force: float) -> None:
        self.force = force
        self.calls = 0

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        self.calls += 1
        return np.full((len(obs), 1), self.force, dtype=np.float32), state


def test_batched_evaluation_matches_one_by_one_rollouts():
    spec = rs.load_env_spec("inverted_pendulum")
    policy = ConstantPolicy(0.3)
    res = evaluate_policy(policy, spec, "heavy_pole", episodes=3, seed=5)
    # The same episodes, one at a time, through collect_trajectories.
    for i in range(3):
        env = rs.make_real_env(spec, "heavy_pole", seed=5 + i)
        trajs = rs.collect_trajectories(env, policy=lambda o: np.array([0.3], dtype=np.float32), episodes=1, seed=5 + i)
        assert trajs.returns()[0] == pytest.approx(res.returns[i])
    assert res.params["pole_mass"] == 2.0
    # One batched forward pass per step, not one per episode.
    assert policy.calls == max(res.lengths)


def test_physics_changes_returns_and_success_is_survival():
    spec = rs.load_env_spec("inverted_pendulum")
    light = evaluate_policy(ConstantPolicy(0.0), spec, {"pole_mass": 0.5}, episodes=2, seed=0)
    heavy = evaluate_policy(ConstantPolicy(0.0), spec, {"pole_mass": 3.0}, episodes=2, seed=0)
    assert light.mean_return != heavy.mean_return
    assert light.success_rate == 0.0  # a passive pole falls before the time limit


def test_grid_heat_map(tmp_path):
    spec = rs.load_env_spec("inverted_pendulum")
    grid = GridSpec("pole_mass", "motor_strength", (0.5, 2.0), (0.5, 1.0, 1.5))
    res = evaluate_grid(ConstantPolicy(0.2), spec, grid, episodes=1, seed=0)
    assert np.asarray(res.mean_return).shape == (3, 2)
    assert res.train_box["pole_mass"] == [0.7, 1.3]
    png = plot_grid(res, tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trajectories_round_trip_and_bad_files(tmp_path):
    env = rs.make_real_env("inverted_pendulum", {"pole_mass": 1.5}, seed=0)
    trajs = rs.collect_trajectories(env, policy=None, episodes=2, seed=1)
    assert trajs.n_episodes == 2 and trajs.qpos.shape == (len(trajs.obs), 2)
    assert trajs.params[0]["pole_mass"] == 1.5
    path = trajs.save(tmp_path / "real.npz")
    back = rs.load_trajectories(path)
    np.testing.assert_array_equal(back.obs, trajs.obs)
    np.testing.assert_array_equal(back.lengths, trajs.lengths)
    assert back.params == trajs.params
    # Same seed, same episodes.
    again = rs.collect_trajectories(rs.make_real_env("inverted_pendulum", {"pole_mass": 1.5}, seed=0), None, 2, seed=1)
    np.testing.assert_array_equal(again.actions, trajs.actions)

    empty = tmp_path / "empty.npz"
    np.savez(empty, obs=np.zeros((0, 4)), actions=np.zeros((0, 1)), rewards=np.zeros(0))
    with pytest.raises(rs.SpecError, match="empty.npz: the file holds no steps"):
        rs.load_trajectories(empty)
    nan = tmp_path / "nan.npz"
    np.savez(nan, obs=np.full((3, 4), np.nan), actions=np.zeros((3, 1)), rewards=np.zeros(3))
    with pytest.raises(rs.SpecError, match="nan.npz: 'obs' holds NaN"):
        rs.load_trajectories(nan)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(rs.SpecError, match="corrupt.npz: not a readable"):
        rs.load_trajectories(corrupt)
    short = tmp_path / "short.npz"
    np.savez(short, obs=np.zeros((3, 4)), actions=np.zeros((2, 1)), rewards=np.zeros(3))
    with pytest.raises(rs.SpecError, match="'actions' has 2 rows; expected 3"):
        rs.load_trajectories(short)
