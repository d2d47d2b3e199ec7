"""Bad spec input fails at load time with one line naming the file, the key and what was expected."""

from pathlib import Path

import pytest

import rlsim2real as rs
from rlsim2real import SpecError, load_agent_spec, load_env_spec, load_experiment_spec

ENV_SPEC = """
[env]
id = "Hopper-v5"

[params.torso_mass]
target = "body_mass[torso]"
range = [0.7, 1.3]

[params.friction]
target = "geom_friction[*,0]"
range = [0.6, 1.4]

[heldout_params.obs_bias]
target = "obs.bias[*]"
mode = "add"

[real_sets.heavy_torso]
torso_mass = 1.6
"""

AGENT_SPEC = """
[agent]
algorithm = "ppo"

[hyperparameters]
n_steps = 64
learning_rate = 3e-4
"""

EXPERIMENT_SPEC = """
[experiment]
env = "env.toml"
agent = "agent.toml"
strategy = "uniform"
timesteps = 1000

[evaluation]
sets = ["nominal", "heavy_torso"]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def spec_error(load, path: Path, *fragments: str) -> str:
    """Load ``path`` expecting a SpecError whose one-line message names ``path`` and ``fragments``."""
    with pytest.raises(SpecError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


def test_the_valid_specs_load(tmp_path):
    env = load_env_spec(write(tmp_path, "env.toml", ENV_SPEC))
    assert env.params.names == ("torso_mass", "friction") and env.heldout_params.names == ("obs_bias",)
    assert env.real_set("heavy_torso") == {"torso_mass": 1.6}
    agent = load_agent_spec(write(tmp_path, "agent.toml", AGENT_SPEC))
    assert agent.algorithm == "ppo" and agent.hyperparameters["n_steps"] == 64
    exp = load_experiment_spec(write(tmp_path, "exp.toml", EXPERIMENT_SPEC))
    assert exp.env.name == "env" and exp.eval_sets == ["nominal", "heavy_torso"] and exp.timesteps == 1000


@pytest.mark.parametrize("name", ["hopper", "walker2d", "half_cheetah", "ant", "inverted_pendulum"])
def test_builtin_env_specs_load_with_real_sets(name):
    spec = load_env_spec(name)
    assert len(spec.params) >= 4 and spec.real_sets
    assert {"obs_bias", "obs_noise", "obs_scale", "action_delay"} <= set(spec.heldout_params.names)


# ------------------------------------------------------------------ env specs
BROKEN_ENV_SPECS = {
    "unknown top-level key": (
        ENV_SPEC.replace("[params.torso_mass]", "[parms.torso_mass]"),
        ["'parms'", "expected one of", "params"],
    ),
    "typo in a param table": (
        ENV_SPEC.replace("range = [0.7, 1.3]", "rnage = [0.7, 1.3]"),
        ["params.torso_mass", "'rnage'", "expected one of", "range"],
    ),
    "unknown field": (
        ENV_SPEC.replace("body_mass[torso]", "body_mas[torso]"),
        ["params.torso_mass", "'body_mas'", "expected one of", "body_mass"],
    ),
    "unknown body name": (
        ENV_SPEC.replace("body_mass[torso]", "body_mass[torsoo]"),
        ["params.torso_mass", "'torsoo'", "expected one of the bodies", "torso, thigh, leg, foot"],
    ),
    "low > high": (
        ENV_SPEC.replace("[0.7, 1.3]", "[1.3, 0.7]"),
        ["params.torso_mass", "1.3", "0.7", "expected low <= high"],
    ),
    "scale makes a mass non-positive": (
        ENV_SPEC.replace("[0.7, 1.3]", "[-0.5, 1.2]"),
        ["params.torso_mass", "-0.5", "expected > 0"],
    ),
    "add makes an inertia non-positive": (
        ENV_SPEC + '[params.inertia]\ntarget = "body_inertia[torso]"\nrange = [-10.0, 0.0]\nmode = "add"\n',
        ["params.inertia", "body_inertia[torso]", "expected > 0"],
    ),
    "unknown mode": (
        ENV_SPEC.replace('mode = "add"', 'mode = "offset"'),
        ["heldout_params.obs_bias", "'offset'", "scale, add, abs"],
    ),
    "unknown dist": (
        ENV_SPEC.replace("range = [0.6, 1.4]", 'range = [0.6, 1.4]\ndist = "gaussian"'),
        ["params.friction", "'gaussian'", "uniform, loguniform, normal"],
    ),
    "real set names an unknown parameter": (
        ENV_SPEC.replace("torso_mass = 1.6", "torso_mas = 1.6"),
        ["real_sets.heavy_torso", "'torso_mas'", "expected one of", "torso_mass"],
    ),
    "real set value makes a mass non-positive": (
        ENV_SPEC.replace("torso_mass = 1.6", "torso_mass = -1.0"),
        ["real_sets.heavy_torso.torso_mass", "expected > 0"],
    ),
    "range is not two numbers": (
        ENV_SPEC.replace("[0.7, 1.3]", '"0.7..1.3"'),
        ["params.torso_mass.range", "expected [low, high]"],
    ),
    "invalid TOML syntax": (ENV_SPEC.replace("range = [0.7, 1.3]", "range = [0.7, 1.3"), ["invalid TOML", "line"]),
    "empty file": ("", ["empty", "expected a spec"]),
    "neither id nor entry_point": (ENV_SPEC.replace('id = "Hopper-v5"', ""), ["env", "'id'", "'entry_point'"]),
}


@pytest.mark.parametrize("case", list(BROKEN_ENV_SPECS))
def test_broken_env_spec_fails_at_load_with_one_clear_line(tmp_path, case):
    text, fragments = BROKEN_ENV_SPECS[case]
    spec_error(load_env_spec, write(tmp_path, "broken.toml", text), *fragments)


def test_unknown_real_set_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "env.toml", ENV_SPEC)
    with pytest.raises(SpecError, match=r"unknown real set 'no_such_set'; known real sets: heavy_torso$") as info:
        rs.make_real_env(load_env_spec(path), "no_such_set")
    assert str(path) in str(info.value)
    with pytest.raises(SpecError, match="no_such_set.*known real sets: in_range, heavy_torso"):
        rs.make_real_env("hopper", "no_such_set")


def test_real_env_rejects_unknown_and_unphysical_values():
    with pytest.raises(SpecError, match="unknown parameters torso_mas; known: .*torso_mass"):
        rs.make_real_env("hopper", {"torso_mas": 1.2})
    with pytest.raises(SpecError, match=r"hopper.toml: .*torso_mass.*expected > 0"):
        rs.make_real_env("hopper", {"torso_mass": 0.0})


def test_unknown_spec_name_lists_the_known_ones():
    with pytest.raises(SpecError, match="'hoper' not found; known envs: .*hopper"):
        load_env_spec("hoper")


# ------------------------------------------------------------------ agent specs
def test_agent_spec_unknown_hyperparameter(tmp_path):
    path = write(tmp_path, "agent.toml", AGENT_SPEC.replace("n_steps", "n_step"))
    spec_error(load_agent_spec, path, "hyperparameters", "'n_step'", "expected one of", "n_steps")


def test_agent_spec_parallel_update_is_a_checked_recurrent_ppo_setting(tmp_path):
    recurrent = AGENT_SPEC.replace('"ppo"', '"recurrent_ppo"')
    path = write(tmp_path, "agent.toml", recurrent + 'parallel_update = "yes"\n')
    spec_error(load_agent_spec, path, "hyperparameters.parallel_update", "expected true or false", "'yes'")
    path = write(tmp_path, "agent.toml", recurrent + "parallel_update = false\n")
    assert load_agent_spec(path).hyperparameters["parallel_update"] is False
    path = write(tmp_path, "agent.toml", AGENT_SPEC + "parallel_update = false\n")  # SB3's PPO has no such thing
    spec_error(load_agent_spec, path, "'parallel_update'", "expected one of")


def test_agent_spec_unknown_algorithm(tmp_path):
    path = write(tmp_path, "agent.toml", AGENT_SPEC.replace('"ppo"', '"sac"'))
    spec_error(load_agent_spec, path, "agent.algorithm", "'sac'", "recurrent_ppo, ppo")


# ------------------------------------------------------------------ experiment specs
BROKEN_EXPERIMENTS = {
    "unknown top-level key": (EXPERIMENT_SPEC.replace("[evaluation]", "[evalution]"), ["'evalution'", "expected one of"]),
    "unknown experiment key": (
        EXPERIMENT_SPEC.replace("timesteps", "time_steps"),
        ["experiment", "'time_steps'", "expected one of", "timesteps"],
    ),
    "unknown strategy": (
        EXPERIMENT_SPEC.replace('"uniform"', '"no_such_strategy"'),
        ["experiment.strategy", "'no_such_strategy'", "expected one of", "uniform"],
    ),
    "unknown eval set": (
        EXPERIMENT_SPEC.replace('"heavy_torso"]', '"heavy_torsoo"]'),
        ["evaluation.sets", "'heavy_torsoo'", "heavy_torso"],
    ),
    "missing env spec": (EXPERIMENT_SPEC.replace('"env.toml"', '"no_env.toml"'), ["experiment.env", "not found"]),
    "non-positive timesteps": (EXPERIMENT_SPEC.replace("1000", "0"), ["experiment.timesteps", "> 0"]),
}


@pytest.mark.parametrize("case", list(BROKEN_EXPERIMENTS))
def test_broken_experiment_spec_fails_with_one_clear_line(tmp_path, case):
    write(tmp_path, "env.toml", ENV_SPEC)
    write(tmp_path, "agent.toml", AGENT_SPEC)
    text, fragments = BROKEN_EXPERIMENTS[case]
    spec_error(load_experiment_spec, write(tmp_path, "exp.toml", text), *fragments)


def test_experiment_reports_an_error_inside_its_env_spec_by_that_file(tmp_path):
    env = write(tmp_path, "env.toml", ENV_SPEC.replace("body_mass[torso]", "body_mass[torsoo]"))
    write(tmp_path, "agent.toml", AGENT_SPEC)
    with pytest.raises(SpecError, match="unknown body name 'torsoo'") as info:
        load_experiment_spec(write(tmp_path, "exp.toml", EXPERIMENT_SPEC))
    assert str(env) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml")), ids=lambda p: p.stem)
def test_every_builtin_experiment_loads_with_its_strategy(path):
    spec = rs.load_experiment_spec(path)
    from rlsim2real.strategies import make_strategy

    strategy = make_strategy(spec.strategy, spec.env, spec.strategy_settings, spec.seed)
    assert strategy.name == spec.strategy
    env = rs.make_env(spec.train_env, seed=0)
    env.get_wrapper_attr("set_distribution")(strategy.distribution)  # workers accept it
    _, info = env.reset()
    assert set(info["dr_params"]) == set(spec.env.all_params.names)
