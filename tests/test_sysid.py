"""System identification: replay, state recovery, the CMA-ES fit, ``rlsim2real sysid``, bad logs.

Logs are made the way a user would make them in sim-to-sim: ``collect_trajectories`` on
``make_real_env(spec, set)`` with a random policy.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

import rlsim2real as rs
from rlsim2real.cli import main
from rlsim2real.sysid import (
    BatchSimulator, CMAFitter, Gaussian, Objective, SysIdProblem, discrepancy, identify, state_map,
)


def make_log(tmp_path: Path, env: str, real_set: str, episodes: int = 2, seed: int = 0, state: bool = True,
             policy=None, name: str = "real.npz", max_steps: int | None = None) -> Path:
    trajs = rs.collect_trajectories(rs.make_real_env(env, real_set, seed=seed), policy, episodes, seed, max_steps=max_steps)
    if not state:
        trajs.qpos = trajs.qvel = None
    trajs.metadata = {"env": env, "set": real_set}
    return trajs.save(tmp_path / name)


def simulator(problem: SysIdProblem) -> BatchSimulator:
    return BatchSimulator(problem.model, problem.writer, problem.state_map, problem.frame_skip, nthread=2)


def replay_discrepancy(problem: SysIdProblem, values: np.ndarray) -> np.ndarray:
    w = problem.windows
    sim = simulator(problem).replay(values, w.qpos, w.qvel, w.actions)
    return discrepancy(w.target, sim, problem.scale)


@pytest.mark.parametrize("steps", [1, 5])
def test_replay_at_the_true_parameters_matches_and_error_grows(tmp_path, steps):
    path = make_log(tmp_path, "hopper", "in_range", episodes=2)
    problem = SysIdProblem.build("hopper", path, truth="in_range", steps=steps)
    truth = problem.truth
    torso = problem.space.index("torso_mass")
    candidates = np.tile(truth, (5, 1))
    candidates[:, torso] = truth[torso] * np.array([1.0, 1.02, 1.1, 1.3, 1.6])
    d = replay_discrepancy(problem, candidates).mean(axis=1)
    assert d[0] < 1e-9
    assert np.all(np.diff(d) > 0), d


@pytest.mark.parametrize("env, real_set", [
    ("inverted_pendulum", "in_range"), ("hopper", "in_range"), ("walker2d", "in_range"), ("half_cheetah", "in_range"),
])
def test_state_recovered_from_observations_reproduces_the_next_observations(tmp_path, env, real_set):
    episodes = 6 if env == "inverted_pendulum" else 2
    path = make_log(tmp_path, env, real_set, episodes=episodes, state=False, max_steps=200)
    log = rs.load_trajectories(path)
    assert log.qpos is None
    problem = SysIdProblem.build(env, path, truth=real_set)
    assert len(problem.windows.qpos) > 0
    w = problem.windows
    sim = simulator(problem).replay(problem.truth[None], w.qpos, w.qvel, w.actions)
    np.testing.assert_allclose(sim[0], w.target, atol=1e-9)


@pytest.mark.parametrize("env", ["inverted_pendulum", "hopper", "walker2d", "half_cheetah"])
def test_observation_function_matches_the_gymnasium_env_step_for_step(tmp_path, env):
    trajs = rs.collect_trajectories(rs.make_real_env(env, "nominal", seed=1), None, 2, 1, max_steps=100)
    smap = state_map(rs.make_base_env(rs.load_env_spec(env)))
    np.testing.assert_array_equal(smap.obs_from_state(trajs.qpos, trajs.qvel), trajs.obs)


def test_a_log_without_state_and_without_an_observation_map_is_refused_for_replay(tmp_path):
    path = make_log(tmp_path, "sliding_block", "nominal", episodes=1, state=False, max_steps=20)
    with pytest.raises(rs.SpecError, match=r"real\.npz: no 'qpos'/'qvel'.*state_from_obs"):
        SysIdProblem.build("sliding_block", path)
    # Logged states are not enough: the simulated observations must be computable too.
    logged = make_log(tmp_path, "sliding_block", "nominal", episodes=1, max_steps=20, name="with_state.npz")
    with pytest.raises(rs.SpecError, match="obs_from_state|observation"):
        SysIdProblem.build("sliding_block", logged)


def test_fit_recovers_a_heldout_sets_masses_on_inverted_pendulum(tmp_path):
    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=10)
    problem = SysIdProblem.build("inverted_pendulum", path, params=["cart_mass", "pole_mass"], truth="heavy_pole")
    result = identify(problem, budget=200, seed=0, nthread=2)
    assert np.all(result.relative_error < 0.01), result.table()
    # The held-out pole (2.0) lies outside the prior box the search started in.
    assert result.mean[1] > result.prior[1, 1]


def test_the_dropo_likelihood_fits_a_mean_and_a_std(tmp_path):
    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=5)
    problem = SysIdProblem.build("inverted_pendulum", path, params=["pole_mass"], truth="heavy_pole")
    result = identify(problem, objective="likelihood", budget=240, seed=0, samples=8, nthread=2)
    assert result.info["fit_std"] and result.relative_error[0] < 0.03, result.table()
    assert 0 < result.std[0] < 0.1


def test_fixed_seeds_give_the_same_fit_and_a_fitter_continues_from_its_state(tmp_path):
    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=4)
    problem = SysIdProblem.build("inverted_pendulum", path, params=["pole_mass"])
    a = identify(problem, budget=30, seed=3, nthread=2)
    b = identify(problem, budget=30, seed=3, nthread=1)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)

    def fitter() -> CMAFitter:
        score = Objective(simulator(problem), problem.windows, problem.space.from_normalized, problem.low,
                          problem.high, problem.scale, seed=1)
        return CMAFitter(score, problem.low, problem.high, seed=1)

    first = fitter()
    for _ in range(3):
        first.step()
    resumed = fitter()
    resumed.load_state_dict(first.state_dict())
    x, y = first.step(), resumed.step()
    assert (x.generation, x.evaluations, x.best_loss) == (y.generation, y.evaluations, y.best_loss)
    np.testing.assert_array_equal(x.best.mean, y.best.mean)


def test_closed_loop_reproduces_the_log_at_the_true_parameters(tmp_path):
    gains = np.array([1.0, 8.0, 0.5, 1.5])

    def policy(obs):
        return np.clip(np.asarray(obs) @ gains, -3.0, 3.0).reshape(*np.shape(obs)[:-1], 1)

    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=3, policy=policy, max_steps=60)
    problem = SysIdProblem.build("inverted_pendulum", path, params=["pole_mass"], mode="closed-loop",
                                 truth="heavy_pole", horizon=40)
    w = problem.windows
    sim = simulator(problem).closed_loop(np.array([[2.0], [1.0]]), w.qpos, w.qvel, w.obs0, policy, w.target.shape[1])
    d = discrepancy(w.target, sim, problem.scale, mask=w.mask)
    assert np.all(d[0] < 1e-9) and np.all(d[1] > 1e-3)
    result = identify(problem, budget=60, seed=0, nthread=2, policy=policy)
    assert result.relative_error[0] < 0.05, result.table()


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["sysid", *args])
    return code, out.getvalue(), err.getvalue()


def test_cli_writes_the_fit_the_table_and_the_plot(tmp_path):
    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=4)
    fit = tmp_path / "out" / "FIT.json"
    code, out, err = run_cli("--env", "inverted_pendulum", "--trajectories", str(path), "--params",
                             "pole_mass,motor_strength", "--budget", "12", "--out", str(fit), "--truth", "heavy_pole",
                             "--threads", "2")
    assert code == 0, err
    assert "sysid/generation   1" in out and "rel. error" in out and "pole_mass" in out
    data = json.loads(fit.read_text())
    assert set(data) == {"pole_mass", "motor_strength"}
    assert {"mean", "std", "truth", "relative_error", "prior"} <= set(data["pole_mass"])
    assert data["pole_mass"]["truth"] == 2.0
    assert fit.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    history = json.loads((tmp_path / "out" / "FIT.run.json").read_text())["history"]
    assert history[-1]["evaluations"] >= 12
    # Finished work is not overwritten by a later command.
    before = fit.read_bytes()
    code, _, err = run_cli("--env", "inverted_pendulum", "--trajectories", str(path), "--out", str(fit))
    assert code == 2 and "exists" in err and fit.read_bytes() == before


def _save(path: Path, **arrays) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _bad_logs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (extra CLI args, what the message must say); every log lies under tmp_path."""
    good = rs.load_trajectories(make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=3, name="good.npz"))
    base = {"obs": good.obs, "actions": good.actions, "rewards": good.rewards, "lengths": good.lengths,
            "qpos": good.qpos, "qvel": good.qvel}
    nan = dict(base, obs=good.obs.copy())
    nan["obs"][2, 1] = np.nan
    inf = dict(base, actions=good.actions.copy())
    inf["actions"][1, 0] = np.inf
    hopper = rs.load_trajectories(make_log(tmp_path, "hopper", "nominal", episodes=1, name="hopper.npz"))
    np.save(tmp_path / "array.npy", good.obs)
    (tmp_path / "array.npy").rename(tmp_path / "npy.npz")
    cases = {
        "no_actions": ("no_actions.npz", {k: v for k, v in base.items() if k != "actions"}, [], "missing arrays actions"),
        "nan": ("nan.npz", nan, [], "'obs' holds NaN or inf"),
        "inf": ("inf.npz", inf, [], "'actions' holds NaN or inf"),
        "obs_size": ("obs_size.npz", dict(base, obs=np.concatenate([good.obs, good.obs[:, :1]], axis=1)), [],
                     "'obs' has shape (5,) per step; the env observes (4,)"),
        "action_size": ("action_size.npz", dict(base, actions=np.repeat(good.actions, 2, axis=1)), [],
                        "'actions' has shape (2,) per step; the env takes (1,)"),
        "hopper_log": ("hopper.npz", None, [], "'obs' has shape (11,)"),
        "too_short": ("short.npz", base, ["--steps", "500"], "every episode is shorter than 501 steps"),
        "npy": ("npy.npz", None, [], "not a .npz archive"),
        "metadata": ("metadata.npz", dict(base, metadata=np.array("{env: hopper")), [], "'metadata' is not valid JSON"),
        "unknown_param": ("good.npz", None, ["--params", "pole_mass,tail_mass"], "--params: unknown parameter 'tail_mass'"),
        "sensor_param": ("good.npz", None, ["--params", "obs_noise"], "--params: 'obs_noise'"),
        "unknown_truth": ("good.npz", None, ["--truth", "martian"], "unknown real set 'martian'"),
        "closed_loop_without_run": ("good.npz", None, ["--mode", "closed-loop"], "--mode closed-loop: needs --run"),
    }
    out = {}
    for case, (name, arrays, extra, message) in cases.items():
        if arrays is not None:
            _save(tmp_path / name, **{k: v for k, v in arrays.items() if v is not None})
        out[case] = (name, extra, message)
    return out


