"""Active DR: SVPG, the transition discriminator, proposals, state, the CLI and bad input."""

import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th

import rlsim2real as rs
import rlsim2real.strategies.svpg as svpg_module
from rlsim2real.distributions import ParticleDistribution
from rlsim2real.params import SpecError
from rlsim2real.strategies import ActiveSettings, ActiveStrategy, EpisodeRecord
from rlsim2real.strategies.active import TransitionDiscriminator
from rlsim2real.strategies.svpg import SVPG, rbf_kernel

HOPPER = rs.load_env_spec("hopper")
IP = rs.load_env_spec("inverted_pendulum")


def peak(x: np.ndarray, at: float = 0.8) -> np.ndarray:
    return -((x - at) ** 2).sum(axis=1)


# ------------------------------------------------------------------ SVPG
def test_one_particle_without_temperature_is_a_plain_policy_gradient():
    svpg = SVPG(dim=2, particles=1, temperature=0.0, seed=3)
    K, R, _ = rbf_kernel(svpg.flat_parameters())
    assert K.item() == 1.0 and float(R.abs().max()) == 0.0
    # One update equals an Adam step on REINFORCE with the critic's baseline, done by hand.
    import copy

    x = svpg.propose()
    reward = peak(x)
    particle = copy.deepcopy(svpg.particles[0])
    optimizer = th.optim.Adam(particle.actor_parameters(), lr=3e-4)
    state = th.as_tensor(svpg._states[0], dtype=th.float32)
    step = th.as_tensor(svpg._steps[0], dtype=th.float32)
    with th.no_grad():
        advantage = th.as_tensor(reward, dtype=th.float32) - particle.critic(state).squeeze(-1)
    loss = -(particle.distribution(state).log_prob(step).sum(-1) * advantage).mean()
    loss.backward()
    optimizer.step()
    svpg.observe(reward)
    for mine, theirs in zip(svpg.particles[0].actor_parameters(), particle.actor_parameters()):
        assert th.allclose(mine, theirs, atol=1e-7)


def test_one_particle_climbs_a_synthetic_reward():
    climbed = []
    for seed in range(3):
        svpg = SVPG(dim=1, particles=1, temperature=0.0, max_step=0.1, seed=seed)
        rewards = []
        for _ in range(250):
            x = svpg.propose()
            rewards.append(peak(x)[0])
            svpg.observe(peak(x))
        climbed.append(np.mean(rewards[-80:]) - np.mean(rewards[:40]))
        # Uniform positions would score E[-(x - 0.8)^2] = -0.173 on average.
        assert np.mean(rewards[-80:]) > -0.1, (seed, np.mean(rewards[-80:]))
    assert np.mean(climbed) > 0.05


def spread(svpg: SVPG) -> float:
    theta = svpg.flat_parameters()
    return float(th.pdist(theta).mean())


def test_the_kernel_keeps_particles_apart(monkeypatch):
    def run(temperature: float, independent: bool) -> float:
        svpg = SVPG(dim=2, particles=5, temperature=temperature, seed=1, lr=3e-3)
        start = spread(svpg)
        for _ in range(80):
            x = svpg.propose()
            svpg.observe(peak(x, 0.5))
        return spread(svpg) / start

    repelled = run(10.0, False)
    # Independent gradient ascent: the same particles, each on its own gradient (no kernel).
    monkeypatch.setattr(svpg_module, "rbf_kernel", lambda theta: (th.eye(len(theta)), th.zeros_like(theta), 1.0))
    independent = run(0.0, True)
    assert repelled > independent * 1.3, (repelled, independent)


def test_proposals_are_bounded_steps_inside_the_box():
    svpg = SVPG(dim=3, particles=4, max_step=0.05, seed=0)
    before = svpg.positions.copy()
    for _ in range(60):
        x = svpg.propose()
        assert np.all(x >= 0.0) and np.all(x <= 1.0)
        assert np.all(np.abs(x - before) <= 0.05 + 1e-12)
        svpg.observe(np.ones(4))  # reward everything: particles run into the walls
        before = x


