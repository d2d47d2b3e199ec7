"""The batched env on MuJoCo Warp (``backend="warp"``): it matches the Gymnasium envs (and so
the ``mujoco_batch`` backend) to float32 tolerance, per-world parameters reach their world
on the device, ``set_const`` gives what ``mj_setConst`` gives, diverging worlds are reported
and reset, and the VecEnv contract holds. Runs on Warp's CPU device where there is no GPU."""

import gymnasium as gym
import numpy as np
import pytest

mujoco_warp = pytest.importorskip("mujoco_warp", reason='the Warp backend needs mujoco_warp: pip install "rlsim2real[warp]"')

from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402
from test_batched import SENSOR_RANGES, assert_same_run, check_vec_env_contract, random_actions  # noqa: E402

import rlsim2real as rs  # noqa: E402
from rlsim2real.batched import BatchedVecEnv  # noqa: E402
from rlsim2real.batched.backend import MujocoBatchBackend  # noqa: E402
from rlsim2real.batched.warp_backend import WarpBackend  # noqa: E402
from rlsim2real.distributions import BoxDistribution  # noqa: E402
from rlsim2real.params import ParamSpace  # noqa: E402
from rlsim2real.training import make_vec_env  # noqa: E402

pytestmark = pytest.mark.warp

# Float32 physics against float64 MuJoCo: Hopper's observations stay within ~2e-5 of it over
# a few hundred steps; 1e-4 leaves room without hiding a wrong force (those move them by
# 1e-2 and more within a few steps).
ATOL = 1e-4


@pytest.mark.parametrize("real_set, deterministic", [("nominal", False), ("in_range", False), ("in_range", True)])
def test_matches_the_gymnasium_envs_within_float32_tolerance(real_set, deterministic):
    # deterministic: mujoco_warp's deterministic kernels (contact sort, canonical constraint
    # rows, invariant atomics) compute the same physics.
    spec = rs.load_env_spec("hopper")
    n = 3
    ref = DummyVecEnv([lambda i=i: Monitor(rs.make_real_env(spec, real_set, seed=10 + i)) for i in range(n)])
    warp = BatchedVecEnv(spec, n, seed=10, backend="warp", backend_options=dict(deterministic=deterministic))
    warp.env_method("pin", {} if real_set == "nominal" else spec.real_set(real_set))
    ref.seed(10), warp.seed(10)
    episodes = assert_same_run(ref, warp, random_actions(ref.action_space, n, 80), atol=ATOL)
    assert episodes > 0, "no episode ended: auto-reset not exercised"


def test_matches_mujoco_batch_with_dynamics_sensor_and_delay_terms_randomized():
    spec = rs.load_env_spec("hopper")
    space = ParamSpace(p.with_range(*SENSOR_RANGES[p.name]) if p.name in SENSOR_RANGES else p for p in spec.all_params)
    dist = BoxDistribution(space)
    ref = make_vec_env(spec, 4, 5, dist, "batched")
    warp = make_vec_env(spec, 4, 5, dist, "batched", backend="warp")
    assert isinstance(warp.backend, WarpBackend)
    # Masses, friction, damping and gears drawn per world at every reset, mj_setConst after them.
    assert assert_same_run(ref, warp, random_actions(ref.action_space, 4, 80), atol=ATOL) > 0


