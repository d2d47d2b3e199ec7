"""Checkpoints move between rlsim2real's RecurrentPPO and plain sb3-contrib, both ways."""

import inspect
import json
import subprocess
import sys

import numpy as np
import sb3_contrib
import torch as th

from rlsim2real.agents import MlpLstmPolicy, RecurrentPPO

_OBS = np.random.default_rng(1).normal(size=(4, 2, 3)).astype(np.float32)  # (steps, envs, Pendulum obs)


def _predictions(model, obs):
    """Deterministic actions and the final actor LSTM states over a short sequence, from an episode start."""
    state, starts, actions = None, np.ones(obs.shape[1], dtype=bool), []
    for step_obs in obs:
        action, state = model.predict(step_obs, state=state, episode_start=starts, deterministic=True)
        actions.append(action)
        starts = np.zeros_like(starts)
    return np.stack(actions), np.stack(state)


# Loads each checkpoint with plain sb3-contrib where rlsim2real cannot be imported, saves its
# predictions and weights, and saves the model again as sb3-contrib writes it.
_PLAIN_SB3_CONTRIB = """
import importlib.abc, json, sys, warnings


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "rlsim2real":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)")


sys.meta_path.insert(0, Hide())
import numpy as np
import torch as th
from sb3_contrib import RecurrentPPO

# _predictions
report = {}
obs = np.load(sys.argv[1])
for name in sys.argv[2:]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = RecurrentPPO.load(name + ".zip", device="cpu")
    actions, states = _predictions(model, obs)
    np.savez(name + "_plain.npz", actions=actions, states=states)
    th.save(model.policy.state_dict(), name + "_plain.pt")
    model.save(name + "_resaved.zip")
    report[name] = dict(policy=type(model.policy).__module__ + "." + type(model.policy).__name__,
                        warnings=[str(w.message) for w in caught if "deserializ" in str(w.message)])
report["rlsim2real_imported"] = any(m.split(".")[0] == "rlsim2real" for m in sys.modules)
print(json.dumps(report))
"""


def _load_in_plain_sb3_contrib(tmp_path, names):
    np.save(tmp_path / "obs.npy", _OBS)
    code = _PLAIN_SB3_CONTRIB.replace("# _predictions", inspect.getsource(_predictions))
    done = subprocess.run([sys.executable, "-c", code, "obs.npy", *names], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _model(dann):
    model = RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu",
                         policy_kwargs=dict(lstm_hidden_size=16), dann=dann)
    if dann:
        model.set_target_observations(np.random.default_rng(0).normal(0.5, 1.0, size=(64, 3)).astype(np.float32))
    return model.learn(64)


def _assert_same_predictions(model, actions, states):
    ours = _predictions(model, _OBS)
    assert np.array_equal(ours[0], actions) and np.array_equal(ours[1], states)


def test_checkpoints_load_in_plain_sb3_contrib_and_come_back_fast(tmp_path):
    models = {"plain": _model(None), "dann": _model(dict(enabled=True, weight=0.1))}
    for name, model in models.items():
        model.save(tmp_path / f"{name}.zip")
    report = _load_in_plain_sb3_contrib(tmp_path, list(models))
    assert not report.pop("rlsim2real_imported")
    for name, model in models.items():
        assert report[name] == dict(policy="sb3_contrib.common.recurrent.policies.RecurrentActorCriticPolicy", warnings=[])
        plain = np.load(tmp_path / f"{name}_plain.npz")
        _assert_same_predictions(model, plain["actions"], plain["states"])
        weights = th.load(tmp_path / f"{name}_plain.pt", weights_only=True)
        assert weights.keys() == model.policy.state_dict().keys()
        assert all(th.equal(weights[k], v) for k, v in model.policy.state_dict().items())
        # And back: the file sb3-contrib wrote loads here as the fast policy, DANN included.
        back = RecurrentPPO.load(tmp_path / f"{name}_resaved.zip", device="cpu")
        assert type(back.policy) is MlpLstmPolicy and back.policy.optimizer.param_groups[0]["fused"] is True
        _assert_same_predictions(back, plain["actions"], plain["states"])
        assert back.dann_enabled == model.dann_enabled == (name == "dann")
        if back.dann_enabled:
            assert back.dann_config == model.dann_config
            assert all(th.equal(p, q) for p, q in zip(back.discriminator.parameters(), model.discriminator.parameters()))
            saved, restored = model.dann_optimizer.state_dict()["state"], back.dann_optimizer.state_dict()["state"]
            assert saved.keys() == restored.keys() and all(th.equal(saved[k]["exp_avg"], restored[k]["exp_avg"]) for k in saved)


def test_a_stock_checkpoint_loads_as_the_fast_policy(tmp_path):
    stock = sb3_contrib.RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", n_steps=32, batch_size=32, n_epochs=2, seed=0,
                                     device="cpu", policy_kwargs=dict(lstm_hidden_size=16)).learn(64)
    stock.save(tmp_path / "stock.zip")
    loaded = RecurrentPPO.load(tmp_path / "stock.zip", device="cpu")
    assert type(loaded.policy) is MlpLstmPolicy and loaded.policy_class is MlpLstmPolicy
    groups = loaded.policy.optimizer.param_groups
    assert groups[0]["fused"] is True and groups[0]["eps"] == 1e-5
    assert loaded.policy.optimizer.state_dict()["state"][0]["step"] == stock.policy.optimizer.state_dict()["state"][0]["step"]
    _assert_same_predictions(loaded, *_predictions(stock, _OBS))
    # sb3-contrib's own classes, given by class, run fast too.
    by_class = RecurrentPPO(sb3_contrib.common.recurrent.policies.RecurrentActorCriticPolicy, "Pendulum-v1", device="cpu")
    assert type(by_class.policy) is MlpLstmPolicy


def test_older_checkpoints_with_the_discriminator_in_the_policy_still_load():
    model = _model(dict(enabled=True))
    params = model.get_parameters()  # as files saved before DANN left the policy held it
    params["policy"] = {**params["policy"], **{f"discriminator.{k}": v for k, v in model.discriminator.state_dict().items()}}
    params["dann_optimizer"] = model.dann_optimizer.state_dict()
    fresh = RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", seed=1, device="cpu", policy_kwargs=dict(lstm_hidden_size=16),
                         dann=dict(enabled=True))
    fresh.set_parameters(params)
    _assert_same_predictions(fresh, *_predictions(model, _OBS))
    assert all(th.equal(p, q) for p, q in zip(fresh.discriminator.parameters(), model.discriminator.parameters()))
    assert fresh.dann_optimizer.state_dict()["state"].keys() == model.dann_optimizer.state_dict()["state"].keys()