# ------------------------------------------------------------------ discriminator
def test_the_discriminator_separates_shifted_transitions_and_rewards_them_more():
    rng = np.random.default_rng(0)
    width = 7
    reference = rng.normal(0.0, 1.0, (2000, width))
    like_reference = rng.normal(0.0, 1.0, (1000, width))
    shifted = rng.normal(0.0, 1.0, (1000, width)) + np.array([1.5] + [0.0] * (width - 1))
    th.manual_seed(0)
    disc = TransitionDiscriminator(width, 64)
    optimizer = th.optim.Adam(disc.parameters(), lr=3e-3)
    randomized = np.concatenate([like_reference, shifted])
    disc.observe(np.concatenate([randomized, reference]))
    for _ in range(10):
        disc.fit(randomized, reference, optimizer, 50, 256, rng)
    _, accuracy = disc.fit(shifted, reference, optimizer, 1, 256, rng)
    assert accuracy > 0.75
    assert disc.reward(shifted) > disc.reward(like_reference) + 0.3


# ------------------------------------------------------------------ the strategy
def fake_reference(width: int, seed: int = 0):
    rng = np.random.default_rng(seed)

    def source(round: int) -> np.ndarray:
        return rng.normal(0.0, 1.0, (64, width))

    return source


def records_for(strategy: ActiveStrategy, rng: np.random.Generator, width: int = 6) -> list[EpisodeRecord]:
    """One finished episode per particle of the current round; transitions drift with the
    particle's first parameter (a shift the discriminator can see)."""
    out = []
    for i, vector in enumerate(strategy.distribution.vectors):
        shift = float(vector[0] - strategy.box[0].mean())
        rows = rng.normal(shift, 1.0, (32, width))
        out.append(EpisodeRecord(i, vector, strategy.searched, (i, strategy.round), 10.0, 32, False, False,
                                 timesteps=100 * strategy.round, transitions=rows))
    return out


def test_proposals_stay_inside_the_limits_and_pass_the_workers_check():
    strategy = ActiveStrategy(HOPPER, ActiveSettings(particles=3, box="limits", max_step=0.5, reset_every=0))
    strategy.set_reference(fake_reference(6))
    rng = np.random.default_rng(0)
    lo, hi = strategy.limits[:, 0], strategy.limits[:, 1]
    env = rs.make_env("hopper", seed=0)
    try:
        for _ in range(15):
            assert strategy.update(records_for(strategy, rng))
            values = strategy.distribution.vectors
            assert np.all(values >= lo - 1e-9) and np.all(values <= hi + 1e-9)
            for share in strategy.shares(4):
                env.unwrapped  # noqa: B018 (the env is built)
                env.get_wrapper_attr("set_distribution")(strategy.distribution.serving(share))
    finally:
        env.close()


def test_each_worker_runs_its_own_particles():
    strategy = ActiveStrategy(IP, ActiveSettings(particles=3))
    assert strategy.shares(6) == [[0], [1], [2], [0], [1], [2]]
    assert strategy.shares(2) == [[0, 2], [1]]
    dist = strategy.distribution.serving([1])
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, tag = dist.sample_tagged(rng)
        assert tag == (1, 0)
        at = [IP.params.index(n) for n in strategy.searched]
        assert np.array_equal(x[at], strategy.distribution.vectors[1])


def test_a_round_waits_for_every_particle_then_moves_them():
    strategy = ActiveStrategy(IP, ActiveSettings(particles=3, min_episodes=1, max_round_rollouts=3))
    strategy.set_reference(fake_reference(6))
    rng = np.random.default_rng(0)
    recs = records_for(strategy, rng)
    before = strategy.distribution.vectors.copy()
    assert not strategy.update(recs[:2])  # particle 2 has not finished an episode yet
    stale = EpisodeRecord(0, before[0], strategy.searched, (0, strategy.round - 1), 1.0, 5, False, False,
                          transitions=recs[0].transitions)
    assert not strategy.update([stale])  # an old round's episode counts for nobody
    assert strategy.update(recs[2:])
    assert strategy.round == 1 and not np.array_equal(strategy.distribution.vectors, before)
    logs = strategy.log_values()
    assert np.isfinite([logs[f"active/reward_{i}"] for i in range(3)]).all()
    assert logs["active/reference_steps"] == 64 and 0.0 <= logs["active/disc_accuracy"] <= 1.0
    # A round also ends after max_round_rollouts; a particle without episodes gets no reward.
    for _ in range(2):
        assert not strategy.update(records_for(strategy, rng)[:1])
    assert strategy.update(records_for(strategy, rng)[:1])
    assert np.isnan(strategy.rewards[1]) and np.isfinite(strategy.rewards[0])


