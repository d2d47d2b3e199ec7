"""The fast recurrent PPO computes what sb3-contrib computes, learns, saves and runs DANN."""

import copy
import threading

import gymnasium as gym
import numpy as np
import pytest
import sb3_contrib
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.logger import configure
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from rlsim2real.agents import FastRecurrentRolloutBuffer, RecurrentPPO, segments
from rlsim2real.agents import ppo as ppo_module
from rlsim2real.agents.policies import _run_sequence, diag_gaussian_log_prob_entropy

th.set_num_threads(1)



class _TinyEncoder(BaseFeaturesExtractor):
    """A features extractor with parameters, so gradients flow through the LSTM inputs."""

    def __init__(self, observation_space: spaces.Box) -> None:
        super().__init__(observation_space, 6)
        self.net = th.nn.Sequential(th.nn.Flatten(), th.nn.Linear(int(np.prod(observation_space.shape)), 6), th.nn.Tanh())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


POLICY_SETTINGS = {
    "separate_lstms": dict(lstm_hidden_size=16),
    "shared_lstm": dict(lstm_hidden_size=16, shared_lstm=True, enable_critic_lstm=False),
    "critic_mlp": dict(lstm_hidden_size=16, enable_critic_lstm=False),
    "two_layers": dict(lstm_hidden_size=16, n_lstm_layers=2),
    "trainable_encoders": dict(lstm_hidden_size=16, features_extractor_class=_TinyEncoder, share_features_extractor=False),
}
N_STEPS, N_ENVS = 40, 3


def _pair(env_id: str, policy_kwargs: dict, **kwargs):
    """Our agent and sb3-contrib's with identical weights."""
    ours = RecurrentPPO("MlpLstmPolicy", env_id, policy_kwargs=policy_kwargs, seed=0, device="cpu", **kwargs)
    ref = sb3_contrib.RecurrentPPO("MlpLstmPolicy", env_id, policy_kwargs=policy_kwargs, seed=0, device="cpu", **kwargs)
    ref.policy.load_state_dict(ours.policy.state_dict())
    return ours, ref


def _fill(buffers, obs_dim: int, act_dim: int, n_layers: int, hidden: int, seed: int = 0) -> None:
    """Same random rollout (episode starts at random steps) into several buffers."""
    rng = np.random.default_rng(seed)
    for buf in buffers:
        buf.reset()
    for _ in range(N_STEPS):
        step = dict(
            obs=rng.normal(size=(N_ENVS, obs_dim)).astype(np.float32),
            action=rng.normal(size=(N_ENVS, act_dim)).astype(np.float32),
            reward=rng.normal(size=N_ENVS).astype(np.float32),
            episode_start=(rng.random(N_ENVS) < 0.15).astype(np.float32),
            value=th.as_tensor(rng.normal(size=(N_ENVS, 1)), dtype=th.float32),
            log_prob=th.as_tensor(rng.normal(size=N_ENVS), dtype=th.float32),
        )
        states = [th.as_tensor(rng.normal(size=(n_layers, N_ENVS, hidden)), dtype=th.float32) for _ in range(4)]
        for buf in buffers:
            buf.add(*step.values(), lstm_states=RNNStates((states[0], states[1]), (states[2], states[3])))
    for buf in buffers:
        buf.compute_returns_and_advantage(th.zeros(N_ENVS, 1), np.zeros(N_ENVS))


def _buffers(space_obs, space_act, n_layers, hidden):
    shape = (N_STEPS, n_layers, N_ENVS, hidden)
    fast = FastRecurrentRolloutBuffer(N_STEPS, space_obs, space_act, shape, "cpu", n_envs=N_ENVS)
    ref = RecurrentRolloutBuffer(N_STEPS, space_obs, space_act, shape, "cpu", n_envs=N_ENVS)
    _fill([fast, ref], space_obs.shape[0], space_act.shape[0], n_layers, hidden)
    return fast, ref


