"""Strategies: ADR's update rule by hand, the strategy loop through VecEnvs, state, CLI, bad input."""

import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import rlsim2real as rs
from rlsim2real import BoxDistribution, ParamSpace
from rlsim2real.runs import Run
from rlsim2real.strategies import AutomaticSettings, AutomaticStrategy, EpisodeRecord, Strategy, make_strategy
from rlsim2real.strategies.feedback import StrategyFeedback

ROOT = Path(__file__).resolve().parents[1]
SPEC = rs.load_env_spec("inverted_pendulum")


def adr(**settings) -> AutomaticStrategy:
    base = dict(params=("pole_mass", "obs_noise"), queue_length=3, delta=0.1, performance="return",
                threshold_high=900.0, threshold_low=300.0)
    return AutomaticStrategy(SPEC, AutomaticSettings(**{**base, **settings}))


def boundary(strategy: AutomaticStrategy, name: str, side: int, ret: float, value: float | None = None) -> EpisodeRecord:
    j = strategy.adapted.index(name)
    value = strategy.ranges[j, side] if value is None else value
    return EpisodeRecord(0, np.zeros(0), (), (j, side, float(value)), ret, 100, ret > 500, False)


# ------------------------------------------------------------------ ADR by hand
def test_adr_expands_on_high_performance_only_from_a_full_queue():
    s = adr()
    assert s.bounds("pole_mass") == (1.0, 1.0) and s.bounds("obs_noise") == (0.0, 0.0)
    assert not s.update([boundary(s, "pole_mass", 1, 950.0), boundary(s, "pole_mass", 1, 990.0)])
    assert s.bounds("pole_mass") == (1.0, 1.0)  # two of three: not judged yet
    assert s.update([boundary(s, "pole_mass", 1, 920.0)])
    assert s.bounds("pole_mass") == pytest.approx((1.0, 1.1))
    assert s.queues[0][1] == []  # judged, then cleared
    # The lower side moves down on its own queue; the other parameter is untouched.
    s.update([boundary(s, "pole_mass", 0, 1000.0) for _ in range(3)])
    assert s.bounds("pole_mass") == pytest.approx((0.9, 1.1)) and s.bounds("obs_noise") == (0.0, 0.0)
    # The new distribution samples the new range.
    assert s.distribution.space["pole_mass"].range == pytest.approx((0.9, 1.1))


def test_adr_shrinks_on_low_performance_but_never_inside_the_initial_range():
    s = adr(initial="range", params=("pole_mass",))
    assert s.bounds("pole_mass") == (0.7, 1.3)  # the spec's training box
    for _ in range(2):
        s.update([boundary(s, "pole_mass", 1, 990.0) for _ in range(3)])
    assert s.bounds("pole_mass") == pytest.approx((0.7, 1.5))
    for _ in range(5):  # fails at the bound: shrinks back, but stops at the initial 1.3
        s.update([boundary(s, "pole_mass", 1, 10.0) for _ in range(3)])
    assert s.bounds("pole_mass") == pytest.approx((0.7, 1.3))
    s.update([boundary(s, "pole_mass", 0, 10.0) for _ in range(3)])
    assert s.bounds("pole_mass") == pytest.approx((0.7, 1.3))
    # Middling performance (between the thresholds) leaves the bound where it is.
    before = s.ranges.copy()
    assert not s.update([boundary(s, "pole_mass", 1, 600.0) for _ in range(3)])
    assert np.array_equal(s.ranges, before)


def test_adr_never_passes_a_limit_and_multiplicative_steps_scale():
    s = adr(params=("pole_mass",), delta_mode="multiplicative", delta=1.0)  # x2 per step; limits [0.25, 4]
    for _ in range(6):
        s.update([boundary(s, "pole_mass", 1, 999.0) for _ in range(3)])
        s.update([boundary(s, "pole_mass", 0, 999.0) for _ in range(3)])
    assert s.bounds("pole_mass") == (0.25, 4.0)
    assert s.expansions == 4  # 1 -> 2 -> 4 and 1 -> 0.5 -> 0.25, then pinned at the limits


def test_adr_ignores_stale_and_non_boundary_episodes():
    s = adr(queue_length=1)
    s.update([boundary(s, "pole_mass", 1, 999.0)])
    assert s.bounds("pole_mass") == pytest.approx((1.0, 1.1))
    # An episode drawn at the old bound (1.0) says nothing about the new one.
    assert not s.update([boundary(s, "pole_mass", 1, 999.0, value=1.0)])
    assert s.stale == 1 and s.bounds("pole_mass") == pytest.approx((1.0, 1.1))
    plain = EpisodeRecord(0, np.zeros(0), (), None, 999.0, 100, True, False)
    assert not s.update([plain] * 10)