def test_kill_and_resume_restores_particles_discriminator_and_optimizers_exactly():
    settings = ActiveSettings(particles=3, horizon=2, reset_every=3)
    a = ActiveStrategy(IP, settings, seed=5)
    a.set_reference(fake_reference(6, seed=1))
    rng = np.random.default_rng(0)
    for _ in range(5):
        a.update(records_for(a, rng))
    state = pickle.loads(pickle.dumps(a.state_dict()))
    b = ActiveStrategy(IP, settings, seed=5)
    b.load_state_dict(state)
    for x, y in zip(a.svpg.flat_parameters(), b.svpg.flat_parameters()):
        assert th.equal(x, y)
    assert b.svpg.actor_optimizers[0].state_dict()["state"][0]["exp_avg"].equal(
        a.svpg.actor_optimizers[0].state_dict()["state"][0]["exp_avg"])
    # From here both continue identically, fed the same episodes and reference transitions.
    a.set_reference(fake_reference(6, seed=9))
    b.set_reference(fake_reference(6, seed=9))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(4):
        a.update(records_for(a, rng_a))
        b.update(records_for(b, rng_b))
        assert np.array_equal(a.distribution.vectors, b.distribution.vectors)
    for x, y in zip(a.discriminator.parameters(), b.discriminator.parameters()):
        assert th.equal(x, y)
    assert a.summary() == b.summary()


def test_particle_distribution_round_trips_through_its_state():
    strategy = ActiveStrategy(IP, ActiveSettings(particles=2))
    dist = strategy.distribution.serving([1])
    again = rs.distributions.distribution_from_state(json.loads(json.dumps(dist.state_dict())))
    assert isinstance(again, ParticleDistribution) and again == dist


# ------------------------------------------------------------------ CLI and bad input
ACTIVE_TINY = """
[experiment]
env = "inverted_pendulum"
agent = "recurrent_ppo"
timesteps = {timesteps}
seed = 0
n_envs = 2
vec_env = "{vec_env}"
normalize = true
checkpoint_every = 0
max_episode_steps = 40

[strategy]
name = "active"
particles = 2
reference_episodes = 1
discriminator_updates = 5

[hyperparameters]
n_steps = 64
batch_size = 64
n_epochs = 1

[evaluation]
enabled = false
"""