def test_fast_buffer_yields_sb3_contrib_samples():
    fast, ref = _buffers(spaces.Box(-1, 1, (3,)), spaces.Box(-1, 1, (2,)), 1, 8)
    for batch_size in (17, 64, None):
        np.random.seed(1)
        ours = list(fast.get(batch_size))
        np.random.seed(1)
        theirs = list(ref.get(batch_size))
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            for field in a._fields:
                x, y = getattr(a, field), getattr(b, field)
                if field == "lstm_states":
                    for p, q in zip((*x.pi, *x.vf), (*y.pi, *y.vf)):
                        assert th.equal(p, q)
                else:
                    assert x.shape == y.shape and th.equal(x, y.to(x.dtype)), field


def test_sequence_batches_hold_the_real_rows_of_sb3_contrib_minibatches():
    fast, ref = _buffers(spaces.Box(-1, 1, (3,)), spaces.Box(-1, 1, (2,)), 2, 8)
    for batch_size in (17, 64, None):
        np.random.seed(1)
        ours = list(fast.get_sequences(batch_size))
        np.random.seed(1)
        theirs = list(ref.get(batch_size))
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            mask = b.mask > 0
            for field in ("observations", "actions", "old_values", "old_log_prob", "advantages", "returns"):
                assert th.equal(getattr(a, field), getattr(b, field)[mask].to(getattr(a, field).dtype)), field
            n_seq = b.lstm_states.pi[0].shape[1]
            lengths = mask.reshape(n_seq, -1).sum(1)
            order = a.plan.order
            assert a.plan.n_rows == int(mask.sum()) and th.equal(lengths[order], lengths[order].sort(descending=True).values)
            # The LSTMs start from sb3-contrib's states, zeroed where a sequence starts an episode.
            keep = 1.0 - b.episode_starts.reshape(n_seq, -1)[:, 0]
            for p, q in zip((*a.lstm_states.pi, *a.lstm_states.vf), (*b.lstm_states.pi, *b.lstm_states.vf)):
                assert th.equal(p, (q * keep[None, :, None])[:, order])


def test_closed_form_gaussian_matches_sb3_distribution():
    th.manual_seed(0)
    mean = th.randn(7, 3, requires_grad=True)
    log_std = th.randn(3, requires_grad=True)
    actions = th.randn(7, 3)
    dist = DiagGaussianDistribution(3).proba_distribution(mean, log_std)
    expected = (dist.log_prob(actions), dist.entropy())
    got = diag_gaussian_log_prob_entropy(mean, log_std, actions)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and th.allclose(g, e, atol=1e-6)
    weights = th.randn(7)
    loss = lambda lp, ent: (weights * lp).sum() - 0.3 * ent.mean()  # noqa: E731
    for g, e in zip(th.autograd.grad(loss(*got), (mean, log_std)), th.autograd.grad(loss(*expected), (mean, log_std))):
        assert th.allclose(g, e, atol=1e-5)


def test_early_stopping_on_kl_matches_sb3_contrib():
    kwargs = dict(n_steps=64, batch_size=16, n_epochs=3, target_kl=1e-7, seed=0, device="cpu")
    ours = RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", **kwargs).learn(2 * 64)
    ref = sb3_contrib.RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", **kwargs).learn(2 * 64)
    assert ours._n_updates == ref._n_updates < 2 * 3
    theirs = dict(ref.policy.named_parameters())
    for name, param in ours.policy.named_parameters():
        assert th.allclose(param, theirs[name], atol=1e-5, rtol=0), name


def _ppo_loss(values, log_prob, entropy, batch):
    mask = batch.mask > 0
    ratio = th.exp(log_prob - batch.old_log_prob)
    adv = batch.advantages
    pg = -th.min(adv * ratio, adv * th.clamp(ratio, 0.8, 1.2))[mask].mean()
    return pg + 0.5 * ((batch.returns - values.flatten()) ** 2)[mask].mean() - 0.01 * entropy[mask].mean()


