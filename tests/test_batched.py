"""The batched VecEnv: Gymnasium semantics step for step, the VecEnv contract, per-world
parameters, thread-count determinism, sampler state, and a tiny training run with resume."""

import json
import subprocess
import sys

import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import rlsim2real as rs
from rlsim2real.batched import BatchedVecEnv
from rlsim2real.batched.backend import check_backend_options
from rlsim2real.distributions import BoxDistribution, Fixed
from rlsim2real.params import ParamSpace
from rlsim2real.runs import Run
from rlsim2real.training import make_vec_env

SENSOR_RANGES = {"obs_bias": (-0.1, 0.1), "obs_noise": (0.0, 0.05), "obs_scale": (0.8, 1.2), "action_delay": (0.0, 3.0)}


def random_actions(space, n, steps, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, (steps, n, *space.shape)).astype(space.dtype)


def assert_same_run(ref, batched, actions, atol=None):
    """Step both VecEnvs with the same actions; everything SB3 and the strategy loop read agrees:
    exactly, or (``atol``, for float32 physics) observations and rewards to within ``atol``
    (an episode's return to within ``atol`` per step)."""
    if atol is None:
        same = np.testing.assert_array_equal
    else:
        def same(x, y, err_msg=""):
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=err_msg)
    same(ref.reset(), batched.reset())
    assert [i["dr_params"] for i in ref.reset_infos] == [i["dr_params"] for i in batched.reset_infos]
    episodes = 0
    for t, a in enumerate(actions):
        o1, r1, d1, i1 = ref.step(a)
        o2, r2, d2, i2 = batched.step(a)
        same(o1, o2, err_msg=f"observations differ at step {t}")
        same(r1, r2, err_msg=f"rewards differ at step {t}")
        np.testing.assert_array_equal(d1, d2, err_msg=f"dones differ at step {t}")
        assert r1.dtype == r2.dtype and o1.dtype == o2.dtype
        for w in np.flatnonzero(d1):
            a_, b_ = i1[w], i2[w]
            episodes += 1
            same(a_["terminal_observation"], b_["terminal_observation"])
            length = a_["episode"]["l"]
            assert length == b_["episode"]["l"]
            if atol is None:
                assert a_["episode"]["r"] == b_["episode"]["r"]
            else:  # a sum of rewards: their differences add up
                assert abs(a_["episode"]["r"] - b_["episode"]["r"]) <= atol * length
            assert a_["TimeLimit.truncated"] == b_["TimeLimit.truncated"]
            np.testing.assert_array_equal(a_["dr_episode"].vector, b_["dr_episode"].vector)
            assert a_["dr_episode"].tag == b_["dr_episode"].tag
    return episodes


@pytest.mark.parametrize("name", ["hopper", "inverted_pendulum", "walker2d", "half_cheetah"])
@pytest.mark.parametrize("real_set", ["nominal", "in_range"])
def test_matches_gymnasium_envs_step_for_step_at_fixed_parameters(name, real_set):
    spec = rs.load_env_spec(name)
    n, steps = 3, 120
    ref = DummyVecEnv([lambda i=i: Monitor(rs.make_real_env(spec, real_set, seed=10 + i)) for i in range(n)])
    batched = BatchedVecEnv(spec, n, seed=10)
    values = {} if real_set == "nominal" else spec.real_set(real_set)
    batched.env_method("pin", values)
    ref.seed(10), batched.seed(10)
    episodes = assert_same_run(ref, batched, random_actions(ref.action_space, n, steps))
    if name in ("hopper", "inverted_pendulum", "walker2d"):
        assert episodes > 0, "no episode ended: auto-reset not exercised"


