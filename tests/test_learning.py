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


@pytest.mark.slow
def test_automatic_dr_grows_the_ranges_while_the_policy_keeps_balancing(tmp_path):
    import json

    run = rs.train(ROOT / "experiments" / "inverted_pendulum_adr.toml", timesteps=200_000, out=tmp_path / "run",
                   evaluate=False)
    summary = json.loads((run.path / "strategy.json").read_text())
    grown = [n for n, (lo, hi) in summary["ranges"].items() if hi - lo > 0]
    # Every range started as a point at the nominal value; most have opened up.
    assert len(grown) >= 6 and summary["expansions"] >= 20
    for name, (lo, hi) in summary["ranges"].items():
        lim_lo, lim_hi = summary["limits"][name]
        assert lim_lo <= lo <= hi <= lim_hi
    report = rs.evaluate_transfer(run, episodes=5, sets=["nominal", "sticky_cart"])
    assert report.sets["nominal"].mean_return > 900
    assert (run.path / "ranges.png").stat().st_size > 5000


@pytest.mark.slow
def test_active_dr_learns_inverted_pendulum_with_rounds_running_throughout(tmp_path):
    import csv

    run = rs.train(ROOT / "experiments" / "inverted_pendulum_active.toml", out=tmp_path / "run", evaluate=False)
    rows = [r for r in csv.DictReader(open(run.path / "logs" / "progress.csv")) if r.get("active/disc_accuracy")]
    # Rounds went on all through training, and the reference steps stayed a side cost.
    assert float(rows[-1]["active/rounds"]) >= 20
    assert 0 < float(rows[-1]["active/reference_steps"]) < 0.5 * float(rows[-1]["time/total_timesteps"])
    # The particles moved: proposals spread over the box rather than sitting where they began.
    first = [float(rows[0][k]) for k in rows[0] if k.startswith("active/") and k.endswith("_mean")]
    last = [float(rows[-1][k]) for k in rows[0] if k.startswith("active/") and k.endswith("_mean")]
    assert first != last
    report = rs.evaluate_transfer(run, episodes=10, sets=["nominal", "in_range"])
    assert report.sets["nominal"].mean_return > 900
    assert report.sets["in_range"].mean_return > 900
    assert (run.path / "particles.png").stat().st_size > 5000


@pytest.mark.slow
def test_a_cnn_policy_learns_inverted_pendulum_from_pixels(tmp_path):
    # About 15-20 minutes on 2 CPU cores (150k steps at ~140-200 steps/s with rendering).
    run = rs.train(ROOT / "experiments" / "inverted_pendulum_pixels.toml", timesteps=150_000, out=tmp_path / "run",
                   evaluate=False)
    report = rs.evaluate_transfer(run, episodes=5, sets=["nominal", "in_range"])
    # A random policy balances for about 8 steps from pixels as from states. Looks outside the
    # training box (unseen colours, dim light, ...) are not asserted: whether a policy holds on
    # them varies from seed to seed at this budget (benchmarks/results/dann_pixels.md).
    assert report.sets["nominal"].mean_return > 900
    assert report.sets["in_range"].mean_return > 900