@pytest.mark.parametrize("masked", [False, True], ids=["padded", "segmented"])
@pytest.mark.parametrize("setting", sorted(POLICY_SETTINGS))
def test_fast_sequence_path_matches_reference(setting, masked, monkeypatch):
    if masked:  # free LSTM calls: cut at every distinct length, the most segments possible
        monkeypatch.setattr(segments, "_CALL_COST", 0.0)
    ours, ref = _pair("Pendulum-v1", POLICY_SETTINGS[setting])
    n_layers = ours.policy.lstm_actor.num_layers
    fast, _ = _buffers(ours.observation_space, ours.action_space, n_layers, 16)
    np.random.seed(0)
    batches = list(fast.get(48))
    assert any(b.episode_starts.sum() > 0 and len(b.episode_starts) > len(b.lstm_states.pi[0][0]) for b in batches)
    for batch in batches:
        outs = []
        mask = batch.mask > 0
        for policy in (ours.policy, ref.policy):
            policy.zero_grad()
            # sb3-contrib's own static method: the per-step loop when a minibatch has a start.
            if policy is ref.policy:
                values, log_prob, entropy = sb3_contrib.common.recurrent.policies.RecurrentActorCriticPolicy.evaluate_actions(
                    policy, batch.observations, batch.actions, batch.lstm_states, batch.episode_starts
                )
                loss = _ppo_loss(values, log_prob, entropy, batch)
                if masked:
                    values, log_prob, entropy = values[mask], log_prob[mask], entropy[mask]
            elif masked:  # results for real rows only
                values, log_prob, entropy, _ = policy.evaluate_actions_with_features(
                    batch.observations, batch.actions, batch.lstm_states, batch.episode_starts, mask
                )
                compact = batch._replace(mask=th.ones(int(mask.sum())), old_log_prob=batch.old_log_prob[mask],
                                         advantages=batch.advantages[mask], returns=batch.returns[mask])
                loss = _ppo_loss(values, log_prob, entropy, compact)
            else:
                values, log_prob, entropy, _ = policy.evaluate_actions_with_features(
                    batch.observations, batch.actions, batch.lstm_states, batch.episode_starts
                )
                loss = _ppo_loss(values, log_prob, entropy, batch)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
            outs.append((values, log_prob, entropy, grads))
        (v1, l1, e1, g1), (v2, l2, e2, g2) = outs
        assert th.allclose(v1, v2, atol=1e-5) and th.allclose(l1, l2, atol=1e-5) and th.allclose(e1, e2, atol=1e-6)
        assert g1.keys() == g2.keys() and len(g1) > 0
        for name in g1:
            assert th.allclose(g1[name], g2[name], atol=1e-5, rtol=1e-4), name


def test_run_sequence_falls_back_when_a_start_is_inside_a_sequence():
    th.manual_seed(0)
    lstm = th.nn.LSTM(3, 5)
    feats, starts = th.randn(2 * 6, 3), th.zeros(12)
    starts[3] = starts[6] = 1.0  # inside the first sequence and at the start of the second
    states = (th.randn(1, 2, 5), th.randn(1, 2, 5))
    expected = sb3_contrib.common.recurrent.policies.RecurrentActorCriticPolicy._process_sequence(feats, states, starts, lstm)
    got = _run_sequence(feats, states, starts, lstm)
    assert th.allclose(got[0], expected[0], atol=1e-6)