def test_per_world_masses_reach_their_world_only():
    spec = rs.load_env_spec("hopper")
    pins = {1: {"torso_mass": 1.9}, 2: {"torso_mass": 0.5, "foot_mass": 2.0}}

    def rollout(backend, pinned):
        venv = BatchedVecEnv(spec, 4, seed=3, backend=backend)
        for w in range(4):
            venv.env_method("pin", pins.get(w, {}) if pinned else {}, indices=[w])
        venv.seed(3)
        trace = [venv.reset()]
        for _ in range(25):
            trace.append(venv.step(np.zeros((4, 3), dtype=np.float32))[0])
        return venv, np.stack(trace, axis=1)  # (world, step, obs)

    venv, pinned = rollout("warp", True)
    _, nominal = rollout("warp", False)
    _, reference = rollout("mujoco_batch", True)
    moved = np.abs(pinned - nominal).max(axis=(1, 2))
    assert moved[0] < 1e-6 and moved[3] < 1e-6, moved  # the nominal worlds are untouched
    assert moved[1] > 1e-2 and moved[2] > 1e-2, moved  # the heavy and light torsos fall differently
    np.testing.assert_allclose(pinned, reference, rtol=0, atol=ATOL)  # ... as MuJoCo's do
    # On the device: each world's masses, and the constants mj_setConst derives from them.
    model = venv.backend.model
    torso, foot = model.body("torso").id, model.body("foot").id
    mass = venv.backend.device_values("body_mass")
    np.testing.assert_allclose(mass[[0, 3]], np.stack([model.body_mass] * 2), rtol=1e-6)
    np.testing.assert_allclose(mass[1, torso], model.body_mass[torso] * 1.9, rtol=1e-6)
    np.testing.assert_allclose(mass[2, [torso, foot]], model.body_mass[[torso, foot]] * [0.5, 2.0], rtol=1e-6)
    inertia = venv.backend.device_values("body_inertia")
    np.testing.assert_allclose(inertia[1, torso], model.body_inertia[torso] * 1.9, rtol=1e-6)


def test_set_const_gives_what_mj_set_const_gives_per_world():
    spec = rs.load_env_spec("hopper")
    values = [{}, {"torso_mass": 1.9, "motor_strength": 1.2}, {"leg_mass": 0.4, "foot_mass": 3.0}]
    envs = {}
    for backend in ("mujoco_batch", "warp"):
        venv = envs[backend] = BatchedVecEnv(spec, 3, seed=0, backend=backend)
        for w, pin in enumerate(values):
            venv.env_method("pin", pin, indices=[w])
        venv.reset()
    batch = envs["mujoco_batch"].backend.batch
    warp = envs["warp"].backend
    for field in ("body_subtreemass", "dof_invweight0", "body_invweight0", "actuator_acc0"):
        expected = batch.expanded(field)
        assert not np.allclose(expected[0], expected[1]) and not np.allclose(expected[0], expected[2]), field
        np.testing.assert_allclose(warp.device_values(field), expected, rtol=1e-4, err_msg=field)


def test_a_diverging_world_ends_truncated_with_finite_observations():
    venv = BatchedVecEnv("hopper", 2, seed=0, backend="warp")
    venv.reset()
    backend = venv.backend
    qvel = backend.qvel[[0]].copy()
    qvel[0, 2] = 1e30  # blows up on the next step
    backend.reset(np.array([0]), backend.qpos[[0]].copy(), qvel)
    obs, rewards, dones, infos = venv.step(np.zeros((2, 3), dtype=np.float32))
    assert dones[0] and "instability" in infos[0] and infos[0]["TimeLimit.truncated"]
    assert rewards[0] == 0.0 and np.isfinite(infos[0]["terminal_observation"]).all() and np.isfinite(obs).all()
    assert not dones[1] and "instability" not in infos[1]


@pytest.mark.parametrize("cls", [MujocoBatchBackend, WarpBackend])
def test_the_backend_resets_diverging_worlds_to_the_defaults_and_reports_them_once(cls):
    """As MuJoCo does: a world with a diverging state, or a non-finite control, is reported;
    its state goes back to the model's defaults (controls zeroed), the other worlds go on."""
    model = gym.make("Hopper-v5").unwrapped.model
    backend = cls(model, 3)
    qpos = np.tile(model.qpos0, (3, 1))
    qpos[:, 1] += 0.1  # above the floor: every world falls
    qvel = np.zeros((3, model.nv))
    qvel[1, 0] = 1e12
    backend.reset(np.arange(3), qpos, qvel)
    ctrl = np.zeros((3, model.nu))
    ctrl[2, 0] = np.nan
    backend.step(ctrl, 4)
    assert backend.unstable_since_last_call().tolist() == [False, True, True]
    assert backend.unstable_since_last_call().tolist() == [False, False, False]
    assert np.isfinite(backend.qpos).all() and np.isfinite(backend.qvel).all()
    np.testing.assert_allclose(backend.qpos[2], backend.qpos[0], rtol=0, atol=1e-6)  # world 2 ran on zero controls
    assert abs(backend.qpos[0, 1] - qpos[0, 1]) > 1e-4  # world 0 fell, undisturbed
    if cls is WarpBackend:  # reset after the call's steps (MuJoCo: at the step, then stepped on)
        np.testing.assert_array_equal(backend.qpos[1], model.qpos0.astype(np.float32))
        np.testing.assert_array_equal(backend.qvel[1], 0.0)
    backend.step(np.zeros((3, model.nu)), 4)
    assert not backend.unstable_since_last_call().any()


