"""Learning tests (minutes each): run with `python -m pytest -m slow`."""

from pathlib import Path

import pytest

import rlsim2real as rs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["quickstart", "inverted_pendulum_dann"])
def test_recurrent_ppo_with_uniform_randomization_learns_inverted_pendulum(tmp_path, experiment):
    run = rs.train(ROOT / "experiments" / f"{experiment}.toml", out=tmp_path / "run", evaluate=False)
    report = rs.evaluate_transfer(run, episodes=10, sets=["nominal", "in_range", "heavy_pole"])
    # A random policy balances for about 5-40 steps; the task's ceiling is 1000.
    assert report.sets["nominal"].mean_return > 900
    assert report.sets["in_range"].mean_return > 900
    assert report.sets["heavy_pole"].mean_return > 500  # outside the box, still mostly balanced