@pytest.mark.parametrize("call_cost", [0.0, 1e9], ids=["most_segments", "one_segment"])
def test_segments_compute_one_lstm_call_on_real_steps(call_cost, monkeypatch):
    monkeypatch.setattr(segments, "_CALL_COST", call_cost)
    th.manual_seed(0)
    lstm = th.nn.LSTM(3, 5, num_layers=2)
    lengths = np.array([2, 7, 1, 7, 4])
    n_seq, max_len = len(lengths), lengths.max()
    assert len(segments.plan_segments(lengths)) == (4 if call_cost == 0 else 1)
    feats = th.randn(n_seq * max_len, 3, requires_grad=True)
    states = (th.randn(2, n_seq, 5), th.randn(2, n_seq, 5))
    mask = (th.arange(max_len)[None, :] < th.as_tensor(lengths)[:, None]).flatten()
    expected = lstm(feats.reshape(n_seq, max_len, 3).swapaxes(0, 1), states)[0].swapaxes(0, 1).reshape(-1, 5)
    got = segments.run_segments(feats, states, lstm, lengths)
    assert th.allclose(got[mask], expected[mask], atol=1e-6)
    inputs = [feats, *lstm.parameters()]
    for g, e in zip(th.autograd.grad(got[mask].square().sum(), inputs), th.autograd.grad(expected[mask].square().sum(), inputs)):
        assert th.allclose(g, e, atol=1e-5)


@pytest.mark.parametrize("setting", sorted(POLICY_SETTINGS))
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_rollout_step_matches_forward(env_id, setting):
    ours, _ = _pair(env_id, POLICY_SETTINGS[setting])
    policy = ours.policy
    n_layers = policy.lstm_actor.num_layers
    obs = th.randn(4, *ours.observation_space.shape)
    states = RNNStates(*[(th.randn(n_layers, 4, 16), th.randn(n_layers, 4, 16)) for _ in range(2)])
    starts = th.tensor([0.0, 1.0, 0.0, 1.0])
    with th.no_grad():
        th.manual_seed(3)
        fast = policy.rollout_step(obs, states, starts)
        th.manual_seed(3)
        ref = sb3_contrib.common.recurrent.policies.RecurrentActorCriticPolicy.forward(policy, obs, states, starts)
    assert th.allclose(fast.actions.float(), ref[0].float(), atol=1e-5)
    assert th.allclose(fast.values, ref[1], atol=1e-5) and th.allclose(fast.log_probs, ref[2], atol=1e-5)
    for a, b in zip((*fast.lstm_states.pi, *fast.lstm_states.vf), (*ref[3].pi, *ref[3].vf)):
        assert th.allclose(a, b, atol=1e-5)


def _collect(model):
    model._setup_learn(model.n_steps * model.n_envs, None)
    callback = CallbackList([])
    callback.init_callback(model)
    th.manual_seed(0)  # both agents draw the same action noise
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    model.set_logger(configure(None, [""]))


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])  # CartPole: many short episodes
def test_rollout_and_one_update_match_sb3_contrib(env_id, monkeypatch):
    monkeypatch.setattr(segments, "_CALL_COST", 0.0)  # exercise the segmented LSTM path
    # SGD keeps the update linear in the gradient (Adam's first step is ~lr * sign(g), which
    # turns float noise on near-zero gradients into lr-sized differences).
    policy_kwargs = dict(lstm_hidden_size=16, optimizer_class=th.optim.SGD)
    ours, ref = _pair(env_id, policy_kwargs, n_steps=64, batch_size=32, n_epochs=2, learning_rate=1e-2)
    _collect(ours)
    _collect(ref)
    assert np.allclose(ours.rollout_buffer.actions, ref.rollout_buffer.actions, atol=1e-6)
    assert np.allclose(ours.rollout_buffer.log_probs, ref.rollout_buffer.log_probs, atol=1e-5)
    assert np.allclose(ours.rollout_buffer.hidden_states_vf, ref.rollout_buffer.hidden_states_vf, atol=1e-5)
    np.random.seed(0)
    ours.train()
    np.random.seed(0)
    ref.train()
    theirs = dict(ref.policy.named_parameters())
    for name, param in ours.policy.named_parameters():
        assert th.allclose(param, theirs[name], atol=1e-6), name


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_parameters_after_several_updates_match_sb3_contrib_with_its_defaults(env_id):
    # No policy_kwargs: the optimizer's defaults too (Adam with SB3's eps=1e-5; fused Adam on top).
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu")
    ours = RecurrentPPO("MlpLstmPolicy", env_id, **kwargs).learn(4 * 64)
    ref = sb3_contrib.RecurrentPPO("MlpLstmPolicy", env_id, **kwargs).learn(4 * 64)
    assert ours._n_updates == ref._n_updates == 8  # 4 rollouts x 2 epochs x 2 minibatches = 16 Adam steps
    kernels = ("fused", "foreach")
    settings = lambda m: [{k: v for k, v in g.items() if k not in (*kernels, "params")} for g in m.policy.optimizer.param_groups]  # noqa: E731
    assert settings(ours) == settings(ref) and ours.policy.optimizer.param_groups[0]["eps"] == 1e-5
    theirs = dict(ref.policy.named_parameters())
    for name, param in ours.policy.named_parameters():
        assert th.allclose(param, theirs[name], atol=1e-5, rtol=0), name


