"""The SimOpt loop: fit to episodes on the real set, move the distribution, keep its state."""

import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rlsim2real as rs
from rlsim2real.params import SpecError
from rlsim2real.strategies import EpisodeRecord, SimOptSettings, SimOptStrategy

IP = rs.load_env_spec("inverted_pendulum")
ROOT = Path(__file__).resolve().parents[1]


def record(t: int) -> EpisodeRecord:
    return EpisodeRecord(0, np.ones(len(IP.params)), IP.params.names, None, 10.0, 10, False, False, timesteps=t)


def simopt(**settings) -> SimOptStrategy:
    base = dict(real_set="heavy_pole", params=("pole_mass",), real_episodes=2, policy_steps=100, budget=60, steps=1,
                iterations=2)
    strategy = SimOptStrategy(IP, SimOptSettings(**{**base, **settings}), seed=3)
    strategy.set_policy(None)  # random actions on the real system
    return strategy


def test_a_fit_moves_the_distribution_to_the_real_system_on_schedule():
    s = simopt()
    assert not s.update([record(50)])  # before policy_steps
    assert s.update([record(150)])
    logs = s.log_values()
    assert abs(logs["simopt/pole_mass_mean"] - 2.0) < 0.1  # heavy_pole: the pole twice as heavy
    assert logs["simopt/real_episodes"] == 2 and logs["simopt/real_steps"] > 0 and logs["simopt/sim_evaluations"] >= 60
    # InvertedPendulum-v5 pays 1 per step until the pole falls, 0 for the step that drops it.
    assert logs["simopt/real_return"] == s.fits[-1]["real_steps"] / 2 - 1
    p = s.distribution.space["pole_mass"]
    assert p.dist == "normal" and abs(p.mean - 2.0) < 0.1 and p.range == p.limits  # truncated to the limits
    assert s.distribution.space["cart_mass"] == IP.params["cart_mass"]  # not fitted: its box
    draws = s.distribution.sample_batch(np.random.default_rng(0), 200)[:, IP.params.index("pole_mass")]
    assert abs(draws.mean() - 2.0) < 0.15
    assert not s.update([record(200)])  # the next fit waits policy_steps
    assert s.update([record(260)]) and s.iteration == 2
    assert not s.update([record(10_000)])  # iterations done: the distribution stays


def test_the_state_round_trips_and_the_next_fit_continues_identically():
    a = simopt(iterations=3)
    a.update([record(150)])
    b = simopt(iterations=3)
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    assert b.distribution == a.distribution and b.summary() == a.summary()
    assert a.update([record(300)]) and b.update([record(300)])
    assert a.fits[-1] == b.fits[-1]  # warm-started from the same fit, same seeds


def test_episodes_too_short_to_compare_skip_the_fit_without_ending_the_run():
    s = simopt(steps=500)  # no random episode on the real pendulum lasts 500 steps
    with pytest.warns(UserWarning, match="simopt: no fit at step 150"):
        assert not s.update([record(150)])
    assert s.iteration == 0 and s.skipped == 1 and s.distribution == SimOptStrategy(
        IP, SimOptSettings(real_set="heavy_pole", params=("pole_mass",))).distribution
    assert s.log_values()["simopt/skipped_fits"] == 1 and s.next_fit == 250


BAD = {
    "no real set": ({"real_set": ""}, "strategy.real_set"),
    "unknown real set": ({"real_set": "mars"}, "strategy.real_set"),
    "not a model field": ({"params": ("obs_bias",)}, "strategy.params"),
    "no iterations": ({"iterations": 0}, "strategy.iterations"),
    "mode": ({"mode": "dream"}, "strategy.mode"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_simopt_settings_name_the_key(case):
    settings, key = BAD[case]
    with pytest.raises(SpecError, match=key):
        simopt(**settings)


def test_cli_tiny_simopt_run_fits_logs_and_keeps_its_state(tmp_path):
    exp = tmp_path / "simopt.toml"
    exp.write_text((ROOT / "experiments" / "inverted_pendulum_simopt.toml").read_text()
                   .replace("timesteps = 80_000", "timesteps = 512").replace("checkpoint_every = 20_000", "checkpoint_every = 256")
                   .replace("policy_steps = 20_000", "policy_steps = 256").replace("budget = 300", "budget = 30")
                   .replace("iterations = 3", "iterations = 1")
                   + "\n[hyperparameters]\nn_steps = 64\nbatch_size = 64\nn_epochs = 1\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "train", str(exp), "--out", str(out), "--no-eval"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out / "logs" / "progress.csv")))
    assert float(rows[-1]["simopt/iteration"]) == 1 and float(rows[-1]["simopt/real_episodes"]) == 2
    for name in ("cart_mass", "pole_mass", "motor_strength"):
        assert rows[-1][f"simopt/{name}_mean"] not in ("", None)
    summary = json.loads((out / "strategy.json").read_text())
    assert summary["strategy"] == "simopt" and len(summary["fits"]) == 1
    state = pickle.loads((out / "strategy.pkl").read_bytes())
    assert state["iteration"] == 1 and state["fits"][0]["unit_mean"]