def test_vec_env_contract_shapes_dtypes_auto_reset_and_seeding():
    check_vec_env_contract(BatchedVecEnv("hopper", 5, seed=0, backend="warp"))


def test_model_fields_are_per_world_host_arrays_committed_to_the_device():
    model = gym.make("Hopper-v5").unwrapped.model
    backend = WarpBackend(model, 3, device="cpu")
    gravity = backend.model_field("opt.gravity")
    timestep = backend.model_field("opt.timestep")
    friction = backend.model_field("geom_friction")
    assert gravity.shape == (3, 3) and timestep.shape == (3, 1) and friction.shape == (3, model.ngeom, 3)
    assert backend.model_field("opt.gravity") is gravity  # one host array per field
    gravity[1, 2] = -3.0
    friction[2, :, 0] = 0.25
    # The device holds float32 values: written, not yet committed; then committed.
    np.testing.assert_array_equal(backend.device_values("opt.gravity")[1], np.float32(model.opt.gravity))
    backend.commit(["opt.gravity", "geom_friction"], np.array([1, 2]))
    np.testing.assert_array_equal(backend.device_values("opt.gravity")[:, 2], np.float32([-9.81, -3.0, -9.81]))
    np.testing.assert_array_equal(backend.device_values("geom_friction")[:, :, 0],
                                  np.float32([model.geom_friction[:, 0], model.geom_friction[:, 0], [0.25] * model.ngeom]))
    with pytest.raises(ValueError, match="vis.headlight.diffuse.*no per-world values in mujoco_warp"):
        backend.model_field("vis.headlight.diffuse")


def test_experiment_backend_setting(tmp_path):
    exp = tmp_path / "w.toml"
    exp.write_text('[experiment]\nenv = "hopper"\nvec_env = "batched"\nbackend = "warp"\n')
    spec = rs.load_experiment_spec(exp)
    assert spec.backend == "warp" and spec.to_dict()["backend"] == "warp"


def test_a_tiny_training_run_on_the_warp_backend(tmp_path):
    exp = tmp_path / "tiny.toml"
    exp.write_text('[experiment]\nenv = "hopper"\ntimesteps = 128\nseed = 1\nn_envs = 4\nvec_env = "batched"\n'
                   'backend = "warp"\nbackend_options = { device = "cpu", nconmax = 8, njmax = 40 }\n\n[hyperparameters]\nn_steps = 32\nbatch_size = 64\nn_epochs = 1\n\n'
                   '[evaluation]\nenabled = false\n')
    run = rs.train(exp, out=tmp_path / "run", evaluate=False)
    assert run.config["backend"] == "warp" and run.config["backend_options"] == dict(device="cpu", nconmax=8, njmax=40)
    rows = (tmp_path / "run" / "logs" / "episodes.csv").read_text().splitlines()
    assert len(rows) > 1 and run.load_model(device="cpu").num_timesteps >= 128


def test_backend_options_size_the_buffers_and_an_overflow_says_how_to_raise_them():
    venv = BatchedVecEnv("hopper", 2, seed=0, backend="warp",
                         backend_options=dict(device="cpu", nconmax=8, njmax=40, deterministic=True))
    assert venv.backend._d.njmax == 40 and venv.backend.device.is_cpu
    assert venv.backend._m.opt.deterministic == int(mujoco_warp.DeterminismType.ALL)
    venv.close()
    venv = BatchedVecEnv("hopper", 2, seed=0, backend="warp", backend_options=dict(device="cpu", njmax=1))
    venv.seed(0)
    venv.reset()
    with pytest.raises(RuntimeError, match=r"overflowed .* backend_options = \{ nconmax = \.\.\., njmax = \.\.\. \}"):
        for _ in range(50):  # the foot touches the floor: more than one constraint row
            venv.step(np.zeros((2, 3), dtype=np.float32))
    venv.close()
