"""Param, ParamSpace and distributions: sampling statistics, conversions, state."""

import json
import math
import pickle

import numpy as np
import pytest

from rlsim2real import BoxDistribution, Fixed, Param, ParamSpace, SpecError
from rlsim2real.distributions import distribution_from_state
from rlsim2real.params import Target

N = 20_000


def draws(param: Param, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dist = BoxDistribution(ParamSpace([param]))
    return np.array([dist.sample(rng)[0] for _ in range(n)])


def space() -> ParamSpace:
    return ParamSpace([
        Param("torso_mass", "body_mass[torso]", (0.7, 1.3)),
        Param("damping", "dof_damping[*]", (0.5, 2.0), dist="loguniform"),
        Param("gravity", "opt.gravity[2]", (-11.0, -8.0), mode="abs", dist="normal"),
        Param("bias", "obs.bias[*]", (0.0, 0.0), mode="add"),
    ])


# ------------------------------------------------------------------ distributions
def test_uniform_is_flat_over_the_range():
    x = draws(Param("m", "body_mass[torso]", (0.5, 1.5)))
    assert x.min() >= 0.5 and x.max() <= 1.5
    assert abs(x.mean() - 1.0) < 0.01
    assert abs(x.std() - 1 / math.sqrt(12)) < 0.01
    # every tenth of the range gets its share
    counts, _ = np.histogram(x, bins=10, range=(0.5, 1.5))
    assert counts.min() > 0.08 * N


def test_loguniform_is_flat_in_log_space():
    x = draws(Param("d", "dof_damping[*]", (0.1, 10.0), dist="loguniform"))
    assert x.min() >= 0.1 and x.max() <= 10.0
    assert abs(np.median(x) - 1.0) < 0.05  # the geometric midpoint, not 5.05
    assert abs(np.log(x).std() - np.log(100) / math.sqrt(12)) < 0.02


def test_normal_has_its_mean_and_std_and_is_truncated_to_the_range():
    x = draws(Param("g", "opt.gravity[2]", (-12.0, -8.0), mode="abs", dist="normal", mean=-9.5, std=0.5))
    assert x.min() >= -12.0 and x.max() <= -8.0
    assert abs(x.mean() + 9.5) < 0.02
    assert abs(x.std() - 0.5) < 0.02
    # a wide normal on a narrow box still never leaves the box
    wide = draws(Param("w", "body_mass[torso]", (0.9, 1.1), dist="normal", std=5.0), n=2000)
    assert wide.min() >= 0.9 and wide.max() <= 1.1
    assert wide.std() > 0.04  # close to uniform, not collapsed onto the bounds


def test_normal_defaults_to_the_middle_and_a_quarter_width():
    x = draws(Param("m", "body_mass[torso]", (0.0, 4.0), mode="add", dist="normal"))
    assert abs(x.mean() - 2.0) < 0.02
    assert 0.8 < x.std() < 1.0  # 1.0 before truncation at +-2 std


def test_point_range_always_returns_the_point():
    assert set(draws(Param("m", "body_mass[torso]", (1.3, 1.3)), n=50)) == {1.3}


def test_same_generator_seed_gives_same_samples():
    p = Param("m", "body_mass[torso]", (0.5, 1.5))
    assert np.array_equal(draws(p, 100, seed=3), draws(p, 100, seed=3))
    assert not np.array_equal(draws(p, 100, seed=3), draws(p, 100, seed=4))


def test_box_entropy_matches_hand_computed_values():
    uniform = BoxDistribution(ParamSpace([Param("a", "body_mass[torso]", (0.5, 2.5))]))
    assert uniform.entropy() == pytest.approx(math.log(2.0))
    # log x ~ U(0, 1) on [1, e]: H = log(log(e / 1)) + E[log x] = 0 + 0.5
    log_uniform = BoxDistribution(ParamSpace([Param("b", "dof_damping[*]", (1.0, math.e), dist="loguniform")]))
    assert log_uniform.entropy() == pytest.approx(0.5)
    both = BoxDistribution(ParamSpace([*uniform.space, *log_uniform.space]))
    assert both.entropy() == pytest.approx(math.log(2.0) + 0.5)


# ------------------------------------------------------------------ conversions
def test_sample_is_a_vector_inside_the_box():
    s = space()
    v = BoxDistribution(s).sample(np.random.default_rng(0))
    assert v.shape == (len(s),)
    assert np.all((v >= s.low) & (v <= s.high))


def test_normalize_and_from_normalized_round_trip():
    s = space()
    rng = np.random.default_rng(1)
    values = np.stack([BoxDistribution(s).sample(rng) for _ in range(50)])
    unit = s.normalize(values)
    assert unit.shape == values.shape
    live = [0, 1, 2]  # "bias" is a single point and normalizes to 0.5
    assert np.all((unit[:, live] >= 0) & (unit[:, live] <= 1))
    assert np.allclose(unit[:, 3], 0.5)
    assert np.allclose(s.from_normalized(unit)[:, live], values[:, live])


def test_normalize_maps_bounds_to_0_and_1_and_is_log_scaled_for_loguniform():
    s = space()
    assert np.allclose(s.normalize(s.low)[:3], 0.0)
    assert np.allclose(s.normalize(s.high)[:3], 1.0)
    geometric_mid = math.sqrt(0.5 * 2.0)
    assert s.normalize([1.0, geometric_mid, -9.5, 0.0]) == pytest.approx([0.5, 0.5, 0.5, 0.5])


def test_dict_vector_round_trip():
    s = space()
    values = {"torso_mass": 1.1, "damping": 0.7, "gravity": -9.0, "bias": 0.0}
    vector = s.to_vector(values)
    assert vector.tolist() == [1.1, 0.7, -9.0, 0.0]
    assert s.to_dict(vector) == values


def test_to_vector_fills_missing_names_as_asked():
    s = space()
    assert s.to_vector({}, fill="identity").tolist() == [1.0, 1.0, -9.5, 0.0]  # abs has no identity: mid
    assert s.to_vector({"torso_mass": 1.2}, fill="mid").tolist() == [1.2, 1.25, -9.5, 0.0]
    with pytest.raises(KeyError, match="damping"):
        s.to_vector({"torso_mass": 1.2})
    with pytest.raises(KeyError, match="no_such"):
        s.to_vector({"no_such": 1.0}, fill="mid")
    with pytest.raises(ValueError, match="4 values"):
        s.to_dict([1.0, 2.0])


def test_space_is_an_ordered_iterable_of_params():
    s = space()
    assert s.names == ("torso_mass", "damping", "gravity", "bias")
    assert [p.name for p in s] == list(s.names) and len(s) == 4
    assert s["damping"].dist == "loguniform" and s.index("gravity") == 2
    assert s.select("obs").names == ("bias",)
    assert s.subset(["gravity", "torso_mass"]).names == ("torso_mass", "gravity")
    with pytest.raises(KeyError, match="known: torso_mass"):
        s["no_such"]
    with pytest.raises(SpecError, match="duplicate"):
        ParamSpace([Param("a", "body_mass[torso]", (1, 2)), Param("a", "body_mass[foot]", (1, 2))])


def test_target_parsing():
    t = Target.parse("geom_friction[*,0]")
    assert (t.field, t.element, t.column, t.kind) == ("geom_friction", "*", 0, "model")
    t = Target.parse("opt.gravity[2]")
    assert (t.field, t.element, t.column) == ("opt.gravity", "2", None)
    assert Target.parse("action.delay").kind == "action" and Target.parse("obs.bias[0|2]").kind == "obs"
    for bad in ("body_mass[", "body_mass[torso,x]", "body_mass[a,1,2]", "3mass"):
        with pytest.raises(SpecError):
            Target.parse(bad)


# ------------------------------------------------------------------ state
@pytest.mark.parametrize("dist", [BoxDistribution(space()), Fixed({"torso_mass": 1.6, "bias": 0.1})])
def test_distributions_pickle_and_state_dict_round_trip(dist):
    for copy in (pickle.loads(pickle.dumps(dist)), distribution_from_state(json.loads(json.dumps(dist.state_dict())))):
        assert copy == dist
        assert copy.names == dist.names
        assert np.array_equal(copy.sample(np.random.default_rng(7)), dist.sample(np.random.default_rng(7)))


def test_state_dict_keeps_normal_mean_and_std():
    d = BoxDistribution(ParamSpace([Param("g", "opt.gravity[2]", (-12, -8), mode="abs", dist="normal", mean=-9, std=0.3)]))
    p = distribution_from_state(d.state_dict()).space["g"]
    assert (p.mean, p.std, p.mode, p.dist, p.range) == (-9, 0.3, "abs", "normal", (-12.0, -8.0))


def test_subset_and_with_bounds():
    d = BoxDistribution(space())
    assert d.subset(["bias", "damping", "not_here"]).names == ("damping", "bias")
    moved = d.with_bounds(np.array([0.5, 0.1, -20, 0]), np.array([1.5, 5.0, -1, 0]))
    assert moved.space["torso_mass"].range == (0.5, 1.5) and moved.space["damping"].dist == "loguniform"
    assert d.space["torso_mass"].range == (0.7, 1.3)  # the original is a value, untouched
    assert Fixed({"a": 1.0, "b": 2.0}).subset(["b"]).sample(np.random.default_rng(0)).tolist() == [2.0]