BAD_CASES = ["no_actions", "nan", "inf", "obs_size", "action_size", "hopper_log", "too_short", "npy", "metadata",
             "unknown_param", "sensor_param", "unknown_truth", "closed_loop_without_run"]


@pytest.fixture(scope="module")
def bad_logs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, _bad_logs(tmp)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_naming_the_file_and_field_exit_2_nothing_written(bad_logs, case):
    tmp, cases = bad_logs
    name, extra, message = cases[case]
    fit = tmp / f"{case}.fit.json"
    code, out, err = run_cli("--env", "inverted_pendulum", "--trajectories", str(tmp / name), "--out", str(fit), *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    if not case.startswith(("unknown_", "sensor_", "closed_loop")):
        assert name in lines[0]
    assert "sysid/generation" not in out  # refused before any compute
    assert not fit.exists() and not fit.with_suffix(".png").exists()


def test_logs_with_dones_and_metadata_round_trip(tmp_path):
    log = rs.load_trajectories(make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=3))
    assert log.metadata == {"env": "inverted_pendulum", "set": "heavy_pole"}
    dones = np.zeros(len(log.obs), dtype=bool)
    dones[np.cumsum(log.lengths) - 1] = True
    path = _save(tmp_path / "dones.npz", obs=log.obs, actions=log.actions, rewards=log.rewards, dones=dones)
    again = rs.load_trajectories(path)
    np.testing.assert_array_equal(again.lengths, log.lengths)
    assert again.qpos is None  # the pendulum's state comes back from its observation
    assert len(SysIdProblem.build("inverted_pendulum", path).windows.qpos) > 0