def test_adr_success_performance_uses_the_record_success():
    s = adr(performance="success", threshold_high=0.8, threshold_low=0.2, queue_length=4)
    recs = [boundary(s, "obs_noise", 1, 0.0) for _ in range(4)]
    recs = [EpisodeRecord(r.env, r.vector, r.names, r.tag, r.ret, r.length, True, False) for r in recs]
    assert s.update(recs)
    assert s.bounds("obs_noise") == pytest.approx((0.0, 0.1))


def test_adr_state_round_trips_ranges_queues_and_history():
    s = adr()
    s.update([boundary(s, "pole_mass", 1, 990.0) for _ in range(3)] + [boundary(s, "obs_noise", 0, 10.0)])
    copy = adr()
    copy.load_state_dict(pickle.loads(pickle.dumps(s.state_dict())))
    assert np.array_equal(copy.ranges, s.ranges) and copy.queues == s.queues and copy.history == s.history
    assert copy.distribution == s.distribution
    # Both continue identically.
    more = [boundary(s, "obs_noise", 0, 10.0), boundary(s, "obs_noise", 0, 10.0)]
    assert copy.update(more) == s.update(more) and np.array_equal(copy.ranges, s.ranges)


# ------------------------------------------------------------------ the loop
class Recording(Strategy):
    """Keeps every record; switches to a pinned-looking box after its first update."""

    name = "recording"

    def __init__(self, distribution):
        super().__init__(distribution)
        self.records: list[EpisodeRecord] = []
        self.calls = 0

    def update(self, records):
        self.records.extend(records)
        self.calls += 1
        if self.calls == 1:
            self.distribution = BoxDistribution(ParamSpace([SPEC.params["pole_mass"].with_range(1.25, 1.25)]))
            return True
        return False


class Tagged(BoxDistribution):
    """Tags each sample with its own values, so a record's tag must match its vector."""

    def sample_tagged(self, rng):
        x = self.sample(rng)
        return x, tuple(round(v, 12) for v in x.tolist())


class CountDones:
    def __init__(self):
        self.dones = 0


