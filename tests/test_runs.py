"""Run directories: the one-writer lock, resume selection and checks, file modes.

These need no training: the run directories are written by hand, with a real experiment's
resolved config where the config matters.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import rlsim2real as rs
from rlsim2real.io import write_json
from rlsim2real.runs import RunLock, check_new_run_dir, check_resumable, config_difference, find_resumable

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[experiment]
name = "tiny"
env = "inverted_pendulum"
agent = "recurrent_ppo"
timesteps = 256
seed = 3
n_envs = 2
checkpoint_every = 128

[hyperparameters]
n_steps = 64
batch_size = 64
n_epochs = 1
"""


def fake_run(folder: Path, config: dict, status: str = "running", steps: int = 128, model: bool = False) -> Path:
    """A run directory as train leaves it, without the training."""
    folder.mkdir(parents=True)
    write_json(folder / "config.json", config)
    write_json(folder / "run.json", {"status": status, "timesteps": steps})
    ckpt = folder / "checkpoints" / f"step_{steps:09d}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.zip").write_bytes(b"PK")
    if model:
        (folder / "model.zip").write_bytes(b"PK")
    return folder


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("exp")
    (folder / "tiny.toml").write_text(TINY)
    return json.loads(json.dumps(rs.load_experiment_spec(folder / "tiny.toml").to_dict()))


