"""The GPU path: policy, DANN discriminator and target batches on CUDA, and back to the CPU.

Marked ``cuda``: these run wherever ``torch.cuda.is_available()`` (``python -m pytest -m cuda``
on a GPU machine) and are skipped elsewhere, CI included.
"""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from rlsim2real.agents import RecurrentPPO

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device")]

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda"


def _model(dann: bool, device: str = DEVICE, seed: int = 0, env_id: str = "InvertedPendulum-v5") -> RecurrentPPO:
    kwargs = {}
    if dann:
        kwargs["dann"] = {"enabled": True, "weight": 0.1}
    return RecurrentPPO("MlpLstmPolicy", gym.make(env_id), n_steps=64, batch_size=32, n_epochs=2, seed=seed,
                        device=device, **kwargs)


def _targets(env_id: str = "InvertedPendulum-v5", n: int = 256) -> np.ndarray:
    env = gym.make(env_id)
    env.reset(seed=1)
    frames = []
    for _ in range(n):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        frames.append(obs)
        if terminated or truncated:
            env.reset()
    return np.asarray(frames, dtype=np.float32)


def _on(module: th.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


def test_policy_discriminator_and_targets_live_on_the_gpu_and_train():
    model = _model(dann=True)
    model.set_target_observations(_targets())
    before = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    model.learn(256)
    assert _on(model.policy) == {"cuda"}
    assert _on(model.discriminator) == {"cuda"}
    assert model._target.train.device.type == "cuda" and model._target.heldout.device.type == "cuda"
    changed = [k for k, v in model.policy.state_dict().items() if not th.equal(v, before[k])]
    assert changed, "one update on the GPU changed no parameter"
    assert all(th.isfinite(v).all() for v in model.policy.state_dict().values())


def test_the_same_weights_act_and_value_alike_on_cpu_and_gpu():
    cpu, gpu = _model(dann=False, device="cpu"), _model(dann=False)
    gpu.policy.load_state_dict(cpu.policy.state_dict())
    obs = np.random.default_rng(0).normal(size=(60, 3, 4)).astype(np.float32)  # 60 steps of 3 envs
    states = {"cpu": None, "gpu": None}
    starts = np.ones(3, dtype=bool)
    for t in range(len(obs)):
        acted = {}
        for name, m in (("cpu", cpu), ("gpu", gpu)):
            acted[name], states[name] = m.predict(obs[t], state=states[name], episode_start=starts, deterministic=True)
        np.testing.assert_allclose(acted["cpu"], acted["gpu"], atol=1e-4)
        starts = np.zeros(3, dtype=bool)
    for a, b in zip(states["cpu"], states["gpu"]):
        np.testing.assert_allclose(a, b, atol=1e-4)  # the LSTM carried the same memory


def test_a_gpu_checkpoint_loads_on_the_cpu_with_the_same_predictions(tmp_path):
    model = _model(dann=True)
    model.set_target_observations(_targets())
    model.learn(128)
    model.save(tmp_path / "gpu.zip")
    back = RecurrentPPO.load(tmp_path / "gpu.zip", device="cpu")
    assert _on(back.policy) == {"cpu"} and _on(back.discriminator) == {"cpu"}
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    a_gpu, _ = model.predict(obs, deterministic=True)
    a_cpu, _ = back.predict(obs, deterministic=True)
    np.testing.assert_allclose(a_gpu, a_cpu, atol=1e-4)


def test_train_with_device_cuda_from_the_cli_runs_and_evaluates(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "train", str(ROOT / "experiments/inverted_pendulum_dann.toml"),
                           "--timesteps", "2048", "--device", "cuda", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    transfer = json.loads((out / "transfer.json").read_text())
    assert "sensor_shift" in transfer["sets"]
    assert "cuda" in (out / "logs" / "progress.csv").read_text() or "cuda" in proc.stdout + proc.stderr