@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_the_loop_delivers_every_finished_episode_once_with_its_own_parameters_and_tag(vec_cls):
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    dist = Tagged(ParamSpace([SPEC.params["pole_mass"].with_range(0.7, 1.3), SPEC.params["motor_strength"]]))
    fns = [lambda i=i: Monitor(rs.make_env(SPEC, seed=10 + i, distribution=dist)) for i in range(2)]
    venv = vec_cls(fns)
    strategy = Recording(dist)
    counter = CountDones()

    class Count(BaseCallback):
        def _on_step(self):
            counter.dones += int(np.sum(self.locals["dones"]))
            return True

    try:
        model = PPO("MlpPolicy", venv, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
        model.learn(128 * 2 * 3, callback=[StrategyFeedback(strategy, None), Count()])
    finally:
        venv.close()
    names = rs.make_env(SPEC).get_wrapper_attr("param_names")
    assert set(names) == set(SPEC.all_params.names)
    assert counter.dones == len(strategy.records) > 10
    tagged = [r for r in strategy.records if r.tag is not None]
    switched = [r for r in strategy.records if r.tag is None]
    for r in tagged:
        assert r.names == names
        p = r.params()
        assert r.tag == (round(p["pole_mass"], 12), round(p["motor_strength"], 12))
        assert 0.7 <= p["pole_mass"] <= 1.3 and p["cart_mass"] == 1.0
    # No episode is delivered twice: every vector (a continuous draw) is distinct.
    assert len({r.tag for r in tagged}) == len(tagged)
    assert {r.env for r in tagged} == {0, 1}
    # After the first update the new distribution reached both workers.
    assert switched and all(r.params()["pole_mass"] == 1.25 for r in switched) and {r.env for r in switched} == {0, 1}
    assert all(r.length >= 1 and np.isfinite(r.ret) for r in strategy.records)


# ------------------------------------------------------------------ training runs
ADR_TINY = """
[experiment]
name = "adr_tiny"
env = "inverted_pendulum"
agent = "recurrent_ppo"
timesteps = {timesteps}
seed = 1
n_envs = 2
checkpoint_every = {checkpoint}
max_episode_steps = 20
{strategy_line}

[strategy]
name = "automatic"
params = ["pole_mass", "obs_bias", "action_delay"]
performance = "return"
threshold_high = 5.0
threshold_low = 1.0
queue_length = 1
boundary_prob = 1.0
delta = {{ pole_mass = 0.2, obs_bias = 0.01, action_delay = 0.5 }}

[hyperparameters]
n_steps = 64
batch_size = 64
n_epochs = 1

[evaluation]
enabled = false
"""


def write_adr(tmp_path: Path, timesteps=512, checkpoint=0, strategy_line="") -> Path:
    path = tmp_path / "adr_tiny.toml"
    path.write_text(ADR_TINY.format(timesteps=timesteps, checkpoint=checkpoint, strategy_line=strategy_line))
    return path


def test_cli_tiny_adr_run_writes_ranges_to_progress_and_ranges_png(tmp_path):
    exp = write_adr(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "train", str(exp), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out / "logs" / "progress.csv")))
    for name in ("pole_mass", "obs_bias", "action_delay"):
        assert f"adr/{name}_lo" in rows[-1] and f"adr/{name}_hi" in rows[-1]
    his = [float(r["adr/pole_mass_hi"]) for r in rows if r.get("adr/pole_mass_hi")]
    assert his[-1] > 1.0 and his == sorted(his)  # the range grew during training
    assert float(rows[-1]["adr/obs_bias_hi"]) > 0.0 and float(rows[-1]["adr/obs_bias_lo"]) < 0.0
    png = (out / "ranges.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    summary = json.loads((out / "strategy.json").read_text())
    assert summary["strategy"] == "automatic" and summary["ranges"]["pole_mass"][1] > 1.0
    assert json.loads((out / "run.json").read_text())["strategy_updates"] > 0
    # episodes.csv names each episode's boundary tag and its values.
    episodes = list(csv.DictReader(open(out / "logs" / "episodes.csv")))
    assert episodes and all(e["tag"] for e in episodes)  # boundary_prob = 1
    # The experiment's training horizon (max_episode_steps = 20) cut the training episodes.
    assert max(int(e["length"]) for e in episodes) == 20


def test_kill_and_resume_restores_strategy_and_continues_the_parameter_stream(tmp_path):
    # Uniform DR: the stream of draws does not depend on when the distribution moves.
    exp = tmp_path / "uni.toml"
    exp.write_text(write_adr(tmp_path, timesteps=768, checkpoint=256).read_text().replace(
        '[strategy]\nname = "automatic"', '[strategy]\nname = "uniform"\n[unused]').split("[unused]")[0]
        + '[hyperparameters]\nn_steps = 64\nbatch_size = 64\nn_epochs = 1\n[evaluation]\nenabled = false\n')
    full, cut = tmp_path / "full", tmp_path / "cut"
    rs.train(exp, out=full, evaluate=False)
    rs.train(exp, out=cut, evaluate=False, timesteps=256)  # "killed" right after its checkpoint at 256
    for extra in ("model.zip", "vecnormalize.pkl", "strategy.json", "strategy.pkl", "samplers.pkl"):
        (cut / extra).unlink()
    (cut / "run.json").write_text(json.dumps({"status": "running", "timesteps": 256}))
    rs.train(exp, out=cut, resume=True, evaluate=False)

    def stream(run: Path, after: int) -> dict[int, list[tuple]]:
        out: dict[int, list[tuple]] = {0: [], 1: []}
        for row in csv.DictReader(open(run / "logs" / "episodes.csv")):
            if int(row["timesteps"]) > after:
                out[int(row["env"])].append((row["pole_mass"], row["motor_strength"], row["joint_damping"]))
        return out

    uninterrupted, resumed = stream(full, 256), stream(cut, 256)
    for env in (0, 1):
        # The uninterrupted run first finishes the episode that was running at the checkpoint;
        # after that both runs draw the same parameters, episode for episode.
        n = min(len(resumed[env]), len(uninterrupted[env]) - 1)
        assert n >= 5
        assert resumed[env][:n] == uninterrupted[env][1 : n + 1]


def test_adr_checkpoint_holds_strategy_and_sampler_state(tmp_path):
    exp = write_adr(tmp_path, timesteps=512, checkpoint=256)
    out = tmp_path / "run"
    rs.train(exp, out=out, evaluate=False)
    ckpt = Run.open(out).checkpoints()[0]
    state = pickle.loads((ckpt / "strategy.pkl").read_bytes())
    samplers = pickle.loads((ckpt / "samplers.pkl").read_bytes())
    assert state["strategy"] == "automatic" and state["ranges"].shape == (3, 2) and len(state["queues"]) == 3
    assert len(samplers) == 2 and samplers[0]["rng"] != samplers[1]["rng"]
    restored = make_strategy("automatic", SPEC, rs.load_experiment_spec(exp).strategy_settings)
    restored.load_state_dict(state)
    assert np.array_equal(restored.ranges, state["ranges"]) and restored.history == state["history"]


# ------------------------------------------------------------------ bad input
BAD = {
    "thresholds crossed": ("threshold_high = 5.0", "threshold_high = 0.5", "strategy.threshold_low", "threshold_low < threshold_high"),
    "delta not positive": ("delta = {{ pole_mass = 0.2,", "delta = {{ pole_mass = -0.2,", "strategy.delta", "> 0"),
    "queue too short": ("queue_length = 1", "queue_length = 0", "strategy.queue_length", ">= 1"),
    "probability": ("boundary_prob = 1.0", "boundary_prob = 1.5", "strategy.boundary_prob", "[0, 1]"),
    "unknown setting": ("queue_length = 1", "queue_length = 1\nqueue_lenght = 3", "strategy", "unknown setting 'queue_lenght'"),
    "wrong type": ("queue_length = 1", 'queue_length = "ten"', "strategy.queue_length", "an integer"),
    "no limits": ('params = ["pole_mass",', 'params = ["no_such",', "strategy.params", "unknown parameter 'no_such'"),
    "unknown strategy": ('name = "automatic"', 'name = "telepathic"', "strategy.name", "expected one of uniform, automatic"),
    "contradiction": ("{strategy_line}", 'strategy = "uniform"', "strategy.name", "contradicts"),
    "initial outside": ("performance =", 'initial = "range"\nperformance =', "strategy", None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_strategy_settings_are_one_line_exit_2_and_no_run(tmp_path, case):
    old, new, key, expected = BAD[case]
    assert old in ADR_TINY or case == "initial outside"  # the case really edits the file
    if case == "initial outside":  # a spec whose range leaves the limits fails at the env spec
        env = tmp_path / "ip.toml"
        env.write_text((ROOT / "envs" / "inverted_pendulum.toml").read_text().replace(
            "limits = [0.25, 4.0]\nrange = [0.7, 1.3]", "limits = [0.25, 4.0]\nrange = [0.1, 1.3]", 1))
        text = ADR_TINY.replace('env = "inverted_pendulum"', f'env = "{env}"')
        key, expected = "params.cart_mass", "outside limits"
    else:
        text = ADR_TINY.replace(old, new) if old != "{strategy_line}" else ADR_TINY.replace("{strategy_line}", new)
    exp = tmp_path / "bad.toml"
    exp.write_text(text.format(timesteps=64, checkpoint=0, strategy_line=""))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "train", str(exp), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and expected in lines[0], lines
    assert not out.exists()


def test_limits_that_make_a_mass_non_positive_fail_at_load(tmp_path):
    env = tmp_path / "ip.toml"
    env.write_text((ROOT / "envs" / "inverted_pendulum.toml").read_text().replace(
        "limits = [0.25, 4.0]", "limits = [-0.5, 4.0]", 1))
    with pytest.raises(rs.SpecError, match=r"params.cart_mass: scale -0.5 makes body_mass\[cart\] .*expected > 0"):
        rs.load_env_spec(env)


@pytest.mark.parametrize("broken, expected", [
    ("strategy.pkl", "strategy.pkl: empty strategy state file"),
    ("samplers.pkl", "samplers.pkl: empty sampler state file"),
    ("vecnormalize.pkl", "vecnormalize.pkl: empty normalization file"),
    ("model.zip", "model.zip: empty model file"),
])
def test_resuming_from_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, broken, expected):
    exp = write_adr(tmp_path, timesteps=256, checkpoint=128)
    out = tmp_path / "run"
    rs.train(exp, out=out, evaluate=False)
    (out / "run.json").write_text(json.dumps({"status": "running", "timesteps": 128}))
    checkpoint = Run.open(out).checkpoints()[-1]
    (checkpoint / broken).write_bytes(b"")
    with pytest.raises(rs.SpecError) as err:
        rs.train(exp, out=out, resume=True, evaluate=False)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("env_name", ["hopper", "inverted_pendulum_pixels"])
def test_the_nominal_strategy_runs_the_nominal_model_and_look(env_name):
    spec = rs.load_env_spec(env_name)
    dist = rs.strategies.make_strategy("nominal", spec).distribution
    pinned, nominal, randomized = (rs.make_env(spec, seed=5, distribution=dist), rs.make_env(spec, seed=5, randomize=False),
                                   rs.make_env(spec, seed=5))
    trajectories = []
    for env in (pinned, nominal, randomized):
        obs, info = env.reset(seed=5)
        env.action_space.seed(0)
        steps = [obs]
        for _ in range(20):
            obs, *_ = env.step(env.action_space.sample())
            steps.append(obs)
        trajectories.append(np.stack(steps))
        env.close()
    np.testing.assert_array_equal(trajectories[0], trajectories[1])
    assert not np.array_equal(trajectories[0], trajectories[2])  # the spec's box does change what the policy sees
