"""Runs you can trust: interrupts keep work, kill -9 and resume keep history and the
parameter stream, instability is counted and reported, MuJoCo's log stays in the run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = """
[experiment]
name = "safety"
env = "{env}"
agent = "recurrent_ppo"
timesteps = {timesteps}
seed = 2
n_envs = 2
vec_env = "{vec_env}"
checkpoint_every = {checkpoint}
max_episode_steps = 50

[hyperparameters]
n_steps = 64
batch_size = 64
n_epochs = 1

[evaluation]
enabled = false
"""


def write(tmp_path: Path, env="inverted_pendulum", timesteps=100_000, checkpoint=0, vec_env="dummy") -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT.format(env=env, timesteps=timesteps, checkpoint=checkpoint, vec_env=vec_env))
    return path


def start(exp: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlsim2real.cli", "train", str(exp), "--out", str(out), *extra],
                            cwd=exp.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise AssertionError("timed out")
        time.sleep(0.2)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sigint_saves_a_checkpoint_at_the_interrupt_step_and_resume_continues_from_it(tmp_path):
    exp, out = write(tmp_path, vec_env="subproc"), tmp_path / "run"
    proc = start(exp, out)
    wait_for(lambda: (out / "logs" / "progress.csv").is_file() and len(rows(out / "logs" / "progress.csv")) >= 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGINT"
    step = status["timesteps"]
    assert status["checkpoint"] == f"checkpoints/step_{step:09d}" and (out / status["checkpoint"] / "model.zip").is_file()
    assert "resume with: rlsim2real train" in err and "--resume" in err
    logged = rows(out / "logs" / "progress.csv")
    resumed = start(exp, out, "--resume", "--timesteps", str(step + 1000))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    after = json.loads((out / "run.json").read_text())
    assert after["status"] == "complete" and after["timesteps"] >= step + 1000
    progress = rows(out / "logs" / "progress.csv")
    steps = [int(float(r["time/total_timesteps"])) for r in progress]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # appended, no duplicates
    assert progress[: len(logged)] == logged  # the interrupted part of the history is kept
    assert after["episodes"] == len(rows(out / "logs" / "episodes.csv"))


def test_kill_9_then_resume_keeps_history_and_does_not_replay_the_parameter_stream(tmp_path):
    exp, out = write(tmp_path, checkpoint=1024), tmp_path / "run"
    proc = start(exp, out)
    wait_for(lambda: any((out / "checkpoints").glob("step_*/model.zip")) if (out / "checkpoints").is_dir() else False)
    wait_for(lambda: len(rows(out / "logs" / "episodes.csv")) > 80)
    proc.kill()  # SIGKILL: no handler runs, the lock is left behind
    proc.communicate(timeout=30)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    checkpoint = max(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*") if (p / "model.zip").is_file())
    first = rows(out / "logs" / "episodes.csv")
    resumed = start(exp, out, "--resume", "--timesteps", str(checkpoint + 2048))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err  # the stale lock of the killed process is taken over
    episodes = rows(out / "logs" / "episodes.csv")
    steps = [int(r["timesteps"]) for r in episodes]
    assert steps == sorted(steps)  # what the killed run logged after its checkpoint is not duplicated
    kept = [r for r in first if int(r["timesteps"]) <= checkpoint]
    assert episodes[: len(kept)] == kept
    # The samplers continue: the episodes after the resume do not replay the run's first draws.
    later = {r["pole_mass"] for r in episodes[len(kept):]}
    early = {r["pole_mass"] for r in first[:40]}
    assert later and not (later & early)


def test_blown_up_physics_is_counted_reported_and_logged_in_the_run(tmp_path):
    env = tmp_path / "unstable.toml"
    env.write_text((ROOT / "envs" / "hopper.toml").read_text().replace(
        'target = "dof_damping[*]"\nlimits = [0.1, 10.0]\nrange = [0.5, 2.0]', 'target = "dof_damping[*]"\nrange = [1e6, 1e6]'))
    exp = write(tmp_path, env=str(env), timesteps=256)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "train", str(exp), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    status = json.loads((out / "run.json").read_text())
    assert status["unstable_fraction"] > 0.9 and status["unstable_episodes"] == status["episodes"] > 10
    assert status["mujoco_warnings"] > 0
    assert "WARNING" in proc.stderr and "unstable physics" in proc.stderr
    assert proc.stderr.count("MuJoCo warning") == 0  # rate-limited into the run's log, not the terminal
    log = (out / "logs" / "mujoco.log").read_text().splitlines()
    assert 1 <= len(log) <= 40 and "QACC" in log[0]
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
