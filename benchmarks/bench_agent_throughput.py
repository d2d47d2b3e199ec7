"""Training throughput of rlsim2real's RecurrentPPO vs sb3-contrib's and SB3's PPO (MLP) on Hopper-v5.

All variants share one process and are interleaved round by round (A, B, C, D, A, B, ...)
so that a noisy machine slows them alike. Each round calls ``learn`` for a few rollouts
with ``reset_num_timesteps=False``; a callback splits the time into rollout collection and
the update phase (``train()``), both as wall time and as the process's CPU time (which
other jobs on a busy machine inflate far less). The first round of every variant is a
warm-up and is not counted. ``--baseline REV`` adds our agent as of a git revision (its
``rlsim2real`` package, exported and imported under another name) as one more variant, so
an earlier version and this one are timed side by side in the same process.

Run:
    python benchmarks/bench_agent_throughput.py            # default, ~4-8 min on 2 cores
    python benchmarks/bench_agent_throughput.py --quick    # smoke run
    python benchmarks/bench_agent_throughput.py --baseline main   # also time main's agent

Writes benchmarks/results/agent_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import sb3_contrib
import stable_baselines3
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlsim2real.agents import RecurrentPPO  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
BASELINE_PACKAGE = "rlsim2real_baseline"
CONFIGS = {
    "a_defaults_1env": dict(n_envs=1, n_steps=128, batch_size=128, n_epochs=10),
    "b_8env": dict(n_envs=8, n_steps=512, batch_size=256, n_epochs=4),
}
VARIANTS = ("sb3_contrib", "ours", "ours_dann", "sb3_ppo_mlp")
# Extra variants: our update with the critic's branch on this thread too (parallel_update
# off), and sb3-contrib with two torch intra-op threads (its best use of a second core).
EXTRA_VARIANTS = ("ours_serial_update", "sb3_contrib_2threads")
TORCH_THREADS = {"sb3_contrib_2threads": 2}
BASELINE_VARIANT = "ours_baseline"


def import_baseline(rev: str) -> tuple[type, str]:
    """Our RecurrentPPO as of git revision ``rev``, importable next to the current one.

    Exports ``rlsim2real/`` at ``rev`` into a temporary directory as ``rlsim2real_baseline``
    (its absolute imports renamed accordingly) and imports it.

    Returns:
        The class and the full commit hash.
    """
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix="bench_baseline_"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "rlsim2real"], cwd=ROOT, check=True, capture_output=True).stdout
    archive_path = target / "src.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(target, filter="data")
    package = target / "rlsim2real"
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\brlsim2real\b", BASELINE_PACKAGE, path.read_text()))
    package.rename(target / BASELINE_PACKAGE)
    sys.path.insert(0, str(target))
    return importlib.import_module(BASELINE_PACKAGE + ".agents").RecurrentPPO, commit


class PhaseTimer(BaseCallback):
    """Accumulates wall time spent collecting rollouts; the rest of ``learn`` is the update."""

    def __init__(self) -> None:
        super().__init__()
        self.rollout_s = 0.0
        self.rollout_cpu_s = 0.0
        self.rollouts = 0

    def _on_rollout_start(self) -> None:
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def _on_rollout_end(self) -> None:
        self.rollout_s += time.perf_counter() - self._t0
        self.rollout_cpu_s += time.process_time() - self._cpu0
        self.rollouts += 1

    def _on_step(self) -> bool:
        return True


def target_observations(n: int = 2048, seed: int = 0) -> np.ndarray:
    """Hopper observations under random actions, offset to stand in for a shifted sensor."""
    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=seed)
    rows = []
    rng = np.random.default_rng(seed)
    while len(rows) < n:
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, size=3))
        rows.append(obs + 0.1)
        if terminated or truncated:
            obs, _ = env.reset()
    return np.asarray(rows, dtype=np.float32)


def build(variant: str, cfg: dict, seed: int, baseline_cls: type | None = None):
    env = make_vec_env("Hopper-v5", n_envs=cfg["n_envs"], seed=seed)
    kw = dict(n_steps=cfg["n_steps"], batch_size=cfg["batch_size"], n_epochs=cfg["n_epochs"], seed=seed, device="cpu")
    if variant in ("sb3_contrib", "sb3_contrib_2threads"):
        return sb3_contrib.RecurrentPPO("MlpLstmPolicy", env, **kw)
    if variant == "ours":  # parallel_update automatic: on with one torch thread and two or more CPUs
        return RecurrentPPO("MlpLstmPolicy", env, **kw)
    if variant == "ours_serial_update":
        return RecurrentPPO("MlpLstmPolicy", env, parallel_update=False, **kw)
    if variant == BASELINE_VARIANT:
        return baseline_cls("MlpLstmPolicy", env, **kw)
    if variant == "ours_dann":
        model = RecurrentPPO("MlpLstmPolicy", env, dann=dict(enabled=True, weight=0.1, schedule="ganin", gamma=10), **kw)
        model.set_target_observations(target_observations(seed=seed))
        return model
    return PPO("MlpPolicy", env, **kw)


def run_config(
    name: str, cfg: dict, rounds: int, rollouts_per_round: int, seed: int, baseline_cls: type | None = None
) -> dict:
    steps_per_rollout = cfg["n_envs"] * cfg["n_steps"]
    variants = (*VARIANTS, *EXTRA_VARIANTS, *((BASELINE_VARIANT,) if baseline_cls is not None else ()))
    threads = th.get_num_threads()
    models = {v: build(v, cfg, seed, baseline_cls) for v in variants}
    totals = {v: {"wall_s": 0.0, "rollout_s": 0.0, "cpu_s": 0.0, "rollout_cpu_s": 0.0, "rollouts": 0} for v in variants}
    for rnd in range(rounds + 1):
        for variant in variants:
            timer = PhaseTimer()
            n = 1 if rnd == 0 else rollouts_per_round
            th.set_num_threads(TORCH_THREADS.get(variant, threads))
            t0, cpu0 = time.perf_counter(), time.process_time()
            models[variant].learn(n * steps_per_rollout, callback=timer, reset_num_timesteps=rnd == 0)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            th.set_num_threads(threads)
            if rnd > 0:  # round 0 warms caches, allocators and the env
                totals[variant]["wall_s"] += wall
                totals[variant]["rollout_s"] += timer.rollout_s
                totals[variant]["cpu_s"] += cpu
                totals[variant]["rollout_cpu_s"] += timer.rollout_cpu_s
                totals[variant]["rollouts"] += timer.rollouts
            print(f"[{name}] round {rnd} {variant}: {wall:.2f}s wall, {cpu:.2f}s CPU", flush=True)
    out = {}
    for variant, t in totals.items():
        k = max(t["rollouts"], 1)
        out[variant] = {
            "rollouts": t["rollouts"],
            "update_s_per_rollout": (t["wall_s"] - t["rollout_s"]) / k,
            "rollout_s_per_rollout": t["rollout_s"] / k,
            "env_steps_per_s": t["rollouts"] * steps_per_rollout / t["wall_s"],
            "update_cpu_s_per_rollout": (t["cpu_s"] - t["rollout_cpu_s"]) / k,
            "rollout_cpu_s_per_rollout": t["rollout_cpu_s"] / k,
            "env_steps_per_cpu_s": t["rollouts"] * steps_per_rollout / t["cpu_s"],
        }
    ref, ours, dann, mlp = (out[v] for v in VARIANTS)
    if baseline_cls is not None:
        base = out[BASELINE_VARIANT]
        out["vs_baseline"] = {
            "update_speedup": base["update_s_per_rollout"] / ours["update_s_per_rollout"],
            "end_to_end_speedup": ours["env_steps_per_s"] / base["env_steps_per_s"],
            "update_speedup_cpu": base["update_cpu_s_per_rollout"] / ours["update_cpu_s_per_rollout"],
            "end_to_end_speedup_cpu": ours["env_steps_per_cpu_s"] / base["env_steps_per_cpu_s"],
        }
    out["ratios"] = ratios(ref, ours, dann, mlp, "s_per_rollout", "env_steps_per_s")
    serial, ref2 = out["ours_serial_update"], out["sb3_contrib_2threads"]
    out["second_core"] = {
        "parallel_update_speedup": serial["update_s_per_rollout"] / ours["update_s_per_rollout"],
        "parallel_update_cpu_ratio": ours["update_cpu_s_per_rollout"] / serial["update_cpu_s_per_rollout"],
        "update_speedup_vs_sb3_contrib_best": min(ref["update_s_per_rollout"], ref2["update_s_per_rollout"]) / ours["update_s_per_rollout"],
        "update_speedup_vs_sb3_contrib_serial_update": ref["update_s_per_rollout"] / serial["update_s_per_rollout"],
    }
    out["ratios_cpu"] = ratios(ref, ours, dann, mlp, "cpu_s_per_rollout", "env_steps_per_cpu_s")
    return out


def ratios(ref: dict, ours: dict, dann: dict, mlp: dict, per_rollout: str, per_second: str) -> dict:
    """The goal ratios from wall-time or CPU-time fields (``per_rollout``/``per_second`` suffixes)."""
    return {
        "update_speedup_vs_sb3_contrib": ref["update_" + per_rollout] / ours["update_" + per_rollout],
        "rollout_speedup_vs_sb3_contrib": ref["rollout_" + per_rollout] / ours["rollout_" + per_rollout],
        "end_to_end_vs_sb3_contrib": ours[per_second] / ref[per_second],
        "end_to_end_vs_sb3_ppo_mlp": ours[per_second] / mlp[per_second],
        "dann_slowdown_vs_ours": ours[per_second] / dann[per_second] - 1.0,
    }


GOALS = {
    "update_speedup_vs_sb3_contrib": (">=", 12.0),
    "rollout_speedup_vs_sb3_contrib": (">=", 2.0),
    "end_to_end_vs_sb3_contrib": (">=", 5.0),
    "end_to_end_vs_sb3_ppo_mlp": (">=", 0.6),
    "dann_slowdown_vs_ours": ("<=", 0.15),
}


def render_markdown(report: dict) -> str:
    lines = ["# Agent training throughput (Hopper-v5)", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}", "",
             f"1-minute load average at start / end: {report['load_average_1min_at_start']:.2f} / "
             f"{report['load_average_1min_at_end']:.2f} (other jobs on the machine inflate absolute times; "
             "variants are interleaved so ratios are fairer than absolutes)", ""]
    for name, res in report["configs"].items():
        lines += [f"## {name}: {CONFIGS[name]}", "",
                  "| variant | update s/rollout | rollout s/rollout | env steps/s | update CPU s/rollout | rollout CPU s/rollout | env steps/CPU s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for v in (*VARIANTS, *EXTRA_VARIANTS, BASELINE_VARIANT):
            if v not in res:
                continue
            r = res[v]
            label = f"{v} (commit {report['baseline']['commit'][:10]})" if v == BASELINE_VARIANT else v
            lines.append(f"| {label} | {r['update_s_per_rollout']:.3f} | {r['rollout_s_per_rollout']:.3f} | {r['env_steps_per_s']:.0f} "
                         f"| {r['update_cpu_s_per_rollout']:.3f} | {r['rollout_cpu_s_per_rollout']:.3f} | {r['env_steps_per_cpu_s']:.0f} |")
        if "vs_baseline" in res:
            vs = res["vs_baseline"]
            lines += ["", f"Against the baseline in the same run: update {vs['update_speedup']:.2f}x faster "
                      f"({vs['update_speedup_cpu']:.2f}x in CPU time), end to end {vs['end_to_end_speedup']:.2f}x "
                      f"({vs['end_to_end_speedup_cpu']:.2f}x in CPU time)."]
        previous = report.get("previous_ratios", {}).get(name, {})
        lines += ["", "| ratio | value (wall) | value (CPU time) | previous run (wall) | goal | met (wall / CPU) |",
                  "|---|---:|---:|---:|---|---|"]
        met = lambda val, op, goal: "yes" if (val >= goal if op == ">=" else val <= goal) else "no"  # noqa: E731
        for key, (op, goal) in GOALS.items():
            val, val_cpu = res["ratios"][key], res["ratios_cpu"][key]
            before = f"{previous[key]:.2f}" if key in previous else "-"
            lines.append(f"| {key} | {val:.2f} | {val_cpu:.2f} | {before} | {op} {goal} | {met(val, op, goal)} / {met(val_cpu, op, goal)} |")
        missed = [key for key, (op, goal) in GOALS.items() if met(res["ratios_cpu"][key], op, goal) == "no"]
        lines += ["", f"Goals not met in CPU time: {', '.join(missed) if missed else 'none'}."]
        if "second_core" in res:
            sc = res["second_core"]
            lines += ["", "The second core in the update (wall time; `ours` runs the critic's branch on a second "
                      "thread, `ours_serial_update` does not; `sb3_contrib_2threads` gives sb3-contrib two torch threads):", "",
                      f"- ours vs ours_serial_update: update {sc['parallel_update_speedup']:.2f}x faster, "
                      f"at {sc['parallel_update_cpu_ratio']:.2f}x the CPU time;",
                      f"- update vs sb3-contrib at its faster thread count: {sc['update_speedup_vs_sb3_contrib_best']:.2f}x;",
                      f"- ours_serial_update vs sb3-contrib (both on one core): {sc['update_speedup_vs_sb3_contrib_serial_update']:.2f}x."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one counted round of one rollout")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for every variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", metavar="REV", help="also time our agent as of this git revision")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    rounds = 1 if args.quick else args.rounds
    per_round = {"a_defaults_1env": 1 if args.quick else 4, "b_8env": 1}
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, Path(__file__).resolve().parents[1]), *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{'CUDA ' + th.cuda.get_device_name() if th.cuda.is_available() else 'no GPU'}; Python {platform.python_version()}, "
        f"torch {th.__version__} ({args.threads} thread(s)), SB3 {stable_baselines3.__version__}, "
        f"sb3-contrib {sb3_contrib.__version__}",
        "settings": {"rounds": rounds, "rollouts_per_round": per_round, "configs": CONFIGS, "seed": args.seed},
        "configs": {},
        "load_average_1min_at_start": os.getloadavg()[0],
    }
    baseline_cls = None
    if args.baseline:
        baseline_cls, commit = import_baseline(args.baseline)
        report["baseline"] = {"rev": args.baseline, "commit": commit}
    previous = RESULTS / "agent_throughput.json"
    if previous.exists():  # the ratios of the last recorded run, shown next to the new ones
        old = json.loads(previous.read_text())
        report["previous_ratios"] = {name: res["ratios"] for name, res in old["configs"].items()}
    for name, cfg in CONFIGS.items():
        report["configs"][name] = run_config(name, cfg, rounds, per_round[name], args.seed, baseline_cls)
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    write_json(RESULTS / "agent_throughput.json", report)  # atomically: write, then rename
    write_text(RESULTS / "agent_throughput.md", render_markdown(report))
    print(render_markdown(report))


if __name__ == "__main__":
    main()