TINY_RUN = """
[experiment]
name = "tiny"
env = "inverted_pendulum"
agent = "recurrent_ppo"
timesteps = 128
seed = 3
n_envs = 2

[hyperparameters]
n_steps = 64
batch_size = 64
n_epochs = 1
"""


@pytest.mark.slow  # trains a tiny run first (about a minute on a loaded 2-core machine)
def test_cli_closed_loop_runs_the_policy_of_a_run(tmp_path):
    from rlsim2real.evaluation import RunPolicy

    exp = tmp_path / "tiny.toml"
    exp.write_text(TINY_RUN)
    run = rs.train(exp, out=tmp_path / "run", evaluate=False)
    policy = RunPolicy.from_run(run.path)
    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=3, policy=policy, max_steps=50)
    problem = SysIdProblem.build("inverted_pendulum", path, params=["pole_mass"], mode="closed-loop", truth="heavy_pole")
    w = problem.windows
    # The recurrent policy, batched over candidates and episodes, reproduces the log at the truth.
    sim = simulator(problem).closed_loop(problem.truth[None], w.qpos, w.qvel, w.obs0, policy, w.target.shape[1])
    np.testing.assert_allclose(sim[0][w.mask], w.target[w.mask], atol=1e-6)
    fit = tmp_path / "FIT.json"
    code, out, err = run_cli("--env", "inverted_pendulum", "--trajectories", str(path), "--params", "pole_mass",
                             "--mode", "closed-loop", "--run", str(run.path), "--budget", "12", "--out", str(fit),
                             "--threads", "2")
    assert code == 0, err
    assert "closed-loop" in out and set(json.loads(fit.read_text())) == {"pole_mass"}


