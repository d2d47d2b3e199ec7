"""Tiny end-to-end runs of train / evaluate / resume, through the API and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import rlsim2real as rs
from rlsim2real.runs import Run

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[experiment]
name = "tiny"
env = "inverted_pendulum"
agent = "{agent}"
timesteps = {timesteps}
seed = 3
n_envs = 2
checkpoint_every = {checkpoint}

[hyperparameters]
n_steps = 64
batch_size = 64
n_epochs = 1

[evaluation]
episodes = 2
sets = ["nominal", "heavy_pole", "sensor_shift"]
"""


def write_experiment(tmp_path: Path, agent="recurrent_ppo", timesteps=256, checkpoint=128) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(agent=agent, timesteps=timesteps, checkpoint=checkpoint))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlsim2real.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_cli_train_then_evaluate_writes_contract_transfer_json(tmp_path):
    exp = write_experiment(tmp_path)
    out = tmp_path / "run"
    res = cli("train", str(exp), "--out", str(out), "--no-eval", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for name in ("config.json", "model.zip", "vecnormalize.pkl", "strategy.json", "run.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert (out / "logs" / "progress.csv").is_file()
    assert list((out / "checkpoints").glob("step_*/model.zip")), "no periodic checkpoint"

    res = cli("evaluate", str(out), "--episodes", "2", "--sets", "nominal,heavy_pole", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "transfer.json").read_text())
    assert set(data) == {"env", "strategy", "dann", "timesteps", "seed", "sets"}
    assert data["env"] == "inverted_pendulum" and data["strategy"] == "uniform" and data["dann"] is False
    assert data["seed"] == 3 and data["timesteps"] >= 256
    assert set(data["sets"]) == {"nominal", "heavy_pole"}
    for entry in data["sets"].values():
        assert set(entry) == {"mean_return", "std_return", "episodes", "success_rate", "params"}
        assert entry["episodes"] == 2 and 0.0 <= entry["success_rate"] <= 1.0
    assert data["sets"]["heavy_pole"]["params"]["pole_mass"] == 2.0
    assert data["sets"]["nominal"]["params"]["pole_mass"] == 1.0
    assert "| heavy_pole |" in (out / "transfer.md").read_text()


def test_cli_rejects_bad_input_with_exit_2_and_no_complete_run(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.format(agent="recurrent_ppo", timesteps=256, checkpoint=0).replace("seed = 3", "sed = 3"))
    res = cli("train", str(bad), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert res.returncode == 2
    assert "bad.toml" in res.stderr and "'sed'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()

    res = cli("evaluate", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert res.returncode == 2 and "not a run directory" in res.stderr


def test_train_resume_continues_step_count_and_strategy(tmp_path):
    exp = write_experiment(tmp_path, timesteps=256, checkpoint=128)
    out = tmp_path / "run"
    first = rs.train(exp, out=out, evaluate=False)
    assert first.status["timesteps"] == 256
    # Pretend the run died after its first checkpoint: keep only that one.
    for extra in ("model.zip", "vecnormalize.pkl", "strategy.json"):
        (out / extra).unlink()
    ckpts = Run.open(out).checkpoints()
    for c in ckpts[1:]:
        for f in c.iterdir():
            f.unlink()
        c.rmdir()
    step0 = int(ckpts[0].name.split("_")[1])
    assert step0 < 384
    resumed = rs.train(exp, out=out, resume=True, timesteps=384, evaluate=False)
    model = resumed.load_model(device="cpu")
    # The step count went on from the checkpoint instead of starting over at zero.
    assert model.num_timesteps >= 384
    assert model.num_timesteps - step0 < 384
    state = json.loads((out / "strategy.json").read_text())
    assert state["strategy"] == "uniform" and state["distribution"]["type"] == "box"


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    exp = write_experiment(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(rs.SpecError, match="not empty"):
        rs.train(exp, out=out)


def test_ppo_baseline_and_evaluate_api(tmp_path):
    exp = write_experiment(tmp_path, agent="ppo", checkpoint=0)
    run = rs.train(exp, out=tmp_path / "ppo", evaluate=False)
    report = rs.evaluate_transfer(run, episodes=2, sets=["nominal", "sticky_cart"])
    assert report.to_dict()["sets"]["sticky_cart"]["params"]["friction"] == 1.5
    assert "sticky_cart" in report.table()
    with pytest.raises(rs.SpecError, match="unknown real set 'moon'"):
        rs.evaluate_transfer(run, episodes=1, sets=["moon"])


DANN = """
[experiment]
env = "inverted_pendulum"
agent = "recurrent_ppo_dann"
timesteps = 256
seed = 1
n_envs = 2

[hyperparameters]
n_steps = 64
batch_size = 64
n_epochs = 1

[target]
{target}

[evaluation]
episodes = 1
sets = ["nominal", "sensor_shift"]
"""


def test_cli_tiny_dann_training_logs_domain_metrics(tmp_path):
    exp = tmp_path / "dann.toml"
    exp.write_text(DANN.format(target='set = "sensor_shift"\nepisodes = 1\nrefresh_every = 2'))
    out = tmp_path / "run"
    res = cli("train", str(exp), "--out", str(out), "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    header = (out / "logs" / "progress.csv").read_text().splitlines()[0].split(",")
    for key in ("dann/domain_loss", "dann/heldout_accuracy", "dann/lambda"):
        assert key in header
    data = json.loads((out / "transfer.json").read_text())
    assert data["dann"] is True and set(data["sets"]) == {"nominal", "sensor_shift"}


def test_dann_from_a_trajectory_file_and_bad_files_fail_before_training(tmp_path):
    import numpy as np

    real = rs.make_real_env("inverted_pendulum", "sensor_shift", seed=0)
    rs.collect_trajectories(real, policy=None, episodes=3, seed=0).save(tmp_path / "real.npz")
    exp = tmp_path / "dann.toml"
    exp.write_text(DANN.format(target='file = "real.npz"'))
    run = rs.train(exp, out=tmp_path / "ok", evaluate=False)
    assert run.complete

    np.savez(tmp_path / "wide.npz", obs=np.zeros((5, 7)), actions=np.zeros((5, 1)), rewards=np.zeros(5))
    exp.write_text(DANN.format(target='file = "wide.npz"'))
    res = cli("train", str(exp), "--out", str(tmp_path / "bad"), cwd=tmp_path)
    assert res.returncode == 2 and "wide.npz" in res.stderr and "expected (4,)" in res.stderr
    assert not (tmp_path / "bad").exists()

    exp.write_text(DANN.replace("[target]\n{target}\n", ""))
    res = cli("train", str(exp), "--out", str(tmp_path / "bad"), cwd=tmp_path)
    assert res.returncode == 2 and "needs a [target]" in res.stderr


def test_same_seed_same_training(tmp_path):
    import torch

    exp = write_experiment(tmp_path, timesteps=128, checkpoint=0)
    a = rs.train(exp, out=tmp_path / "a", evaluate=False).load_model(device="cpu")
    b = rs.train(exp, out=tmp_path / "b", evaluate=False).load_model(device="cpu")
    for (name, pa), pb in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_subproc_workers_sample_independently_and_episodes_are_traced(tmp_path):
    import csv

    exp = write_experiment(tmp_path, checkpoint=0)
    exp.write_text(exp.read_text().replace("n_envs = 2", 'n_envs = 2\nvec_env = "subproc"'))
    run = rs.train(exp, out=tmp_path / "run", evaluate=False)
    rows = list(csv.DictReader(open(run.path / "logs" / "episodes.csv")))
    assert {r["env"] for r in rows} == {"0", "1"}
    masses = {r["env"]: float(r["pole_mass"]) for r in rows}
    assert masses["0"] != masses["1"]  # each worker draws its own physics
    for r in rows:
        assert 0.7 <= float(r["pole_mass"]) <= 1.3 and float(r["obs_noise"]) == 0.0
        assert int(r["length"]) > 0


def test_dann_resume_continues_lambda_schedule(tmp_path):
    import csv

    exp = tmp_path / "dann.toml"
    exp.write_text(
        DANN.format(target='set = "sensor_shift"\nepisodes = 1\nrefresh_every = 0').replace(
            "n_envs = 2", "n_envs = 2\ncheckpoint_every = 128"
        )
    )
    out = tmp_path / "run"
    rs.train(exp, out=out, timesteps=256, evaluate=False)
    ckpt = Run.open(out).checkpoints()[0]
    for later in Run.open(out).checkpoints()[1:]:
        for f in later.iterdir():
            f.unlink()
        later.rmdir()
    (out / "model.zip").unlink()
    step0 = int(ckpt.name.split("_")[1])
    rs.train(exp, out=out, timesteps=512, resume=True, evaluate=False)
    rows = [r for r in csv.DictReader(open(out / "logs" / "progress.csv")) if r.get("dann/progress")]
    progress = [float(r["dann/progress"]) for r in rows]
    # The schedule's horizon is the first run's budget (256 steps): after resuming from the
    # checkpoint, progress starts where the checkpoint left it, not at zero.
    assert progress[-1] == 1.0
    assert min(progress[-2:]) >= step0 / 256 - 1e-9


def test_bad_hyperparameter_value_is_one_line_and_leaves_no_run(tmp_path):
    exp = write_experiment(tmp_path, checkpoint=0)
    exp.write_text(exp.read_text().replace("n_steps = 64", "n_steps = 0"))
    res = cli("train", str(exp), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "hyperparameters.n_steps: expected an integer >= 1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()

    # Values only SB3 itself can judge (here: a policy name) fail while the model is built,
    # still before a run directory exists.
    agent = tmp_path / "odd_agent.toml"
    agent.write_text('[agent]\nalgorithm = "ppo"\npolicy = "NoSuchPolicy"\n')
    write_experiment(tmp_path, agent=str(agent), checkpoint=0)
    res = cli("train", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "odd_agent.toml: cannot build ppo" in res.stderr and "NoSuchPolicy" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