@pytest.mark.parametrize("name", ["hopper", "inverted_pendulum"])
@pytest.mark.parametrize("real_set", ["sensor_shift", "action_latency"])
def test_matches_gymnasium_envs_on_sensor_and_latency_real_sets(name, real_set):
    spec = rs.load_env_spec(name)
    ref = DummyVecEnv([lambda i=i: Monitor(rs.make_real_env(spec, real_set, seed=20 + i)) for i in range(3)])
    batched = BatchedVecEnv(spec, 3, seed=20)
    batched.env_method("pin", spec.real_set(real_set))
    ref.seed(20), batched.seed(20)
    assert_same_run(ref, batched, random_actions(ref.action_space, 3, 100, seed=1))


@pytest.mark.parametrize("name", ["hopper", "inverted_pendulum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # float64: some worlds delayed, others not, none rounded
def test_matches_make_vec_env_with_dynamics_sensor_and_delay_terms_randomized(name, dtype):
    spec = rs.load_env_spec(name)
    space = ParamSpace(p.with_range(*SENSOR_RANGES[p.name]) if p.name in SENSOR_RANGES else p for p in spec.all_params)
    dist = BoxDistribution(space)
    ref = make_vec_env(spec, 4, 5, dist, "dummy")
    batched = make_vec_env(spec, 4, 5, dist, "batched", threads=2)
    assert isinstance(batched, BatchedVecEnv)
    assert assert_same_run(ref, batched, random_actions(ref.action_space, 4, 150).astype(dtype)) > 0
    assert ref.get_attr("param_names") == batched.get_attr("param_names")


def test_vec_env_contract_shapes_dtypes_auto_reset_and_seeding():
    check_vec_env_contract(BatchedVecEnv("hopper", 5, seed=0))


def check_vec_env_contract(venv):
    """What SB3 reads of a 5-world Hopper VecEnv: shapes, dtypes, infos, auto-reset, seeding."""
    venv.seed(1)
    obs = venv.reset()
    assert obs.shape == (5, *venv.observation_space.shape) and obs.dtype == venv.observation_space.dtype
    assert all(set(info) == {"dr_params"} for info in venv.reset_infos)
    assert venv.env_is_wrapped(Monitor) == [True] * 5
    seen_done = False
    for a in random_actions(venv.action_space, 5, 200):
        obs, rewards, dones, infos = venv.step(a)
        assert obs.shape == (5, 11) and obs.dtype == np.float64
        assert rewards.shape == (5,) and rewards.dtype == np.float32
        assert dones.shape == (5,) and dones.dtype == bool
        assert len(infos) == 5 and all(isinstance(i, dict) for i in infos)
        for w in np.flatnonzero(dones):
            seen_done = True
            info = infos[w]
            assert {"terminal_observation", "episode", "dr_episode", "TimeLimit.truncated"} <= set(info)
            assert info["terminal_observation"].shape == (11,)
            assert not np.array_equal(info["terminal_observation"], obs[w])  # obs[w] is the reset observation
            assert set(info["episode"]) == {"r", "l", "t"} and info["episode"]["l"] >= 1
            assert info["dr_episode"].vector.shape == (len(venv.get_attr("param_names")[0]),)
        for w in np.flatnonzero(~dones):
            assert "episode" not in infos[w]
    assert seen_done
    # Seeding: the same seed gives the same first observations; another seed does not.
    venv.seed(1)
    again = venv.reset()
    venv.seed(1)
    np.testing.assert_array_equal(again, venv.reset())
    venv.seed(2)
    assert not np.array_equal(again, venv.reset())
    venv.close()


def test_time_limit_truncates_with_the_flag_set():
    spec = rs.load_env_spec("inverted_pendulum")
    from dataclasses import replace

    venv = BatchedVecEnv(replace(spec, max_episode_steps=7), 2, seed=0)
    venv.env_method("pin", {})
    venv.reset()
    for t in range(7):
        _, _, dones, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert dones.all() and all(i["TimeLimit.truncated"] and i["episode"]["l"] == 7 for i in infos)


def test_per_world_parameters_land_in_their_world_only_and_never_compound():
    venv = BatchedVecEnv("hopper", 3, seed=0)
    model = venv.backend.model
    torso = model.body("torso").id
    nominal_mass, nominal_inertia = model.body_mass.copy(), model.body_inertia.copy()
    nominal_subtree = model.body_subtreemass.copy()
    venv.env_method("pin", {"torso_mass": 1.6, "friction": 0.5}, indices=[1])
    venv.env_method("pin", {}, indices=[0, 2])
    for _ in range(3):  # resets write from the nominal model every time
        venv.reset()
    mass = venv.backend.model_field("body_mass")
    inertia = venv.backend.model_field("body_inertia")
    friction = venv.backend.model_field("geom_friction")
    np.testing.assert_array_equal(mass[[0, 2]], np.stack([nominal_mass] * 2))
    assert mass[1, torso] == nominal_mass[torso] * 1.6
    np.testing.assert_array_equal(inertia[1, torso], nominal_inertia[torso] * 1.6)
    np.testing.assert_array_equal(friction[1, :, 0], model.geom_friction[:, 0] * 0.5)
    np.testing.assert_array_equal(friction[[0, 2]], np.stack([model.geom_friction] * 2))
    subtree = venv.backend.batch.expanded("body_subtreemass")  # mj_setConst ran per world
    assert subtree[1, 0] > subtree[0, 0] and np.array_equal(subtree[0], nominal_subtree)
    assert venv.get_attr("params", indices=[1])[0]["torso_mass"] == 1.6
    # The nominal model the worlds copy is untouched.
    np.testing.assert_array_equal(model.body_mass, nominal_mass)


def test_only_changed_values_are_rewritten_and_set_const_follows_only_its_fields():
    venv = BatchedVecEnv("hopper", 3, seed=0)
    calls = []
    set_const = venv.backend.set_const
    venv.backend.set_const = lambda ids: (calls.append(np.asarray(ids).tolist()), set_const(ids))
    venv.env_method("pin", {"torso_mass": 1.3, "friction": 0.5})
    venv.reset()
    assert calls == [[0, 1, 2]]  # the first write of every world
    venv.env_method("pin", {"torso_mass": 1.3, "friction": 0.9}, indices=[1])  # friction: no derived constants
    venv.env_method("pin", {"torso_mass": 0.8, "friction": 0.5}, indices=[2])
    calls.clear()
    venv.reset()
    assert calls == [[2]]
    friction = venv.backend.model_field("geom_friction")[:, :, 0]
    nominal = venv.backend.model.geom_friction[:, 0]
    np.testing.assert_array_equal(friction, np.stack([nominal * 0.5, nominal * 0.9, nominal * 0.5]))
    torso = venv.backend.model.body("torso").id
    assert venv.backend.model_field("body_mass")[:, torso].tolist() == [
        venv.backend.model.body_mass[torso] * x for x in (1.3, 1.3, 0.8)]


def test_same_seed_gives_the_same_batch_trajectory_at_any_thread_count():
    runs = []
    for threads in (1, 2, 3):
        venv = BatchedVecEnv("hopper", 8, seed=4, threads=threads)
        venv.seed(4)
        trace = [venv.reset()]
        for a in random_actions(venv.action_space, 8, 60):
            obs, rewards, dones, _ = venv.step(a)
            trace += [obs, rewards, dones]
        runs.append(trace)
        venv.close()
    for other in runs[1:]:
        for x, y in zip(runs[0], other):
            np.testing.assert_array_equal(x, y)


def test_sampler_state_restores_each_world_stream_exactly():
    actions = random_actions(BatchedVecEnv("hopper", 1).action_space, 4, 80)
    first = BatchedVecEnv("hopper", 4, seed=9)
    first.seed(9)
    first.reset()
    for a in actions[:30]:
        first.step(a)
    states = first.env_method("sampler_state")
    assert len(states) == 4
    resumed = BatchedVecEnv("hopper", 4, seed=123)  # another seed: the states decide
    for i, state in enumerate(states):
        resumed.env_method("load_sampler_state", state, indices=[i])
    resumed.seed(0)  # SB3 re-seeds when it loads a model: a restored stream ignores it
    assert_same_run(DummyShim(first), resumed, actions[30:])


class DummyShim:
    """``first`` as the reference of :func:`assert_same_run`: its reset continues its streams."""

    def __init__(self, venv):
        self.venv = venv

    def __getattr__(self, name):
        return getattr(self.venv, name)


def test_set_distribution_is_checked_against_limits_per_world():
    venv = BatchedVecEnv("hopper", 2, seed=0)
    with pytest.raises(rs.SpecError, match="torso_mass"):
        venv.env_method("set_distribution", Fixed({"torso_mass": 9.0}), indices=[0])
    venv.env_method("set_distribution", Fixed({"torso_mass": 1.2}), indices=[1])
    venv.reset()
    params = venv.get_attr("params")
    assert params[1]["torso_mass"] == 1.2 and params[0]["torso_mass"] != 1.2


def test_a_diverging_world_ends_truncated_with_finite_observations():
    venv = BatchedVecEnv("hopper", 2, seed=0)
    venv.reset()
    venv.backend.qvel[0] = 1e30  # blows up on the next step
    obs, rewards, dones, infos = venv.step(np.zeros((2, 3), dtype=np.float32))
    assert dones[0] and "instability" in infos[0] and infos[0]["TimeLimit.truncated"]
    assert rewards[0] == 0.0 and np.isfinite(infos[0]["terminal_observation"]).all() and np.isfinite(obs).all()
    assert "instability" not in infos[1]


@pytest.mark.parametrize("env, match", [("ant", "Ant-v5"), ("sliding_block", "no batched backend"),
                                        ("hopper_pixels", "pixel observations")])
def test_unsupported_envs_are_one_line_spec_errors(tmp_path, env, match):
    exp = tmp_path / "b.toml"
    exp.write_text(f'[experiment]\nenv = "{env}"\nvec_env = "batched"\n')
    with pytest.raises(rs.SpecError, match=match) as err:
        rs.load_experiment_spec(exp)
    assert "experiment.vec_env" in str(err.value) and "\n" not in str(err.value)


def test_threads_belong_to_batched_envs_only(tmp_path):
    exp = tmp_path / "t.toml"
    exp.write_text('[experiment]\nenv = "hopper"\nvec_env = "subproc"\nthreads = 2\n')
    with pytest.raises(rs.SpecError, match="experiment.threads"):
        rs.load_experiment_spec(exp)
    exp.write_text('[experiment]\nenv = "hopper"\nvec_env = "batched"\nthreads = 0\n')
    assert rs.load_experiment_spec(exp).threads == 0


def test_backend_is_a_batched_setting_with_known_names(tmp_path):
    exp = tmp_path / "b.toml"
    for body, match in [('vec_env = "batched"\nbackend = "gpu"', r"experiment.backend: expected one of mujoco_batch, warp, got 'gpu'"),
                        ('vec_env = "batched"\nbackend = ["warp"]', "experiment.backend: expected one of"),
                        ('vec_env = "dummy"\nbackend = "warp"', 'experiment.backend: only vec_env = "batched"')]:
        exp.write_text(f'[experiment]\nenv = "hopper"\n{body}\n')
        with pytest.raises(rs.SpecError, match=match) as err:
            rs.load_experiment_spec(exp)
        assert str(err.value).startswith(str(exp)) and "\n" not in str(err.value)
    exp.write_text('[experiment]\nenv = "hopper"\nvec_env = "batched"\nbackend = "mujoco_batch"\n')
    spec = rs.load_experiment_spec(exp)
    assert spec.backend == "mujoco_batch" and "backend" not in spec.to_dict()  # configs of older runs still match
    with pytest.raises(rs.SpecError, match=r"backend: expected one of mujoco_batch, warp, got 'gpu'"):
        BatchedVecEnv("hopper", 2, backend="gpu")


def test_backend_options_are_checked_against_the_backend(tmp_path):
    exp = tmp_path / "o.toml"
    for body, match in [
        ('vec_env = "batched"\nbackend_options = { nconmax = 8 }', "unknown option 'nconmax' for backend 'mujoco_batch'; it takes: none"),
        ('vec_env = "dummy"\nbackend_options = {}', 'experiment.backend_options: only vec_env = "batched"'),
        ('vec_env = "batched"\nbackend_options = 3', "experiment.backend_options: expected a table of options"),
    ]:
        exp.write_text(f'[experiment]\nenv = "hopper"\n{body}\n')
        with pytest.raises(rs.SpecError, match=match) as err:
            rs.load_experiment_spec(exp)
        assert str(err.value).startswith(str(exp)) and "\n" not in str(err.value)
    exp.write_text('[experiment]\nenv = "hopper"\nvec_env = "batched"\n')
    assert "backend_options" not in rs.load_experiment_spec(exp).to_dict()  # configs of older runs still match
    for options, match in [(dict(nconmax=0), r"backend_options.nconmax: expected contacts per world to allocate, an integer >= 1, got 0"),
                           (dict(njmax=True), r"backend_options.njmax: expected constraint rows"),
                           (dict(device=0), r"backend_options.device: expected a Warp device"),
                           (dict(deterministic=1), r"backend_options.deterministic: expected true or false"),
                           (dict(threads=2), r"unknown option 'threads' for backend 'warp'; it takes: device, nconmax, njmax, deterministic")]:
        with pytest.raises(rs.SpecError, match=match):
            check_backend_options("warp", options, "here: backend_options")
    with pytest.raises(rs.SpecError, match="backend_options: unknown option 'njmax' for backend 'mujoco_batch'"):
        BatchedVecEnv("hopper", 2, backend_options=dict(njmax=4))


def test_the_warp_backend_without_mujoco_warp_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco_warp", None)  # as if not installed
    exp = tmp_path / "w.toml"
    exp.write_text('[experiment]\nenv = "hopper"\nvec_env = "batched"\nbackend = "warp"\n')
    with pytest.raises(rs.SpecError, match=r'experiment.backend: .*pip install "rlsim2real\[warp\]"') as err:
        rs.load_experiment_spec(exp)
    assert "\n" not in str(err.value)
    with pytest.raises(ImportError, match=r'backend "warp" needs the mujoco_warp package.*pip install "rlsim2real\[warp\]"'):
        BatchedVecEnv("hopper", 2, backend="warp")


TINY = """
[experiment]
name = "tiny_batched"
env = "hopper"
timesteps = 256
seed = 1
n_envs = 4
vec_env = "batched"
threads = 2
checkpoint_every = 128

[hyperparameters]
n_steps = 32
batch_size = 64
n_epochs = 1

[evaluation]
enabled = false
"""


def test_cli_tiny_batched_run_writes_episodes_and_resumes_from_a_checkpoint(tmp_path):
    exp = tmp_path / "tiny.toml"
    exp.write_text(TINY)
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "train", str(exp), "--out", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["threads"] == 2
    rows = (out / "logs" / "episodes.csv").read_text().splitlines()
    assert rows[0].startswith("timesteps,env,return,length") and len(rows) > 1
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    # Pretend the run died after its first checkpoint, then resume it.
    for extra in ("model.zip", "vecnormalize.pkl", "strategy.json"):
        (out / extra).unlink()
    checkpoints = Run.open(out).checkpoints()
    for c in checkpoints[1:]:
        for f in c.iterdir():
            f.unlink()
        c.rmdir()
    import pickle

    assert len(pickle.loads((checkpoints[0] / "samplers.pkl").read_bytes())) == 4
    resumed = rs.train(exp, out=out, resume=True, timesteps=384, evaluate=False)
    assert resumed.load_model(device="cpu").num_timesteps >= 384