def _needs_toolbox() -> None:
    from rlsim2real.sysid.lm import toolbox

    try:
        toolbox()
    except rs.SpecError:
        pytest.skip("the extra mujoco[sysid] is not installed")


def test_levenberg_marquardt_recovers_inverted_pendulum_masses(tmp_path):
    _needs_toolbox()
    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=5)
    problem = SysIdProblem.build("inverted_pendulum", path, params=["cart_mass", "pole_mass"], truth="heavy_pole")
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    result = identify(problem, fitter="lm", budget=200, nthread=2)
    assert absl_logging.get_verbosity() == before  # the toolbox's warnings were silenced for the fit only
    assert np.all(result.relative_error < 0.01), result.table()
    assert result.info["fitter"] == "lm" and 0 < result.info["evaluations"] <= 200 + 4
    assert result.mean[1] > result.prior[1, 1]  # outside the prior box it started in


def test_cli_fitter_lm_writes_the_fit_and_refuses_what_it_cannot_fit(tmp_path):
    _needs_toolbox()
    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=4)
    fit = tmp_path / "FIT.json"
    code, out, err = run_cli("--env", "inverted_pendulum", "--trajectories", str(path), "--params", "pole_mass",
                             "--fitter", "lm", "--budget", "60", "--out", str(fit), "--truth", "heavy_pole",
                             "--threads", "2")
    assert code == 0, err
    assert "sysid/iteration   1" in out
    assert json.loads(fit.read_text())["pole_mass"]["relative_error"] < 0.01
    assert json.loads((tmp_path / "FIT.run.json").read_text())["fitter"] == "lm"
    code, out, err = run_cli("--env", "inverted_pendulum", "--trajectories", str(path), "--fitter", "lm",
                             "--objective", "likelihood", "--out", str(tmp_path / "other.json"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--fitter lm: fits a point" in err


def test_cli_fitter_lm_without_the_extra_is_one_line_exit_2(tmp_path, monkeypatch):
    import sys

    # As if mujoco[sysid]'s dependencies were not installed: its modules fail to import.
    for name in [m for m in sys.modules if m.startswith("mujoco.sysid._src")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tabulate", None)
    path = make_log(tmp_path, "inverted_pendulum", "heavy_pole", episodes=2)
    fit = tmp_path / "FIT.json"
    code, out, err = run_cli("--env", "inverted_pendulum", "--trajectories", str(path), "--fitter", "lm",
                             "--out", str(fit))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "--fitter lm" in lines[0] and "pip install 'mujoco[sysid]'" in lines[0] and "tabulate" in lines[0]
    assert not fit.exists() and "sysid/" not in out