@pytest.mark.parametrize("vec_env", ["dummy", "subproc"])
def test_cli_tiny_active_run_writes_its_logs_and_particles_png(tmp_path, vec_env):
    exp = tmp_path / "active.toml"
    exp.write_text(ACTIVE_TINY.format(timesteps=640, vec_env=vec_env))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "train", str(exp), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out / "logs" / "progress.csv")))
    last = rows[-1]
    for key in ("active/disc_accuracy", "active/disc_loss", "active/reward_0", "active/reward_1",
                "active/pole_mass_mean", "active/pole_mass_std", "active/reference_steps"):
        assert last.get(key) not in (None, ""), key
    assert float(last["active/reference_steps"]) > 0 and float(last["active/rounds"]) >= 2
    png = (out / "particles.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # Worker j ran particle j (two workers, two particles), round after round.
    episodes = list(csv.DictReader(open(out / "logs" / "episodes.csv")))
    assert episodes and all(json.loads(e["tag"])[0] == int(e["env"]) for e in episodes)
    # The reference steps were not trained on: the agent counted exactly its budget.
    assert int(float(last["time/total_timesteps"])) == 640
    summary = json.loads((out / "strategy.json").read_text())
    assert summary["strategy"] == "active" and summary["reference_steps"] == float(last["active/reference_steps"])


BAD_ACTIVE = {
    "no particles": ("particles = 2", "particles = 0", "strategy.particles", ">= 1"),
    "step zero": ("particles = 2", "particles = 2\nmax_step = 0.0", "strategy.max_step", "(0, 1]"),
    "step above one": ("particles = 2", "particles = 2\nmax_step = 1.5", "strategy.max_step", "(0, 1]"),
    "negative temperature": ("particles = 2", "particles = 2\ntemperature = -1.0", "strategy.temperature", ">= 0"),
    "unknown reference": ("particles = 2", 'particles = 2\nreference = "mars"', "strategy.reference", "heavy_pole"),
    "discriminator type": ("discriminator_updates = 5", 'discriminator_updates = "many"',
                           "strategy.discriminator_updates", "an integer"),
    "discriminator lr": ("discriminator_updates = 5", "discriminator_updates = 5\ndiscriminator_lr = 0",
                         "strategy.discriminator_lr", "> 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_ACTIVE))
def test_bad_active_settings_name_the_file_and_key(tmp_path, case):
    old, new, key, expected = BAD_ACTIVE[case]
    assert old in ACTIVE_TINY
    exp = tmp_path / "bad.toml"
    exp.write_text(ACTIVE_TINY.replace(old, new).format(timesteps=64, vec_env="dummy"))
    with pytest.raises(SpecError) as err:
        rs.load_experiment_spec(exp)
    message = str(err.value)
    assert "\n" not in message and str(exp) in message and key in message, message
    assert expected in message, message


def test_bad_active_setting_on_the_cli_is_one_line_exit_2_and_no_run(tmp_path):
    exp = tmp_path / "bad.toml"
    exp.write_text(ACTIVE_TINY.replace("particles = 2", 'particles = 2\nreference = "mars"').format(
        timesteps=64, vec_env="dummy"))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "train", str(exp), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "strategy.reference" in lines[0] and "bad.toml" in lines[0], lines
    assert not out.exists()


def test_active_dr_refuses_pixel_envs_by_name():
    with pytest.raises(SpecError, match="strategy.name: active DR's discriminator reads .* observes pixels"):
        ActiveStrategy(rs.load_env_spec("inverted_pendulum_pixels"))


def test_every_built_in_active_experiment_loads():
    for path in sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*active*.toml")):
        spec = rs.load_experiment_spec(path)
        assert spec.strategy == "active", path


def test_an_active_checkpoint_holds_particles_and_discriminator_and_a_resume_continues(tmp_path):
    exp = tmp_path / "active.toml"
    exp.write_text(ACTIVE_TINY.format(timesteps=512, vec_env="dummy").replace("checkpoint_every = 0",
                                                                                "checkpoint_every = 256"))
    out = tmp_path / "run"
    rs.train(exp, out=out, evaluate=False, timesteps=256)  # stopped at its checkpoint
    ckpt = rs.runs.Run.open(out).checkpoints()[0]
    state = pickle.loads((ckpt / "strategy.pkl").read_bytes())
    assert state["strategy"] == "active" and state["round"] >= 1
    assert state["discriminator"] is not None and state["disc_optimizer"]["state"]
    assert len(state["svpg"]["particles"]) == 2 and state["svpg"]["actor_optimizers"][0]["state"]
    restored = ActiveStrategy(rs.load_experiment_spec(exp).train_env,
                              ActiveSettings(particles=2, reference_episodes=1, discriminator_updates=5))
    restored.load_state_dict(state)
    for x, y in zip(restored.discriminator.state_dict().values(), state["discriminator"].values()):
        assert th.equal(x, y)
    assert np.array_equal(restored.distribution.vectors, state["distribution"].vectors)
    (out / "run.json").write_text(json.dumps({"status": "running", "timesteps": 256}))
    rs.train(exp, out=out, resume=True, evaluate=False)
    rows = list(csv.DictReader(open(out / "logs" / "progress.csv")))
    rounds = [float(r["active/rounds"]) for r in rows if r.get("active/rounds")]
    assert rounds == sorted(rounds) and rounds[-1] > state["round"]  # continued, not restarted
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
