"""A catalogue of bad input: each gives exit 2, exactly one line on stderr naming the place,
and loses nothing (every file of the run is byte-for-byte what it was).

One tiny run is trained per module; each case breaks a copy of it. Cases run through
``rlsim2real.cli.main`` in this process, stderr captured.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import rlsim2real as rs
from rlsim2real.cli import main

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[experiment]
name = "tiny"
env = "{env}"
agent = "recurrent_ppo"
timesteps = 256
seed = 3
n_envs = 2
checkpoint_every = 128

[hyperparameters]
n_steps = {n_steps}
batch_size = {batch_size}
n_epochs = 1

[evaluation]
episodes = 1
sets = ["nominal", "heavy_pole"]
"""


def experiment(folder: Path, env: str = "inverted_pendulum", n_steps: int = 64, batch_size: int = 64, extra: str = "") -> Path:
    path = folder / "tiny.toml"
    path.write_text(TINY.format(env=env, n_steps=n_steps, batch_size=batch_size) + extra)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished run with its transfer report: the original every case copies."""
    folder = tmp_path_factory.mktemp("trained")
    run = rs.train(experiment(folder), out=folder / "run", evaluate=False)
    rs.evaluate_transfer(run, episodes=1, sets=["nominal"], progress=False)
    return run.path


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` refuse new files, also for root (``chattr +i``), or skip."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot make a directory read-only for root here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


# ---------------------------------------------------------------------- the catalogue
@dataclass
class Case:
    """One bad input: ``setup(run, tmp)`` breaks things and returns the argv."""

    name: str
    setup: Callable[[Path, Path], list[str]]
    expect: str  # a piece of the one line on stderr
    needs: Callable[[], bool] = lambda: True
    context: Callable[[Path], contextlib.AbstractContextManager] = lambda run: contextlib.nullcontext()


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _hold(run: Path) -> None:
    # pid 1 is alive on every Unix: a holder that is certainly not stale.
    import socket

    lock = {"pid": 1, "host": socket.gethostname(), "purpose": "train", "started": "2024-01-01 00:00:00"}
    (run / ".lock").write_text(json.dumps(lock))


def _evaluate(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda run, tmp: ["evaluate", str(run), "--sets", "nominal", *extra]


def _then(action: Callable[[Path], None], *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(run: Path, tmp: Path) -> list[str]:
        action(run)
        return ["evaluate", str(run), "--sets", "nominal", "--episodes", "1", *extra]

    return setup


def _train(n_steps: int = 64, batch_size: int = 64, env: str = "inverted_pendulum", extra: str = ""):
    def setup(run: Path, tmp: Path) -> list[str]:
        return ["train", str(experiment(tmp, env, n_steps, batch_size, extra)), "--out", str(tmp / "new"), "--no-eval"]

    return setup


def _delay_env(value: str) -> Callable[[Path, Path], list[str]]:
    def setup(run: Path, tmp: Path) -> list[str]:
        text = (ROOT / "envs" / "inverted_pendulum.toml").read_text()
        assert "action_delay = 2\n" in text
        (tmp / "pendulum.toml").write_text(text.replace("action_delay = 2\n", f"action_delay = {value}\n"))
        return _train(env=str(tmp / "pendulum.toml"))(run, tmp)

    return setup


def _target_file(make: Callable[[Path], None]) -> Callable[[Path, Path], list[str]]:
    def setup(run: Path, tmp: Path) -> list[str]:
        make(tmp / "real.npz")
        exp = experiment(tmp, extra='\n[target]\nfile = "real.npz"\n')
        exp.write_text(exp.read_text().replace('agent = "recurrent_ppo"', 'agent = "recurrent_ppo_dann"'))
        return ["train", str(exp), "--out", str(tmp / "new"), "--no-eval"]

    return setup


CASES = [
    # evaluate: options
    Case("episodes zero", _evaluate("--episodes", "0"), "episodes (--episodes): expected an integer >= 1, got 0"),
    Case("episodes negative", _evaluate("--episodes", "-3"), "expected an integer >= 1, got -3"),
    Case("episodes not a number", _evaluate("--episodes", "abc"), "argument --episodes: invalid int value: 'abc'"),
    Case("cuda without a GPU", _evaluate("--device", "cuda"), "--device 'cuda': no CUDA device", needs=no_cuda),
    Case("unknown device", _evaluate("--device", "tpu"), "--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    Case("unknown set", _evaluate("--sets", "moon"), "unknown real set 'moon'"),
    Case("checkpoint and step", _evaluate("--step", "128", "--checkpoint", "x"), "not allowed with argument"),
    Case("no such step", _evaluate("--step", "999"), "--step 999: no checkpoint at that step; steps: 128, 256"),
    Case("no such checkpoint", _evaluate("--checkpoint", "nowhere"), "nowhere: --checkpoint: not a checkpoint folder"),
    # evaluate: the run's files
    Case("not a run", lambda run, tmp: ["evaluate", str(tmp / "nowhere")], "not a run directory (no config.json)"),
    Case("corrupt config", _then(lambda r: _write(r / "config.json", b"{oops")), "config.json: corrupt config"),
    Case("model.zip missing: no fallback", _then(lambda r: (r / "model.zip").unlink()),
         "model.zip: no such file (run complete at step 256); choose a checkpoint with --checkpoint PATH or --step N"),
    Case("model.zip empty", _then(lambda r: _write(r / "model.zip", b"")), "model.zip: empty model file"),
    Case("model.zip truncated", _then(lambda r: _truncate(r / "model.zip")), "model.zip: not a readable model"),
    Case("model.zip garbage", _then(lambda r: _write(r / "model.zip", b"\0" * 999)), "model.zip: not a readable model"),
    Case("checkpoint model.zip truncated", _then(lambda r: _truncate(r / "checkpoints/step_000000128/model.zip"), "--step", "128"),
         "step_000000128/model.zip: not a readable"),
    Case("vecnormalize.pkl empty", _then(lambda r: _write(r / "vecnormalize.pkl", b"")), "vecnormalize.pkl: empty"),
    Case("vecnormalize.pkl truncated", _then(lambda r: _truncate(r / "vecnormalize.pkl")),
         "vecnormalize.pkl: not a readable VecNormalize file"),
    Case("vecnormalize.pkl not a pickle", _then(lambda r: _write(r / "vecnormalize.pkl", b"hello")),
         "vecnormalize.pkl: not a readable VecNormalize file"),
    Case("vecnormalize.pkl missing", _then(lambda r: (r / "vecnormalize.pkl").unlink()),
         "vecnormalize.pkl: no such file; the run was trained with normalize = true"),
    # evaluate: somebody else's run, or a place it cannot write
    Case("run held by a train", _then(_hold), "in use by another process (pid 1 on"),
    Case("read-only run", _evaluate("--episodes", "1"), "cannot write", context=read_only),
    # train: spec values that cannot work
    Case("batch larger than the rollout", _train(batch_size=512),
         "hyperparameters.batch_size: 512 is larger than one rollout, n_steps x n_envs = 64 x 2 = 128"),
    Case("batch of one", _train(batch_size=1), "hyperparameters.batch_size: expected an integer >= 2, got 1"),
    Case("last minibatch of one", _train(batch_size=127), "127 leaves a last minibatch of 1 transition"),
    Case("action delay 2.5", _delay_env("2.5"),
         "real_sets.action_latency.action_delay: expected a whole number of control steps for action.delay, got 2.5"),
    # train: a corrupt target-domain file
    Case("target .npy under a .npz name", _target_file(lambda p: np.save(open(p, "wb"), np.zeros((5, 4)))),
         "real.npz: holds a single (5, 4) array (.npy)"),
    Case("target params not JSON", _target_file(lambda p: np.savez(
        open(p, "wb"), obs=np.zeros((5, 4)), actions=np.zeros((5, 1)), rewards=np.zeros(5), params=np.array("{not json"))),
         "real.npz: 'params' is not valid JSON"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, run_copy, tmp_path, capsys):
    if not case.needs():
        pytest.skip("not applicable on this machine")
    argv = case.setup(run_copy, tmp_path)
    before = snapshot(run_copy) if run_copy.is_dir() else {}
    capsys.readouterr()
    with case.context(run_copy):
        code = _main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert case.expect in lines[0], lines[0]
    assert snapshot(run_copy) == before, "the run's files changed"
    assert not (tmp_path / "new").exists(), "a failed train left a run directory"


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code)


# ------------------------------------------- train refuses what would lose finished work


@pytest.mark.parametrize(
    "name",
    ["resume a complete run", "out names a file", "out held by another process"],
)
def test_train_refuses_what_would_lose_finished_work(name, run_copy, tmp_path, capsys):
    exp = experiment(tmp_path)
    if name == "resume a complete run":
        argv, expect = ["train", str(exp), "--out", str(run_copy), "--resume"], "the run is complete"
    elif name == "out names a file":
        (tmp_path / "file").write_text("x")
        argv, expect = ["train", str(exp), "--out", str(tmp_path / "file")], "is a file"
    else:
        _hold(run_copy)
        for f in ("model.zip", "run.json"):
            (run_copy / f).unlink()
        argv, expect = ["train", str(exp), "--out", str(run_copy), "--resume"], "in use by another process"
    before = snapshot(run_copy)
    capsys.readouterr()
    code = _main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, err
    assert snapshot(run_copy) == before


# --------------------------------------------------------- what evaluate does instead
def test_a_checkpoint_report_goes_to_its_folder_and_the_run_report_is_kept(run_copy, capsys):
    before = snapshot(run_copy)
    assert main(["evaluate", str(run_copy), "--episodes", "1", "--sets", "nominal", "--step", "128"]) == 0
    out = capsys.readouterr()
    ckpt = run_copy / "checkpoints" / "step_000000128"
    assert str(ckpt / "transfer.json") in out.out
    assert json.loads((ckpt / "transfer.json").read_text())["timesteps"] == 128
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if not k.startswith("checkpoints/step_000000128/transfer.")} == before
    # The same checkpoint by path, relative to the run, and the model.zip inside it.
    assert main(["evaluate", str(run_copy), "--episodes", "1", "--sets", "nominal",
                 "--checkpoint", "checkpoints/step_000000128/model.zip", "--no-progress"]) == 0
    assert not (run_copy / ".lock").exists()


def test_evaluate_prints_one_line_without_a_terminal_and_a_bar_when_asked(run_copy, capsys):
    rs.evaluate_transfer(run_copy, episodes=2, sets=["nominal", "heavy_pole"], save=False)
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"evaluate {run_copy}: 4 episodes on cpu"]
    rs.evaluate_transfer(run_copy, episodes=2, sets=["nominal", "heavy_pole"], save=False, progress=True)
    err = capsys.readouterr().err
    assert "100%" in err and "4/4 episodes" in err
    rs.evaluate_transfer(run_copy, episodes=1, sets=["nominal"], save=False, progress=False)
    assert capsys.readouterr().err == ""


def test_run_files_are_0644(trained):
    umask = 0o022
    current = os.umask(umask)
    os.umask(current)
    if current != umask:
        pytest.skip(f"umask is {current:o}, not 022")
    for name in ("config.json", "run.json", "model.zip", "vecnormalize.pkl", "strategy.json", "transfer.json",
                 "transfer.md", "checkpoints/step_000000128/model.zip"):
        assert (trained / name).stat().st_mode & 0o777 == 0o644, name


# ------------------------------------------------------------- trajectory files
def _npz(path: Path, **arrays) -> None:
    base = {"obs": np.zeros((5, 4)), "actions": np.zeros((5, 1)), "rewards": np.zeros(5)}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})


def _good_then(path: Path, damage: Callable[[bytes], bytes]) -> None:
    _npz(path, lengths=np.array([2, 3]))
    path.write_bytes(damage(path.read_bytes()))


TRAJECTORY_CASES = [
    ("npy under npz name", lambda p: np.save(open(p, "wb"), np.zeros((5, 4))), "holds a single (5, 4) array (.npy)"),
    ("params not JSON", lambda p: _npz(p, params=np.array("{nope")), "'params' is not valid JSON"),
    ("params not a list of tables", lambda p: _npz(p, params=np.array('{"a": 1}')), "'params' must be a JSON list"),
    ("params an array", lambda p: _npz(p, params=np.zeros(3)), "'params' is a float64 array of shape (3,)"),
    ("obs 1-D", lambda p: _npz(p, obs=np.zeros(5)), "'obs' has shape (5,); expected (T, *obs_shape)"),
    ("rewards 2-D wide", lambda p: _npz(p, rewards=np.zeros((5, 3))), "'rewards' has shape (5, 3)"),
    ("actions 3-D", lambda p: _npz(p, actions=np.zeros((5, 1, 1))), "'actions' has shape (5, 1, 1)"),
    ("qpos 1-D", lambda p: _npz(p, qpos=np.zeros(5)), "'qpos' has shape (5,); expected (T, nq)"),
    ("lengths 2-D", lambda p: _npz(p, lengths=np.ones((5, 1))), "'lengths' has shape (5, 1)"),
    ("lengths fractional", lambda p: _npz(p, lengths=np.array([2.5, 2.5])), "'lengths' holds non-integer values"),
    ("obs strings", lambda p: _npz(p, obs=np.array([["a"] * 4] * 5)), "'obs' holds <U1 values; expected numbers"),
    ("empty file", lambda p: p.write_bytes(b""), "empty file; expected a .npz trajectory file"),
    ("truncated zip", lambda p: _good_then(p, lambda b: b[: len(b) // 2]), "not a readable .npz trajectory file"),
    ("corrupt member", lambda p: _good_then(p, lambda b: b[:60] + b"\xff" * 40 + b[100:]), "not a readable .npz"),
    ("not a zip", lambda p: p.write_bytes(b"hello world"), "not a readable .npz trajectory file"),
]


@pytest.mark.parametrize("make, expect", [c[1:] for c in TRAJECTORY_CASES], ids=[c[0] for c in TRAJECTORY_CASES])
def test_corrupt_trajectory_files_are_one_line_naming_the_file(tmp_path, make, expect):
    path = tmp_path / "real.npz"
    make(path)
    with pytest.raises(rs.SpecError) as err:
        rs.load_trajectories(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and expect in msg and len(msg.splitlines()) == 1, msg


# ------------------------------------------------------------------ spec values
def test_a_whole_delay_a_range_of_delays_and_a_fixed_fractional_delay(tmp_path):
    text = (ROOT / "envs" / "inverted_pendulum.toml").read_text()
    spec = tmp_path / "pendulum.toml"
    spec.write_text(text.replace("action_delay = 2\n", "action_delay = 2.0\n"))
    assert rs.load_env_spec(spec).real_sets["action_latency"]["action_delay"] == 2.0
    ranged = text.replace('target = "action.delay"\n', 'target = "action.delay"\nrange = [0, 2.5]\n')
    assert ranged != text
    spec.write_text(ranged)
    rs.load_env_spec(spec)  # sampled, then rounded to whole steps
    spec.write_text(ranged.replace("range = [0, 2.5]", "range = [1.5, 1.5]"))
    with pytest.raises(rs.SpecError, match=r"heldout_params.action_delay.range: expected a whole number .* got 1.5"):
        rs.load_env_spec(spec)


def test_batch_sizes_that_fit_the_rollout_load(tmp_path):
    for n_steps, batch in ((64, 128), (64, 64), (64, 32), (50, 2)):
        spec = rs.load_experiment_spec(experiment(tmp_path, n_steps=n_steps, batch_size=batch))
        assert spec.agent.hyperparameters["batch_size"] == batch
    exp = experiment(tmp_path, batch_size=1)
    exp.write_text(exp.read_text().replace("n_epochs = 1", "n_epochs = 1\nnormalize_advantage = false"))
    rs.load_experiment_spec(exp)  # no per-minibatch normalization: a batch of one is legal
    # The algorithm's own default batch (128 for recurrent PPO) counts too.
    (tmp_path / "bare.toml").write_text('[agent]\nalgorithm = "recurrent_ppo"\n')
    text = experiment(tmp_path, n_steps=32).read_text().replace("batch_size = 64\n", "")
    exp.write_text(text.replace('agent = "recurrent_ppo"', 'agent = "bare.toml"'))
    with pytest.raises(rs.SpecError, match="128 is larger than one rollout, n_steps x n_envs = 32 x 2 = 64"):
        rs.load_experiment_spec(exp)


# ----------------------------------------------------------------------- heat map
def test_heat_map_colour_scale_is_fixed_and_labelled(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlsim2real.evaluation import GridResult, color_scale, plot_grid

    grid = GridResult("pole_mass", "motor_strength", [0.5, 1.0], [1.0, 2.0], [[1000.0, 1000.0], [1000.0, 1000.0]],
                      [[1.0, 1.0], [1.0, 1.0]], 1, {"pole_mass": [0.7, 1.3]}, color_max=1000.0)
    assert color_scale(grid) == (0.0, 1000.0, True)
    assert color_scale(grid, color_max=500.0) == (0.0, 500.0, True)
    grid.color_max = None
    assert color_scale(grid)[2] is False  # no setting: the map says it scaled to itself

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_grid(grid, tmp_path / "a.png", color_max=1000.0)
    grid.mean_return = [[10.0, 20.0], [30.0, 40.0]]
    plot_grid(grid, tmp_path / "b.png", color_max=1000.0)
    for fig in figures:
        image = fig.axes[0].images[0]
        assert image.get_clim() == (0.0, 1000.0)
        assert fig.axes[1].get_ylabel() == "mean return"
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_spec_color_max_reaches_the_grid(tmp_path):
    spec = rs.load_env_spec("inverted_pendulum")
    assert spec.color_max == 1000.0
    assert rs.EnvSpec.from_dict(spec.to_dict()).color_max == 1000.0
    bad = tmp_path / "pendulum.toml"
    bad.write_text((ROOT / "envs" / "inverted_pendulum.toml").read_text().replace("color_max = 1000.0", "color_max = 0"))
    with pytest.raises(rs.SpecError, match="evaluation.color_max: expected a number > 0, got 0"):
        rs.load_env_spec(bad)
