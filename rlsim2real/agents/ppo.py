"""Recurrent PPO: sb3-contrib's algorithm with fast rollout/update paths and optional DANN."""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO as _SB3RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import MaybeCallback, TensorDict
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from rlsim2real.agents.buffers import FastRecurrentDictRolloutBuffer, FastRecurrentRolloutBuffer, SequenceBatch
from rlsim2real.agents.dann_config import DannConfig, TargetObservations
from rlsim2real.agents.dann_update import DannUpdater
from rlsim2real.agents.policies import (
    FAST_POLICIES,
    STOCK_POLICIES,
    CnnLstmPolicy,
    FastRecurrentPolicyMixin,
    MlpLstmPolicy,
    MultiInputLstmPolicy,
)

SelfRecurrentPPO = TypeVar("SelfRecurrentPPO", bound="RecurrentPPO")


class _StepTerms(NamedTuple):
    """One minibatch's losses (``loss`` is the total), ratio and KL; ``stop``: KL ended the update."""

    loss: th.Tensor
    policy_loss: th.Tensor
    entropy_loss: th.Tensor
    value_loss: th.Tensor
    ratio: th.Tensor
    approx_kl: th.Tensor
    stop: bool


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _branch_input(features: th.Tensor) -> th.Tensor:
    """A branch's own leaf of the features when they carry a graph (a trainable extractor)."""
    return features.detach().requires_grad_() if features.requires_grad else features


def _backward_through_features(*pairs: tuple[th.Tensor, th.Tensor]) -> None:
    """Send each branch leaf's gradient back through the features it was cut from."""
    grads: dict[int, tuple[th.Tensor, th.Tensor]] = {}
    for features, leaf in pairs:
        if leaf is features or leaf.grad is None:
            continue
        if id(features) in grads:  # a shared extractor: both branches' gradients, summed
            grads[id(features)] = (features, grads[id(features)][1] + leaf.grad)
        else:
            grads[id(features)] = (features, leaf.grad)
    if grads:
        th.autograd.backward([f for f, _ in grads.values()], [g for _, g in grads.values()])