def _learned(parallel: bool, env, record_threads: bool = False, **kwargs):
    model = RecurrentPPO(kwargs.pop("policy", "MlpLstmPolicy"), env, seed=0, device="cpu", parallel_update=parallel, **kwargs)
    threads: set[str] = set()
    if record_threads:
        model.policy.lstm_critic.register_forward_hook(lambda *_: threads.add(threading.current_thread().name))
    if model.dann_enabled:
        model.set_target_observations(np.random.default_rng(1).integers(0, 255, size=(20, *model.observation_space.shape)).astype(np.uint8))
    model.learn(kwargs["n_steps"] * 3)
    return model, threads


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_parallel_update_gives_the_serial_update_bit_for_bit(env_id):
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(lstm_hidden_size=16))
    serial, serial_threads = _learned(False, env_id, record_threads=True, **kwargs)
    parallel, parallel_threads = _learned(True, env_id, record_threads=True, **kwargs)
    # The critic's training passes ran on the second thread (rollouts stay on this one).
    assert any(name.startswith("rlsim2real-critic") for name in parallel_threads)
    assert not any(name.startswith("rlsim2real-critic") for name in serial_threads)
    theirs = dict(serial.policy.named_parameters())
    for name, param in parallel.policy.named_parameters():
        assert th.equal(param, theirs[name]), name
    for key in ("train/loss", "train/value_loss", "train/policy_gradient_loss", "train/approx_kl"):
        assert parallel.logger.name_to_value[key] == serial.logger.name_to_value[key], key


@pytest.mark.parametrize("share", [False, True])
def test_parallel_update_through_trainable_encoders_gives_the_serial_update_bit_for_bit(share):
    # Each branch starts from its own copy of the features; the encoder then gets the sum of
    # the two branches' gradients (a + b: the same in either order).
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=2,
                  policy_kwargs=dict(lstm_hidden_size=16, features_extractor_class=_TinyEncoder, share_features_extractor=share))
    serial, _ = _learned(False, "Pendulum-v1", **kwargs)
    parallel, _ = _learned(True, "Pendulum-v1", **kwargs)
    theirs = dict(serial.policy.named_parameters())
    for name, param in parallel.policy.named_parameters():
        assert th.equal(param, theirs[name]), name