def hold_in_subprocess(run_dir: Path, purpose: str = "train") -> subprocess.Popen:
    """Another process holding the run's lock until it is killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from rlsim2real.runs import RunLock
        lock = RunLock({str(run_dir)!r}, {purpose!r}).acquire()
        print("held", flush=True)
        time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ------------------------------------------------------------------------------ lock
def test_second_holder_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    proc = hold_in_subprocess(run_dir)
    try:
        with pytest.raises(rs.SpecError) as err:
            RunLock(run_dir, "evaluate").acquire()
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "train since" in msg and len(msg.splitlines()) == 1
        assert RunLock.holder(run_dir)["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()
    # kill -9 left its lock behind: same host, process gone, so it is stale.
    assert (run_dir / ".lock").exists() and RunLock.holder(run_dir) is None
    with RunLock(run_dir, "evaluate") as lock:
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
        assert lock.held
    assert not (run_dir / ".lock").exists()


def test_lock_is_reentrant_in_its_thread_refused_in_another_and_released_twice_safely(tmp_path):
    run_dir = tmp_path / "run"
    outer = RunLock(run_dir, "train").acquire()
    with RunLock(run_dir, "evaluate"):  # train evaluating at its end
        pass
    assert (run_dir / ".lock").exists(), "the inner release must not drop the outer lock"
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_try_lock(run_dir)))
    thread.start()
    thread.join()
    assert "another thread" in errors[0]
    outer.release()
    outer.release()
    assert not (run_dir / ".lock").exists()


def _try_lock(run_dir):
    try:
        RunLock(run_dir, "train").acquire()
    except rs.SpecError as exc:
        return str(exc)
    return ""


def test_lock_creates_the_directory_and_removes_it_if_nothing_was_written(tmp_path):
    with RunLock(tmp_path / "new", "train"):
        assert (tmp_path / "new" / ".lock").is_file()
        assert oct((tmp_path / "new" / ".lock").stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    assert not (tmp_path / "new").exists()
    with RunLock(tmp_path / "kept", "train"):
        (tmp_path / "kept" / "config.json").write_text("{}")
    assert (tmp_path / "kept" / "config.json").is_file() and not (tmp_path / "kept" / ".lock").exists()


def test_lock_from_another_host_or_unreadable_is_never_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "purpose": "train", "started": "x"}))
    with pytest.raises(rs.SpecError, match="pid 999999 on elsewhere, train since x"):
        RunLock(run_dir, "train").acquire()
    (run_dir / ".lock").write_text("{half")
    with pytest.raises(rs.SpecError, match="unreadable"):
        RunLock(run_dir, "train").acquire()


def test_lock_left_by_an_earlier_process_with_our_pid_is_stale(tmp_path):
    # Containers reuse small pids: our own pid in a lock we do not hold is a leftover.
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": "old"}))
    with RunLock(run_dir, "train"):
        pass


def test_lock_on_a_file_or_unwritable_place_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(rs.SpecError, match="is a file"):
        RunLock(tmp_path / "file", "train").acquire()
    with pytest.raises(rs.SpecError, match="parent of it is a file"):
        RunLock(tmp_path / "file" / "run", "train").acquire()
    with pytest.raises(rs.SpecError, match="is a file"):
        check_new_run_dir(tmp_path / "file")


# ---------------------------------------------------------------------------- resume
def test_find_resumable_picks_the_newest_interrupted_run(tmp_path, config):
    runs = tmp_path / "runs"
    fake_run(runs / "tiny", config, status="complete", steps=256, model=True)
    second = fake_run(runs / "tiny_2", config, status="running", steps=128)
    other = dict(config, name="tiny_3")  # another experiment, named like a numbered run
    fake_run(runs / "tiny_3", other, status="running")
    assert find_resumable(runs, "tiny") == second

    os.utime(second / "config.json", (1, 1))  # older than a newer interrupted run
    third = fake_run(runs / "tiny_4", config, status="interrupted", steps=128)
    assert find_resumable(runs, "tiny") == third


def test_find_resumable_lists_what_exists_when_none_is_interrupted(tmp_path, config):
    runs = tmp_path / "runs"
    with pytest.raises(rs.SpecError, match="no run of 'tiny' to resume"):
        find_resumable(runs, "tiny")
    fake_run(runs / "tiny", config, status="complete", steps=256, model=True)
    held = fake_run(runs / "tiny_2", config, status="running")
    proc = hold_in_subprocess(held)
    try:
        with pytest.raises(rs.SpecError) as err:
            find_resumable(runs, "tiny")
    finally:
        proc.kill()
        proc.wait()
    msg = str(err.value)
    assert "tiny (complete)" in msg and f"tiny_2 (in use (pid {proc.pid}, train))" in msg
    assert len(msg.splitlines()) == 1
    assert find_resumable(runs, "tiny") == held  # its holder is gone: interrupted


def test_check_resumable_refuses_a_complete_run_and_leaves_it_untouched(tmp_path, config):
    run = fake_run(tmp_path / "run", config, status="complete", steps=256, model=True)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(rs.SpecError, match="the run is complete \\(256 steps\\)"):
        check_resumable(run, config)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_check_resumable_allows_a_budget_change_only(tmp_path, config):
    run = fake_run(tmp_path / "run", config)
    assert check_resumable(run, dict(config, timesteps=10_000)).path == run

    with pytest.raises(rs.SpecError, match="differs from the run's config.json at seed: was 3, now 4"):
        check_resumable(run, dict(config, seed=4))
    agent = dict(config["agent"], hyperparameters=dict(config["agent"]["hyperparameters"], n_steps=128))
    with pytest.raises(rs.SpecError, match="at agent.hyperparameters.n_steps: was 64, now 128"):
        check_resumable(run, dict(config, agent=agent))
    params = [dict(p, range=[0.5, 1.5]) if p["name"] == "pole_mass" else p for p in config["env"]["params"]]
    with pytest.raises(rs.SpecError, match=r"at env.params.pole_mass.range: was \[0.7, 1.3\], now \[0.5, 1.5\]"):
        check_resumable(run, dict(config, env=dict(config["env"], params=params)))
    ppo = dict(config["agent"], algorithm="ppo")
    with pytest.raises(rs.SpecError, match='at agent.algorithm: was "recurrent_ppo", now "ppo"'):
        check_resumable(run, dict(config, agent=ppo))


def test_config_difference_ignores_same_file_paths_and_settings_added_later(tmp_path, config):
    exp = Path(config["path"])
    relative = os.path.relpath(exp)
    new = dict(config, path=relative)
    assert config_difference(config, new) is None
    old = {k: v for k, v in config.items() if k != "target"}  # written before 'target' existed
    assert config_difference(old, dict(config, target=None)) is None
    assert config_difference(old, dict(config, target={"set": "nominal"}))[0] == "target"
    other = tmp_path / "other.toml"
    other.write_text(TINY)
    assert config_difference(config, dict(config, path=str(other)))[0] == "path"
    assert config_difference({"n": 1}, {"n": 1.0}) is None
    assert config_difference({"flag": True}, {"flag": 1}) == ("flag", True, 1)


def test_check_resumable_refuses_a_held_run_and_one_without_checkpoint(tmp_path, config):
    run = fake_run(tmp_path / "run", config)
    proc = hold_in_subprocess(run)
    try:
        with pytest.raises(rs.SpecError, match=f"cannot resume: .*in use by another process \\(pid {proc.pid}"):
            check_resumable(run, config)
        # ... but not for the process that holds the lock itself.
    finally:
        proc.kill()
        proc.wait()
    with RunLock(run, "train"):
        assert check_resumable(run, config).path == run
    for f in (run / "checkpoints").rglob("model.zip"):
        f.unlink()
    with pytest.raises(rs.SpecError, match="no checkpoint yet"):
        check_resumable(run, config)
    with pytest.raises(rs.SpecError, match="not a run directory"):
        check_resumable(tmp_path / "nowhere", config)


# ------------------------------------------------------------------------ file modes
def _umask() -> int:
    from rlsim2real.io import current_umask

    return current_umask()


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    from rlsim2real.io import write_text

    old = os.umask(0o022)
    try:
        assert _umask() == 0o022
        assert write_text(tmp_path / "a.txt", "x").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert write_text(tmp_path / "b.txt", "x").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