class RecurrentPPO(_SB3RecurrentPPO):
    """Drop-in :class:`sb3_contrib.RecurrentPPO` with fast LSTM paths and an optional DANN encoder.

    Same constructor, defaults, checkpoint layout and results (up to float rounding) as
    sb3-contrib: its checkpoints load here (as the fast policy) and ours load in plain
    sb3-contrib (see :meth:`save`). The policy aliases resolve to :mod:`rlsim2real.agents.policies`
    (as do sb3-contrib's own policy classes, given by class or by a checkpoint): in the
    update the LSTMs run a few calls per minibatch (length-sorted segments that skip most
    padding) instead of one per time step, reading and returning only real rows, so the
    buffer never pads a minibatch and the heads and losses see only real rows; a diagonal
    Gaussian is evaluated in closed form; rollouts use a lean inference step; Adam runs
    fused.

    Args:
        *args: As for :class:`sb3_contrib.RecurrentPPO`.
        dann: DANN settings, a dict of :class:`DannConfig` fields (e.g.
            ``dict(enabled=True, weight=0.1, schedule="ganin", gamma=10)``), a bool, or None.
        parallel_update: Run the critic's forward and backward on a second thread while the
            actor's run on this one (the gradients are the same). None (default): when the
            policy has a critic LSTM of its own (sb3-contrib's default), runs on CPU with one
            torch thread, and the process may use two or more CPUs; about 1.6x faster
            updates in wall-clock time on two free cores, at the same CPU time. True: whenever
            the policy allows it; False: never.
        **kwargs: As for :class:`sb3_contrib.RecurrentPPO`.

    Example:
        >>> model = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=32, seed=0)
        >>> _ = model.learn(64)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpLstmPolicy": MlpLstmPolicy,
        "CnnLstmPolicy": CnnLstmPolicy,
        "MultiInputLstmPolicy": MultiInputLstmPolicy,
    }

    def __init__(
        self, *args: Any, dann: DannConfig | dict[str, Any] | bool | None = None, parallel_update: bool | None = None, **kwargs: Any
    ) -> None:
        if parallel_update not in (None, True, False):
            raise ValueError(f"parallel_update: expected True, False or None (automatic), got {parallel_update!r}")
        self.parallel_update = parallel_update
        self.dann_config = DannConfig.from_any(dann)
        self._dann_horizon: int | None = self.dann_config.schedule_timesteps
        self._target: TargetObservations | None = None
        self._target_provider: Callable[[int], np.ndarray | None] | None = None
        self.dann_optimizer: th.optim.Optimizer | None = None
        super().__init__(*args, **kwargs)

    # ----------------------------------------------------------------- setup
    def _setup_model(self) -> None:
        # sb3-contrib's policy classes (as checkpoints name them, see save) run as the fast ones.
        self.policy_class = FAST_POLICIES.get(self.policy_class, self.policy_class)
        # A checkpoint's DANN entries (plain data, see save), set by load before this call.
        if "dann" in self.__dict__:
            self.dann_config = DannConfig.from_any(self.__dict__.pop("dann"))
        dann_state = self.__dict__.pop("dann_state", None)
        super()._setup_model()
        fast_cls = FastRecurrentDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else FastRecurrentRolloutBuffer
        lstm = self.policy.lstm_actor
        self.rollout_buffer = fast_cls(
            self.n_steps,
            self.observation_space,
            self.action_space,
            (self.n_steps, lstm.num_layers, self.n_envs, lstm.hidden_size),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )
        self._dann = DannUpdater(self, self.dann_config) if self.dann_config.enabled else None
        if self.parallel_update and not (isinstance(self.policy, FastRecurrentPolicyMixin) and self.policy.branches_apart()):
            raise ValueError(
                "parallel_update=True needs a critic LSTM of its own (enable_critic_lstm=True, "
                "shared_lstm=False) and actor and critic heads that share no parameter"
            )
        self.dann_optimizer = self._dann.optimizer if self._dann else None
        if self._dann is not None and dann_state is not None:
            self._dann.load_state_dict(th.load(io.BytesIO(dann_state), map_location=self.device, weights_only=True))

    @property
    def dann_enabled(self) -> bool:
        """Whether the domain-adversarial loss is part of training."""
        return self._dann is not None

    @property
    def discriminator(self) -> th.nn.Module | None:
        """DANN's domain discriminator (None without DANN); not part of the policy."""
        return self._dann.discriminator if self._dann is not None else None

    # ------------------------------------------------------- target domain
    def set_target_observations(self, observations: np.ndarray) -> None:
        """Replace the unlabeled target-domain observations the discriminator trains against.

        Can be called at any time (e.g. by a trainer after collecting fresh "real" data).

        Args:
            observations: Shape (N, *obs_shape), finite, N >= 1; moved to ``self.device``.

        Raises:
            ValueError: If the array is empty, has the wrong shape or holds NaN/inf.
        """
        rng = np.random.default_rng(None if self.seed is None else self.seed + 7919)
        self._target = TargetObservations(observations, self.observation_space, self.device, self.dann_config.heldout_fraction, rng)

    def set_target_provider(self, provider: Callable[[int], np.ndarray | None] | None) -> None:
        """Register a hook called before every update with ``num_timesteps``.

        When it returns an array, that array replaces the target observations (validated
        as in :meth:`set_target_observations`); None keeps the current ones.

        Args:
            provider: The hook, or None to remove it.
        """
        self._target_provider = provider

    def dann_progress(self) -> float:
        """Progress in [0, 1] of the lambda schedule, from ``num_timesteps`` (resumes exactly)."""
        horizon = self._dann_horizon or 1
        return min(1.0, self.num_timesteps / horizon)

    # -------------------------------------------------------------- learn
    def learn(
        self: SelfRecurrentPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "RecurrentPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRecurrentPPO:
        """As :meth:`sb3_contrib.RecurrentPPO.learn`; with DANN, checks targets first.

        Raises:
            ValueError: If DANN is enabled and no target observations (nor provider) are set.
        """
        if self.dann_enabled:
            if self._target is None and self._target_provider is None:
                raise ValueError(
                    "DANN is enabled but no target observations are set: call "
                    "agent.set_target_observations(obs) (shape (N, *obs_shape)) before learn()"
                )
            if self._dann_horizon is None:
                self._dann_horizon = int(total_timesteps) + (0 if reset_num_timesteps else self.num_timesteps)
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)

    # ---------------------------------------------------------- rollouts
    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """Same contract and stored data as sb3-contrib's, with a cheaper per-step path."""
        if not isinstance(self.policy, FastRecurrentPolicyMixin) or not hasattr(rollout_buffer, "add_step"):
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        if self._last_obs is None:
            raise RuntimeError("No previous observation was provided")
        self.policy.set_training_mode(False)
        self.policy._rollout_kernel = None  # rebuilt from the current modules on first use
        rollout_buffer.reset()
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)
        callback.on_rollout_start()
        is_box = isinstance(self.action_space, spaces.Box)
        low, high = (self.action_space.low, self.action_space.high) if is_box else (None, None)
        lstm_states = self._last_lstm_states
        n_steps = 0
        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)
            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)
                episode_starts = th.as_tensor(self._last_episode_starts, dtype=th.float32, device=self.device)
                actions, values, log_probs, lstm_states = self.policy.rollout_step(
                    obs_tensor, lstm_states, episode_starts, bool(np.any(self._last_episode_starts))
                )
            actions = actions.cpu().numpy()
            clipped_actions = np.clip(actions, low, high) if is_box else actions
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            if dones.any():
                self._bootstrap_timeouts(rewards, dones, infos, lstm_states)
            rollout_buffer.add_step(
                self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs, self._last_lstm_states
            )
            self._last_obs = new_obs
            self._last_episode_starts = dones
            self._last_lstm_states = lstm_states
        with th.no_grad():
            episode_starts = th.as_tensor(dones, dtype=th.float32, device=self.device)
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device), lstm_states.vf, episode_starts)
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.on_rollout_end()
        return True

    def _bootstrap_timeouts(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict], lstm_states: RNNStates) -> None:
        """Add ``gamma * V(terminal_obs)`` to the reward of truncated episodes (SB3 issue #633)."""
        for idx in np.flatnonzero(dones):
            info = infos[idx]
            if info.get("terminal_observation") is None or not info.get("TimeLimit.truncated", False):
                continue
            terminal_obs = self.policy.obs_to_tensor(info["terminal_observation"])[0]
            with th.no_grad():
                state = (lstm_states.vf[0][:, idx : idx + 1, :].contiguous(), lstm_states.vf[1][:, idx : idx + 1, :].contiguous())
                no_start = th.zeros(1, dtype=th.float32, device=self.device)
                rewards[idx] += self.gamma * self.policy.predict_values(terminal_obs, state, no_start)[0].item()

    # -------------------------------------------------------------- update
    def train(self) -> None:
        """PPO update on the rollout buffer, as sb3-contrib's, plus the DANN terms when enabled."""
        if not isinstance(self.policy, FastRecurrentPolicyMixin) or not hasattr(self.rollout_buffer, "get_sequences"):
            return super().train()
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = self.clip_range_vf(self._current_progress_remaining) if self.clip_range_vf is not None else None
        if self._dann is not None:
            self._dann.begin_update()
        pool = self._branch_pool() if self._parallel_update_applies() else None
        stats: dict[str, list[th.Tensor]] = {"entropy": [], "pg": [], "value": [], "clip": []}
        continue_training = True
        approx_kl_divs: list[th.Tensor] = []
        discrete = isinstance(self.action_space, spaces.Discrete)
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for batch in self.rollout_buffer.get_sequences(self.batch_size):
                # Real rows only: the same elements, in the same order, as sb3-contrib's ``x[mask]``.
                actions = batch.actions.long().flatten() if discrete else batch.actions
                self.policy.optimizer.zero_grad(set_to_none=True)
                if self._dann is not None:
                    self._dann.optimizer.zero_grad(set_to_none=True)
                if pool is None:
                    step = self._serial_step(batch, actions, clip_range, clip_range_vf, epoch)
                else:
                    step = self._two_branch_step(batch, actions, clip_range, clip_range_vf, epoch, pool)
                loss = step.loss
                with th.no_grad():
                    stats["pg"].append(step.policy_loss.detach())
                    stats["clip"].append(th.mean((th.abs(step.ratio - 1) > clip_range).float()))
                    stats["value"].append(step.value_loss.detach())
                    stats["entropy"].append(step.entropy_loss.detach())
                    approx_kl_divs.append(step.approx_kl)
                if step.stop:
                    continue_training = False
                    break
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm, foreach=True)
                self.policy.optimizer.step()
                if self._dann is not None:
                    self._dann.step()
            self._n_updates += 1
            if not continue_training:
                break
        self._record_train_logs(stats, approx_kl_divs, loss, clip_range, clip_range_vf)
        if self._dann is not None:
            self._dann.end_update()

    def _serial_step(self, batch: SequenceBatch, actions: th.Tensor, clip_range: float, clip_range_vf: float | None, epoch: int) -> _StepTerms:
        """One minibatch's losses and, unless the KL stops training, their gradients."""
        values, log_prob, entropy, features = self.policy.evaluate_sequences(batch.observations, actions, batch.lstm_states, batch.plan)
        value_loss = self._value_loss(values.flatten(), batch, clip_range_vf)
        policy_loss, entropy_loss, ratio, approx_kl = self._policy_terms(log_prob, entropy, batch, clip_range)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        if self._dann is not None:
            loss = loss + self._dann.loss(features)
        stop = self._kl_stops(approx_kl, epoch)
        if not stop:
            loss.backward()
        return _StepTerms(loss, policy_loss, entropy_loss, value_loss, ratio, approx_kl, stop)

    def _two_branch_step(
        self, batch: SequenceBatch, actions: th.Tensor, clip_range: float, clip_range_vf: float | None, epoch: int, pool: ThreadPoolExecutor
    ) -> _StepTerms:
        """:meth:`_serial_step` with the critic's forward and backward on a second thread.

        Past the features extractor the actor and the critic share no parameter (checked by
        ``branches_apart``), so each branch's loss is differentiated on its own, the critic's
        while the actor's runs here (the LSTM kernels release the GIL). Each branch starts
        from a detached copy of the features; their gradients then go through the features
        extractor in one backward pass. The gradients are those of the summed loss: the
        same kernels on the same numbers, only the order in which a features extractor's
        two (or three, with DANN) contributions are added may differ.
        """
        policy = self.policy
        pi_features, vf_features = policy.branch_features(batch.observations)
        pi_in, vf_in = _branch_input(pi_features), _branch_input(vf_features)

        def critic() -> th.Tensor:
            values = policy.critic_branch(vf_in, batch.lstm_states.vf, batch.plan).flatten()
            value_loss = self._value_loss(values, batch, clip_range_vf)
            (self.vf_coef * value_loss).backward()
            return value_loss.detach()

        critic_job = pool.submit(critic)
        try:
            log_prob, entropy = policy.actor_branch(pi_in, actions, batch.lstm_states.pi, batch.plan)
            policy_loss, entropy_loss, ratio, approx_kl = self._policy_terms(log_prob, entropy, batch, clip_range)
            actor_loss = policy_loss + self.ent_coef * entropy_loss
            if self._dann is not None:
                actor_loss = actor_loss + self._dann.loss(pi_in)
            stop = self._kl_stops(approx_kl, epoch)
            if not stop:
                actor_loss.backward()
        except BaseException:
            wait([critic_job])
            raise
        value_loss = critic_job.result()
        if not stop:
            _backward_through_features((pi_features, pi_in), (vf_features, vf_in))
        loss = actor_loss.detach() + self.vf_coef * value_loss
        return _StepTerms(loss, policy_loss, entropy_loss, value_loss, ratio, approx_kl, stop)

    def _policy_terms(
        self, log_prob: th.Tensor, entropy: th.Tensor | None, batch: SequenceBatch, clip_range: float
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """Clipped surrogate loss, entropy loss, probability ratio and approximate KL."""
        advantages = batch.advantages
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_ratio = log_prob - batch.old_log_prob
        ratio = th.exp(log_ratio)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -th.mean(th.min(policy_loss_1, policy_loss_2))
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        with th.no_grad():
            approx_kl = th.mean((ratio - 1) - log_ratio)
        return policy_loss, entropy_loss, ratio, approx_kl

    def _value_loss(self, values: th.Tensor, batch: SequenceBatch, clip_range_vf: float | None) -> th.Tensor:
        if clip_range_vf is None:
            values_pred = values
        else:
            values_pred = batch.old_values + th.clamp(values - batch.old_values, -clip_range_vf, clip_range_vf)
        return th.mean((batch.returns - values_pred) ** 2)

    def _kl_stops(self, approx_kl: th.Tensor, epoch: int) -> bool:
        # Only early stopping needs the value now; logging reads them all at the end.
        if self.target_kl is None or approx_kl.item() <= 1.5 * self.target_kl:
            return False
        if self.verbose >= 1:
            print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl.item():.2f}")
        return True

    def _parallel_update_applies(self) -> bool:
        """Whether this update runs the critic's branch on a second thread (see ``parallel_update``)."""
        if self.parallel_update is not None:
            return bool(self.parallel_update)
        return (
            self.device.type == "cpu"
            and th.get_num_threads() == 1
            and usable_cpus() >= 2
            and isinstance(self.policy, FastRecurrentPolicyMixin)
            and self.policy.branches_apart()
        )

    def __getstate__(self) -> dict[str, Any]:
        # The critic's thread is this process's own: a copy or a pickle of the model starts
        # its own at its first update.
        state = self.__dict__.copy()
        state.pop("_update_pool", None)
        return state

    def _branch_pool(self) -> ThreadPoolExecutor:
        pool = self.__dict__.get("_update_pool")
        if pool is None:
            # A new thread's intra-op thread count (OpenMP's, under MKL and oneDNN) is not this
            # one's but all the cores'; left so, the critic's kernels spread over the core the
            # actor's are using, and the two branches no longer run side by side.
            pool = self._update_pool = ThreadPoolExecutor(
                1, thread_name_prefix="rlsim2real-critic", initializer=th.set_num_threads, initargs=(th.get_num_threads(),)
            )
        return pool

    def _record_train_logs(self, stats, approx_kl_divs, loss, clip_range, clip_range_vf) -> None:
        mean = lambda xs: th.stack(xs).mean().item() if xs else float("nan")  # noqa: E731
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/entropy_loss", mean(stats["entropy"]))
        self.logger.record("train/policy_gradient_loss", mean(stats["pg"]))
        self.logger.record("train/value_loss", mean(stats["value"]))
        self.logger.record("train/approx_kl", np.mean(th.stack(approx_kl_divs).tolist()) if approx_kl_divs else np.nan)
        self.logger.record("train/clip_fraction", mean(stats["clip"]))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    # --------------------------------------------------------------- save
    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: list[str] | None = None,
        include: list[str] | None = None,
    ) -> None:
        """As sb3-contrib's ``save``, in its terms: plain ``sb3_contrib.RecurrentPPO.load`` reads the file.

        No rlsim2real object is pickled (unless passed in ``policy_kwargs``, such as a
        features extractor of ours): the policy is named by its sb3-contrib class (the fast
        classes compute the same with the same parameters), and the optimizer state carries
        none of the ``fused``/``foreach`` we add. DANN goes into two entries that sb3-contrib
        keeps as unused attributes: ``dann``, the settings as a plain dict, and
        ``dann_state``, bytes of ``torch.save`` of the discriminator's and its optimizer's
        state dicts. A plain load gets the PPO model without DANN; this class's ``load``
        restores DANN from the entries, also from a file sb3-contrib saved again.
        """
        fast_class = self.policy_class
        self.policy_class = STOCK_POLICIES.get(fast_class, fast_class)
        self.dann = self.dann_config.to_dict()
        self.dann_state = None
        if self._dann is not None:
            buffer = io.BytesIO()
            th.save(self._dann.state_dict(), buffer)
            self.dann_state = buffer.getvalue()
        try:
            super().save(path, exclude, include)
        finally:
            self.policy_class = fast_class
            del self.dann, self.dann_state

    def get_parameters(self) -> dict[str, dict]:
        """As sb3-contrib's: the policy's and its optimizer's state dicts, the latter with
        sb3-contrib's ``fused``/``foreach`` (see :meth:`set_parameters`)."""
        params = super().get_parameters()
        if isinstance(self.policy, FastRecurrentPolicyMixin):
            params["policy.optimizer"] = self.policy.with_optimizer_kernels(params["policy.optimizer"], added=False)
        return params

    def set_parameters(
        self, load_path_or_dict: str | TensorDict, exact_match: bool = True, device: th.device | str = "auto"
    ) -> None:
        """As sb3-contrib's; the optimizer keeps the ``fused``/``foreach`` this process chose
        (a loaded optimizer state would otherwise set them)."""
        params = load_path_or_dict
        if not isinstance(params, dict):
            params = load_from_zip_file(params, device=device, load_data=False)[1]
        params = self._take_older_dann_state(params)
        if isinstance(self.policy, FastRecurrentPolicyMixin) and "policy.optimizer" in params:
            params = {**params, "policy.optimizer": self.policy.with_optimizer_kernels(params["policy.optimizer"], added=True)}
        super().set_parameters(params, exact_match, device)

    def _take_older_dann_state(self, params: dict[str, Any]) -> dict[str, Any]:
        """Files saved before DANN left the policy keep the discriminator in the policy's
        state dict and its optimizer as ``dann_optimizer``: load those into DANN (when
        enabled) and return the other entries."""
        prefix = "discriminator."
        policy = params.get("policy", {})
        discriminator = {key.removeprefix(prefix): value for key, value in policy.items() if key.startswith(prefix)}
        if not discriminator:
            return params
        if self._dann is not None:
            self._dann.discriminator.load_state_dict(discriminator)
            if "dann_optimizer" in params:
                self._dann.optimizer.load_state_dict(params["dann_optimizer"])
        rest = {name: value for name, value in params.items() if name != "dann_optimizer"}
        rest["policy"] = {key: value for key, value in policy.items() if not key.startswith(prefix)}
        return rest

    def _excluded_save_params(self) -> list[str]:
        # Target observations can be large and belong to the data, not the model; the
        # provider is a live callable. Both are set again after loading. The DANN settings
        # and state are saved as plain data (see save).
        return [*super()._excluded_save_params(), "_target", "_target_provider", "_dann", "dann_optimizer", "dann_config", "_update_pool"]