def test_parallel_update_with_a_shared_cnn_and_dann_matches_the_serial_update():
    # The CNN is trained by both branches and by DANN: its gradient is the same sum, added in
    # another order, so the parameters agree to float rounding.
    kwargs = dict(policy="CnnLstmPolicy", n_steps=16, batch_size=16, n_epochs=2, dann=dict(enabled=True),
                  policy_kwargs=dict(lstm_hidden_size=16, features_extractor_kwargs=dict(features_dim=32), optimizer_class=th.optim.SGD))
    serial, _ = _learned(False, _TinyImageEnv(), **kwargs)
    parallel, _ = _learned(True, _TinyImageEnv(), **kwargs)
    theirs = dict(serial.policy.named_parameters())
    for name, param in parallel.policy.named_parameters():
        assert th.allclose(param, theirs[name], atol=1e-6, rtol=1e-5), name
    untrained = RecurrentPPO("CnnLstmPolicy", _TinyImageEnv(), seed=0, device="cpu", policy_kwargs=kwargs["policy_kwargs"])
    before = dict(untrained.policy.features_extractor.named_parameters())
    assert any(not th.equal(p, before[n]) for n, p in parallel.policy.features_extractor.named_parameters())


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_a_trained_agent_can_be_deep_copied(env_id):
    # The update's action distribution (Categorical here) used to stay on the policy holding
    # tensors of the last step's graph, which copy.deepcopy refuses.
    model = RecurrentPPO("MlpLstmPolicy", env_id, n_steps=32, batch_size=16, n_epochs=2, seed=0, device="cpu").learn(64)
    twin = copy.deepcopy(model)
    obs = model.get_env().reset()
    assert np.array_equal(model.predict(obs, deterministic=True)[0], twin.predict(obs, deterministic=True)[0])
    original = dict(model.policy.named_parameters())
    for name, param in twin.policy.named_parameters():
        assert th.equal(param, original[name]) and param is not original[name]
    twin.learn(32, reset_num_timesteps=False)  # the copy trains on, on its own parameters
    assert any(not th.equal(param, original[name]) for name, param in twin.policy.named_parameters())


def test_the_critic_thread_uses_the_callers_torch_thread_count(monkeypatch):
    # A new thread's OpenMP team (MKL's and oneDNN's kernels) spans all the cores unless it is
    # told otherwise; the critic's kernels would then spread over the core the actor's use.
    calls: list[tuple[str, int]] = []
    set_num_threads = th.set_num_threads
    monkeypatch.setattr(th, "set_num_threads", lambda n: (calls.append((threading.current_thread().name, n)), set_num_threads(n)))
    _learned(True, "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, policy_kwargs=dict(lstm_hidden_size=8))
    assert [n for name, n in calls if name.startswith("rlsim2real-critic")] == [th.get_num_threads()]


def test_a_saved_model_with_the_critic_thread_loads_and_trains_on_its_own_thread(tmp_path):
    model, _ = _learned(True, "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, policy_kwargs=dict(lstm_hidden_size=8))
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", env=model.get_env(), device="cpu")
    assert loaded.parallel_update is True and "_update_pool" not in loaded.__dict__
    threads: set[str] = set()
    loaded.policy.lstm_critic.register_forward_hook(lambda *_: threads.add(threading.current_thread().name))
    loaded.learn(32, reset_num_timesteps=False)
    assert any(name.startswith("rlsim2real-critic") for name in threads)
    assert loaded._update_pool is not model._update_pool


def test_parallel_update_settings():
    kwargs = dict(n_steps=16, batch_size=16, seed=0, device="cpu", policy_kwargs=dict(lstm_hidden_size=8))
    with pytest.raises(ValueError, match="critic LSTM of its own"):
        RecurrentPPO("MlpLstmPolicy", "CartPole-v1", parallel_update=True,
                     **{**kwargs, "policy_kwargs": dict(lstm_hidden_size=8, enable_critic_lstm=False)})
    with pytest.raises(ValueError, match="True, False or None"):
        RecurrentPPO("MlpLstmPolicy", "CartPole-v1", parallel_update="yes", **kwargs)
    auto = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", **kwargs)
    assert auto._parallel_update_applies() == (ppo_module.usable_cpus() >= 2)  # this file runs torch on 1 thread
    th.set_num_threads(2)
    try:
        assert not auto._parallel_update_applies()  # intra-op threads already use the cores
    finally:
        th.set_num_threads(1)
    shared = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", **{**kwargs, "policy_kwargs": dict(lstm_hidden_size=8, shared_lstm=True, enable_critic_lstm=False)})
    assert not shared._parallel_update_applies()


class _EditingCallback(BaseCallback):
    """Edits every tensor the rollout hands over in place (inference tensors would raise)."""

    def _on_step(self) -> bool:
        states = self.locals["lstm_states"]
        tensors = [self.locals[name] for name in ("obs_tensor", "episode_starts", "values", "log_probs")]
        tensors += [*states.pi, *states.vf]
        for tensor in tensors:
            assert not tensor.is_inference()
            tensor.add_(0.0)
        self.locals["actions"] += 0
        self.edits = getattr(self, "edits", 0) + 1
        return True


def test_callbacks_get_tensors_they_can_edit():
    model = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu",
                        policy_kwargs=dict(lstm_hidden_size=8))
    callback = _EditingCallback()
    model.learn(32, callback=callback)
    assert callback.edits == 32
    assert not any(t.is_inference() for t in (*model._last_lstm_states.pi, *model._last_lstm_states.vf))


def _target(model, n=64, shift=0.5):
    return np.random.default_rng(0).normal(shift, 1.0, size=(n, *model.observation_space.shape)).astype(np.float32)


@pytest.mark.parametrize("dann", [None, dict(enabled=True, weight=0.1, mmd_weight=0.1, coral_weight=0.1)])
def test_short_learn_with_and_without_dann(dann):
    model = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=32, batch_size=16, n_epochs=2, seed=0, device="cpu",
                         policy_kwargs=dict(lstm_hidden_size=16), dann=dann)
    if dann:
        model.set_target_observations(_target(model))
    model.learn(64)
    logged = model.logger.name_to_value
    assert "train/value_loss" in logged
    dann_keys = {"dann/domain_loss", "dann/accuracy", "dann/heldout_accuracy", "dann/lambda", "dann/mmd_loss", "dann/coral_loss"}
    assert dann_keys <= logged.keys() if dann else not any(k.startswith("dann/") for k in logged)


