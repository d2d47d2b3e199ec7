"""Term tests: every randomization term lands in the model, changes the simulation, and never drifts."""

import functools
import warnings

import gymnasium as gym
import numpy as np
import pytest

import rlsim2real as rs
from rlsim2real import ActionDelay, DynamicsRandomization, ObservationNoise, Param, PhysicsGuard, SpecError

ENVS = ["hopper", "walker2d", "half_cheetah", "ant", "inverted_pendulum"]
# Held-out terms are nominal in training; real sets move them out of range to these values.
HELDOUT_VALUES = {"obs.bias": 0.1, "obs.noise_std": 0.05, "obs.scale": 1.2, "action.delay": 2.0}
STEPS = 60


@functools.cache
def spec(name: str) -> rs.EnvSpec:
    return rs.load_env_spec(name)


@functools.cache
def actions(name: str) -> np.ndarray:
    space = gym.make(spec(name).env_id).action_space
    return np.random.default_rng(0).uniform(space.low, space.high, (STEPS, *space.shape))


def rollout(env: gym.Env, acts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """What the policy sees (observations and rewards) and what the simulator did (qpos), per step."""
    obs, _ = env.reset(seed=seed)
    seen, qpos = [obs], [env.unwrapped.data.qpos.copy()]
    for action in acts:
        obs, reward, terminated, truncated, _ = env.step(action)
        seen.append(np.append(obs, reward))
        qpos.append(env.unwrapped.data.qpos.copy())
        if terminated or truncated:
            break
    return np.concatenate(seen[1:]), np.array(qpos)


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or float(np.max(np.abs(a - b))) > 1e-6


@functools.cache
def nominal_rollout(name: str) -> tuple[np.ndarray, np.ndarray]:
    return rollout(rs.make_real_env(spec(name), "nominal", seed=0), actions(name))


def term_cases():
    for name in ENVS:
        for p in spec(name).params:
            for value in dict.fromkeys(p.range):  # both ends of the training box
                if value != p.identity:
                    yield pytest.param(name, p.name, value, id=f"{name}-{p.name}={value:g}")
        for p in spec(name).heldout_params:
            value = HELDOUT_VALUES[p.parsed.field]
            yield pytest.param(name, p.name, value, id=f"{name}-{p.name}={value:g}")


@pytest.mark.parametrize("name,param,value", term_cases())
def test_each_term_alone_changes_the_trajectory(name, param, value):
    seen, qpos = rollout(rs.make_real_env(spec(name), {param: value}, seed=0), actions(name))
    nominal_seen, nominal_qpos = nominal_rollout(name)
    assert differ(seen, nominal_seen), f"{param}={value} changed nothing the policy sees"
    if spec(name).all_params[param].parsed.kind != "obs":  # sensor terms leave the physics alone
        assert differ(qpos, nominal_qpos), f"{param}={value} changed nothing in the simulation"


def test_hopper_floor_only_friction_is_a_no_op_which_is_why_friction_scales_every_geom():
    # MuJoCo uses the larger friction of the two geoms in contact; Hopper's foot has 2.0 and
    # the floor 1.0, so a slippery floor alone changes nothing.
    floor_only = DynamicsRandomization(gym.make("Hopper-v5"), [Param("floor", "geom_friction[floor,0]", (0.8, 0.8))])
    seen, qpos = rollout(floor_only, actions("hopper"))
    assert floor_only.unwrapped.model.geom_friction[0, 0] == pytest.approx(0.8)
    nominal_seen, nominal_qpos = nominal_rollout("hopper")
    assert not differ(qpos, nominal_qpos) and not differ(seen, nominal_seen)
    assert spec("hopper").params["friction"].target == "geom_friction[*,0]"
    _, spec_qpos = rollout(rs.make_real_env(spec("hopper"), {"friction": 0.8}, seed=0), actions("hopper"))
    assert differ(spec_qpos, nominal_qpos)


# ------------------------------------------------------------------ values land in the model
def nominal_model(env_id: str = "Hopper-v5"):
    return gym.make(env_id).unwrapped.model


def test_mass_scales_inertia_and_updates_subtree_masses():
    nominal = nominal_model()
    env = rs.make_real_env(spec("hopper"), {"torso_mass": 1.5}, seed=0)
    env.reset()
    model = env.unwrapped.model
    assert model.body_mass[1] == pytest.approx(1.5 * nominal.body_mass[1])
    assert np.allclose(model.body_inertia[1], 1.5 * nominal.body_inertia[1])
    assert np.array_equal(model.body_mass[2:], nominal.body_mass[2:])
    assert np.array_equal(model.body_inertia[2:], nominal.body_inertia[2:])
    # derived by mj_setConst: the world's subtree is the whole robot
    assert model.body_subtreemass[0] == pytest.approx(nominal.body_subtreemass[0] + 0.5 * nominal.body_mass[1])


def test_friction_damping_and_gear_land_in_every_element_they_name():
    nominal = nominal_model()
    env = rs.make_real_env(spec("hopper"), "in_range", seed=0)  # friction 0.8, damping 1.5, motors 0.9
    env.reset()
    model = env.unwrapped.model
    assert np.allclose(model.geom_friction[:, 0], 0.8 * nominal.geom_friction[:, 0])
    assert np.array_equal(model.geom_friction[:, 1:], nominal.geom_friction[:, 1:])
    assert np.allclose(model.dof_damping, 1.5 * nominal.dof_damping)
    assert np.allclose(model.actuator_gear[:, 0], 0.9 * nominal.actuator_gear[:, 0])
    assert np.array_equal(model.actuator_gear[:, 1:], nominal.actuator_gear[:, 1:])


@pytest.mark.parametrize(
    "target,mode,value,expected",
    [
        ("dof_damping[thigh_joint]", "scale", 3.0, lambda nominal: 3.0 * nominal),
        ("dof_damping[thigh_joint]", "add", 0.5, lambda nominal: nominal + 0.5),
        ("dof_damping[thigh_joint]", "abs", 7.0, lambda nominal: 7.0),
        ("opt.gravity[2]", "abs", -3.7, lambda nominal: -3.7),
        ("opt.timestep", "scale", 0.5, lambda nominal: 0.5 * nominal),
    ],
)
def test_modes_scale_add_abs(target, mode, value, expected):
    def read(model):
        return {
            "dof_damping[thigh_joint]": lambda: model.dof_damping[3],
            "opt.gravity[2]": lambda: model.opt.gravity[2],
            "opt.timestep": lambda: model.opt.timestep,
        }[target]()

    env = DynamicsRandomization(gym.make("Hopper-v5"), [Param("p", target, (value, value), mode=mode)], seed=0)
    env.reset()
    assert read(env.unwrapped.model) == pytest.approx(expected(read(nominal_model())))
    env.pin({})
    env.reset()
    assert read(env.unwrapped.model) == read(nominal_model())


FIELDS = ("body_mass", "body_inertia", "body_subtreemass", "geom_friction", "dof_damping", "actuator_gear")


def assert_nominal(model, nominal):
    for field in FIELDS:
        assert np.array_equal(getattr(model, field), getattr(nominal, field)), field


def test_a_thousand_resets_do_not_compound_and_pinning_nominal_restores_the_model_exactly():
    nominal = nominal_model()
    box = spec("hopper").params
    env = rs.make_env(spec("hopper"), seed=0)
    model = env.unwrapped.model
    seen = []
    for _ in range(1000):
        _, info = env.reset()
        seen.append([info["dr_params"][n] for n in box.names])
    seen = np.array(seen)
    assert np.all((seen >= box.low) & (seen <= box.high))
    assert np.all(seen.std(axis=0) > 0.1 * (box.high - box.low))  # spread over the box, not stuck
    last = info["dr_params"]
    # each field is nominal x the current sample, not x the product of the last 1,000
    assert model.body_mass[1] == pytest.approx(nominal.body_mass[1] * last["torso_mass"], rel=1e-12)
    assert np.allclose(model.body_inertia[4], nominal.body_inertia[4] * last["foot_mass"], rtol=1e-12)
    assert np.allclose(model.geom_friction[:, 0], nominal.geom_friction[:, 0] * last["friction"], rtol=1e-12)
    assert np.allclose(model.dof_damping, nominal.dof_damping * last["joint_damping"], rtol=1e-12)
    assert np.allclose(model.actuator_gear[:, 0], nominal.actuator_gear[:, 0] * last["motor_strength"], rtol=1e-12)
    env.pin({})
    env.reset()
    assert_nominal(model, nominal)


def test_a_pinned_episode_leaves_no_trace_once_unpinned_to_nominal():
    nominal = nominal_model()
    env = rs.make_env(spec("hopper"), seed=0)
    env.pin({"torso_mass": 1.6, "friction": 0.4, "joint_damping": 3.0})
    _, info = env.reset()
    assert info["dr_params"]["torso_mass"] == 1.6 and info["dr_params"]["thigh_mass"] == 1.0
    rollout(env, actions("hopper"))
    env.pin({})
    env.reset()
    assert_nominal(env.unwrapped.model, nominal)
    env.unpin()  # back to sampling the box
    _, info = env.reset()
    assert info["dr_params"]["torso_mass"] not in (1.0, 1.6)


def test_resample_every_changes_params_within_an_episode():
    space = [Param("torso_mass", "body_mass[torso]", (0.5, 1.5))]
    env = DynamicsRandomization(gym.make("Hopper-v5"), space, seed=0, resample_every=3)
    _, info = env.reset()
    first = info["dr_params"]["torso_mass"]
    infos = [env.step(np.zeros(3))[-1] for _ in range(3)]
    assert "dr_params" not in infos[0] and "dr_params" not in infos[1]
    second = infos[2]["dr_params"]["torso_mass"]
    assert second != first and 0.5 <= second <= 1.5
    assert env.unwrapped.model.body_mass[1] == pytest.approx(second * nominal_model().body_mass[1])


def test_wrappers_reject_terms_of_the_wrong_kind_and_unphysical_pins():
    with pytest.raises(SpecError, match="DynamicsRandomization takes model parameters only"):
        DynamicsRandomization(gym.make("Hopper-v5"), [Param("b", "obs.bias[*]", (0, 1), mode="add")])
    env = rs.make_env(spec("hopper"), seed=0)
    with pytest.raises(SpecError, match="unknown parameters no_such"):
        env.pin({"no_such": 1.0})
    with pytest.raises(SpecError, match="torso_mass.*expected > 0"):
        env.pin({"torso_mass": -1.0})
    with pytest.raises(SpecError, match="noise std negative"):
        env.pin({"obs_noise": -0.1})


# ------------------------------------------------------------------ sensors and actuators
def sensor_pair(terms, seed=0):
    """A sensor-corrupted Hopper and a clean one, reset alike."""
    noisy = ObservationNoise(gym.make("Hopper-v5"), terms, seed=seed)
    return noisy, gym.make("Hopper-v5")


def test_observation_bias_and_scale_are_exact():
    noisy, clean = sensor_pair([
        Param("gain", "obs.scale[*]", (2.0, 2.0)),
        Param("bias", "obs.bias[0|2]", (0.3, 0.3), mode="abs"),
    ])
    for seed in range(3):
        shifted, _ = noisy.reset(seed=seed)
        truth, _ = clean.reset(seed=seed)
        expected = 2.0 * truth
        expected[[0, 2]] += 0.3
        assert np.allclose(shifted, expected, rtol=0, atol=1e-12)
        assert np.array_equal(shifted[1], 2.0 * truth[1])
        action = np.full(3, 0.5)
        assert np.allclose(noisy.step(action)[0], 2.0 * clean.step(action)[0] + np.isin(np.arange(11), [0, 2]) * 0.3)


def test_spec_sensor_shift_without_noise_is_scale_then_bias():
    env = rs.make_real_env(spec("hopper"), {"obs_scale": 1.1, "obs_bias": 0.1}, seed=0)
    clean = gym.make("Hopper-v5")
    assert np.allclose(env.reset(seed=4)[0], 1.1 * clean.reset(seed=4)[0] + 0.1)
    for action in actions("hopper")[:5]:
        assert np.allclose(env.step(action)[0], 1.1 * clean.step(action)[0] + 0.1)


def test_observation_noise_has_its_std_and_repeats_under_a_seed():
    noisy, clean = sensor_pair([Param("noise", "obs.noise_std[*]", (0.1, 0.1), mode="abs")])
    errors = np.array([noisy.reset(seed=s)[0] - clean.reset(seed=s)[0] for s in range(300)])
    assert abs(errors.mean()) < 0.01
    assert errors.std() == pytest.approx(0.1, rel=0.05)
    again, _ = sensor_pair([Param("noise", "obs.noise_std[*]", (0.1, 0.1), mode="abs")])
    other, _ = sensor_pair([Param("noise", "obs.noise_std[*]", (0.1, 0.1), mode="abs")], seed=1)
    first = rollout(noisy, actions("hopper")[:10], seed=7)[0]
    assert np.array_equal(rollout(again, actions("hopper")[:10], seed=7)[0], first)
    assert differ(rollout(other, actions("hopper")[:10], seed=8)[0], first)


@pytest.mark.parametrize("k", [1, 3])
def test_action_delay_is_exactly_k_steps(k):
    acts = actions("hopper")[:20]
    shifted = np.concatenate([np.zeros((k, 3)), acts[:-k]])
    delayed_env = ActionDelay(gym.make("Hopper-v5"), delay=k)
    delayed, delayed_qpos = rollout(delayed_env, acts, seed=3)
    plain, plain_qpos = rollout(gym.make("Hopper-v5"), shifted, seed=3)
    assert np.array_equal(delayed, plain) and np.array_equal(delayed_qpos, plain_qpos)
    # a new episode starts with an empty pipeline, not with the last episode's actions
    assert np.array_equal(rollout(delayed_env, acts, seed=3)[0], delayed)
    assert differ(rollout(gym.make("Hopper-v5"), acts, seed=3)[0], plain)


def test_spec_action_latency_set_delays_by_two_steps():
    acts = actions("hopper")[:20]
    late, _ = rollout(rs.make_real_env(spec("hopper"), "action_latency", seed=0), acts)
    shifted = np.concatenate([np.zeros((2, 3)), acts[:-2]])
    assert np.array_equal(late, rollout(rs.make_real_env(spec("hopper"), "nominal", seed=0), shifted)[0])


# ------------------------------------------------------------------ unstable physics
@pytest.mark.filterwarnings("ignore:.*reward is")  # Gymnasium's checker sees the raw step inside the guard
@pytest.mark.parametrize("corrupt", ["nan_qvel", "inf_qpos", "nan_action"])
def test_physics_guard_truncates_nan_physics_instead_of_raising(corrupt):
    env = rs.make_env(spec("hopper"), seed=0)
    env.reset()
    action = np.zeros(3)
    if corrupt == "nan_qvel":
        env.unwrapped.data.qvel[:] = np.nan
    elif corrupt == "inf_qpos":
        env.unwrapped.data.qpos[:] = np.inf
    else:
        action = np.full(3, np.nan)
    obs, reward, _, truncated, info = env.step(action)
    assert truncated and "instability" in info
    assert np.all(np.isfinite(obs)) and reward == 0.0
    env.reset()  # the next episode runs normally
    obs, reward, _, truncated, info = env.step(np.zeros(3))
    assert not truncated and "instability" not in info and np.all(np.isfinite(obs))


def test_physics_guard_catches_absurd_gravity():
    env = DynamicsRandomization(
        PhysicsGuard(gym.make("Hopper-v5")), [Param("gravity", "opt.gravity[2]", (1e30, 1e30), mode="abs")], seed=0
    )
    env.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs, _, _, truncated, info = env.step(np.zeros(3))
    assert truncated and "QACC" in info["instability"] and np.all(np.isfinite(obs))


def test_layers_talk_through_other_wrappers_in_between():
    env = DynamicsRandomization(gym.make("Hopper-v5"), [Param("torso_mass", "body_mass[torso]", (0.5, 1.5))], seed=0)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = ObservationNoise(env, [Param("bias", "obs.bias[*]", (0.0, 0.2), mode="add")], seed=0)
    assert env.get_wrapper_attr("all_param_names") == ("torso_mass", "bias")
    env.pin({"torso_mass": 1.4, "bias": 0.1})
    _, info = env.reset()
    assert info["dr_params"] == {"torso_mass": 1.4, "bias": 0.1} == env.get_wrapper_attr("params")
    assert env.unwrapped.model.body_mass[1] == pytest.approx(1.4 * nominal_model().body_mass[1])
    env.set_distribution(rs.Fixed({"torso_mass": 0.6}))
    env.unpin()
    _, info = env.reset()
    assert info["dr_params"] == {"torso_mass": 0.6, "bias": 0.0}


def _fresh_constants(model) -> dict[str, np.ndarray]:
    """Derived constants recomputed from scratch on a copy of ``model`` (its current fields)."""
    import copy

    import mujoco

    fresh = copy.deepcopy(model)
    mujoco.mj_setConst(fresh, mujoco.MjData(fresh))
    return {f: getattr(fresh, f).copy() for f in ("body_subtreemass", "dof_invweight0", "body_invweight0", "actuator_acc0")}


def test_set_const_runs_when_masses_or_gears_change_and_is_skipped_for_friction_alone(monkeypatch):
    import rlsim2real.wrappers.dynamics as dynamics

    calls = []
    real = dynamics.mujoco.mj_setConst
    monkeypatch.setattr(dynamics.mujoco, "mj_setConst", lambda m, d: calls.append(1) or real(m, d))
    space = [Param("torso_mass", "body_mass[torso]", (0.5, 1.5)), Param("friction", "geom_friction[*,0]", (0.5, 1.5)),
             Param("gear", "actuator_gear[*,0]", (0.5, 1.5))]
    env = DynamicsRandomization(gym.make("Hopper-v5"), space, seed=0)
    model = env.unwrapped.model
    for pinned, runs in [({"torso_mass": 1.3}, True), ({"torso_mass": 1.3, "friction": 0.7}, False),
                         ({"torso_mass": 1.3, "friction": 1.2, "gear": 0.8}, True), ({"friction": 1.2, "gear": 0.8}, True)]:
        calls.clear()
        env.pin(pinned)
        env.reset()
        assert bool(calls) == runs, pinned
        for field, expected in _fresh_constants(model).items():
            np.testing.assert_array_equal(getattr(model, field), expected, err_msg=f"{pinned}: {field}")


def test_overlapping_and_mixed_mode_terms_land_as_if_written_one_after_another():
    space = [Param("all_mass", "body_mass[*]", (0.5, 1.5)), Param("torso_mass", "body_mass[torso]", (0.5, 1.5)),
             Param("friction", "geom_friction[*,0]", (0.5, 1.5)), Param("floor", "geom_friction[floor,0]", (0.2, 0.3), mode="abs"),
             Param("damping", "dof_damping[*]", (0.5, 2.0))]
    env = DynamicsRandomization(gym.make("Hopper-v5"), space, seed=0)
    nominal = nominal_model()
    values = {"all_mass": 1.2, "torso_mass": 0.9, "friction": 1.1, "floor": 0.25, "damping": 1.5}
    env.pin(values)
    env.reset()
    model = env.unwrapped.model
    mass = nominal.body_mass * 1.2
    mass[0], mass[1] = nominal.body_mass[0], nominal.body_mass[1] * 0.9  # the world body is never scaled
    np.testing.assert_array_equal(model.body_mass, mass)
    ratio = np.where(nominal.body_mass > 0, mass / np.where(nominal.body_mass > 0, nominal.body_mass, 1.0), 1.0)
    np.testing.assert_array_equal(model.body_inertia, nominal.body_inertia * ratio[:, None])
    friction = nominal.geom_friction.copy()
    friction[:, 0] *= 1.1
    friction[0, 0] = 0.25  # the floor: the later term wins
    np.testing.assert_array_equal(model.geom_friction, friction)
    np.testing.assert_array_equal(model.dof_damping, nominal.dof_damping * 1.5)


def test_uniform_and_per_dimension_sensor_terms_give_the_same_observations():
    dim = gym.make("Hopper-v5").observation_space.shape[0]
    space = [Param("noise", "obs.noise_std[*]", (0.01, 0.05), mode="add"), Param("bias", "obs.bias[*]", (0.0, 0.1), mode="add"),
             Param("scale", "obs.scale[*]", (0.9, 1.1))]

    def run(**nominal):
        env = ObservationNoise(gym.make("Hopper-v5"), space, seed=3, **nominal)
        obs = [env.reset(seed=3)[0]]
        obs += [env.step(a)[0] for a in actions("hopper")[:40]]
        return np.array(obs)

    uniform = run(noise_std=0.01, bias=0.02, scale=1.05)
    per_dim = run(noise_std=np.full(dim, 0.01), bias=np.full(dim, 0.02), scale=np.full(dim, 1.05))
    np.testing.assert_array_equal(uniform, per_dim)
    assert uniform.dtype == np.float64


def test_dr_params_is_a_fresh_dict_per_reset_and_matches_params():
    env = rs.make_env("hopper", seed=0)
    _, info = env.reset(seed=0)
    first = dict(info["dr_params"])
    assert info["dr_params"] == env.get_wrapper_attr("params")
    info["dr_params"]["torso_mass"] = -1.0  # a caller's edit does not reach the env
    assert env.get_wrapper_attr("params") == first
    _, again = env.reset(seed=0)
    assert again["dr_params"] == first and again["dr_params"] is not info["dr_params"]