def test_target_observation_validation():
    model = RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", n_steps=16, seed=0, device="cpu", dann=dict(enabled=True))
    with pytest.raises(ValueError, match="no target observations"):
        model.learn(16)
    for bad, match in [(np.zeros((0, 3)), "empty"), (np.zeros((5, 4)), "shape"), (np.full((5, 3), np.nan), "finite")]:
        with pytest.raises(ValueError, match=match):
            model.set_target_observations(bad)
    with pytest.raises(ValueError, match="unknown key"):
        RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", dann=dict(enabled=True, wieght=1.0))
    calls = []
    model.set_target_provider(lambda t: calls.append(t) or _target(model, 8))
    model.learn(16)
    assert calls and len(model._target) == 8


def test_target_provider_that_acts_leaves_the_update_in_training_mode():
    # The trainer's provider collects target episodes with the current policy, and SB3's
    # predict() puts the policy in eval mode; the PPO + DANN epochs after it must still run
    # in training mode (dropout / batch norm in a custom encoder would otherwise be off).
    model = RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", n_steps=16, batch_size=16, n_epochs=2, seed=0, device="cpu",
                         policy_kwargs=dict(lstm_hidden_size=8), dann=dict(enabled=True))

    def provider(num_timesteps):
        model.predict(np.zeros((1, 3), dtype=np.float32))
        return _target(model, 8)

    model.set_target_provider(provider)
    modes = []
    loss = model._dann.loss
    model._dann.loss = lambda source: modes.append(model.policy.training) or loss(source)
    model.learn(32)
    assert modes and all(modes)


def test_save_load_round_trip_restores_predictions_discriminator_and_schedule(tmp_path):
    model = RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", n_steps=32, batch_size=32, seed=0, device="cpu",
                         policy_kwargs=dict(lstm_hidden_size=16), dann=dict(enabled=True, schedule="linear", warmup=1.0))
    model.set_target_observations(_target(model))
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", env=gym.make("Pendulum-v1"), device="cpu")
    assert type(loaded) is RecurrentPPO and loaded.dann_enabled
    obs = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    a1, s1 = model.predict(obs, deterministic=True)
    a2, s2 = loaded.predict(obs, deterministic=True)
    assert np.array_equal(a1, a2) and np.array_equal(s1[0], s2[0])
    for (n1, p1), (n2, p2) in zip(model.discriminator.state_dict().items(), loaded.discriminator.state_dict().items()):
        assert n1 == n2 and th.equal(p1, p2)
    assert loaded.dann_optimizer.state_dict()["state"].keys() == model.dann_optimizer.state_dict()["state"].keys()
    assert loaded.dann_progress() == model.dann_progress() == pytest.approx(64 / 64)
    loaded.set_target_observations(_target(loaded))
    loaded.learn(32, reset_num_timesteps=False)
    assert loaded.logger.name_to_value["dann/lambda"] == 1.0


class _TinyImageEnv(gym.Env):
    """36x36 grayscale frames whose brightness encodes a hidden counter (cheap CNN smoke test)."""

    observation_space = spaces.Box(0, 255, (36, 36, 1), dtype=np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return np.full((36, 36, 1), (self.t * 20) % 255, dtype=np.uint8)

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), self.t >= 10, False, {}


def test_cnn_policy_with_dann_learns_a_few_steps():
    model = RecurrentPPO("CnnLstmPolicy", _TinyImageEnv(), n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu",
                         policy_kwargs=dict(lstm_hidden_size=16, features_extractor_kwargs=dict(features_dim=32)),
                         dann=dict(enabled=True))
    shape = model.observation_space.shape  # channel-first after SB3's VecTransposeImage
    model.set_target_observations(np.random.default_rng(0).integers(0, 255, size=(20, *shape)).astype(np.uint8))
    model.learn(32)
    assert "dann/domain_loss" in model.logger.name_to_value


@pytest.mark.slow
@pytest.mark.parametrize("dann", [False, True])
def test_learns_inverted_pendulum(dann):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    # The quickstart preset's settings (normalized observations and rewards, as every
    # experiment trains), without randomization.
    env = VecNormalize(make_vec_env("InvertedPendulum-v5", n_envs=4, seed=0))
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=256, batch_size=256, n_epochs=5, learning_rate=3e-4, seed=0,
                         device="cpu", policy_kwargs=dict(lstm_hidden_size=64, net_arch=dict(pi=[64], vf=[64])),
                         dann=dict(enabled=dann, weight=0.05))
    if dann:
        model.set_target_observations(np.random.default_rng(0).normal(0, 0.1, size=(1024, 4)).astype(np.float32))
    model.learn(80_000)
    test_env = VecNormalize(make_vec_env("InvertedPendulum-v5", n_envs=1, seed=1), training=False, norm_reward=False)
    test_env.obs_rms = env.obs_rms
    mean_return, _ = evaluate_policy(model, test_env, n_eval_episodes=5)
    # A random policy balances for about 5-40 steps; the ceiling is 1000.
    assert mean_return > 900


def test_image_batches_reach_the_cnn_channels_last_with_the_same_features():
    model = RecurrentPPO("CnnLstmPolicy", _TinyImageEnv(), n_steps=16, batch_size=16, seed=0, device="cpu",
                         policy_kwargs=dict(lstm_hidden_size=16, features_extractor_kwargs=dict(features_dim=32)))
    seen = []
    model.policy.features_extractor.cnn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    shape = model.observation_space.shape
    obs = th.as_tensor(np.random.default_rng(0).integers(0, 256, (5, *shape), dtype=np.uint8))
    with th.no_grad():
        features = model.policy.extract_features(obs)
        plain = model.policy.features_extractor(obs.float() / 255.0)
    assert seen[0].is_contiguous(memory_format=th.channels_last)
    th.testing.assert_close(features, plain, atol=1e-5, rtol=1e-5)
