"""Env steps per second: raw ``Hopper-v5`` vs the same env through rlsim2real's full stack.

A: ``gym.make("Hopper-v5")``.
B: ``rlsim2real.make_env("hopper")`` with every layer doing work: the training box (masses,
friction, damping, motor strength) re-sampled at every reset, and the held-out sensor terms
(observation noise, bias, scale, action delay) sampled from non-nominal ranges, so the
PhysicsGuard, DynamicsRandomization, ActionDelay and ObservationNoise layers all run.

Both step a single process with the same pre-drawn random actions, resetting when an episode
ends (random actions end a Hopper episode within a few dozen steps, so resets, where the
model is rewritten, weigh in). A and B alternate every ``--chunk`` steps over several rounds
in one run; the report gives each side's median steps per second of process CPU time (and of
wall time) and the ratio B/A.

Run:
    python benchmarks/bench_env_throughput.py            # writes benchmarks/results/env_throughput.{json,md}
    python benchmarks/bench_env_throughput.py --steps 5000 --rounds 3 --no-write
    python benchmarks/bench_env_throughput.py --baseline OLD.json   # OLD.json: this script's output on an
                                                                    # older checkout, kept as "before"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

import rlsim2real as rs  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402
from rlsim2real import BoxDistribution, ParamSpace  # noqa: E402

# Held-out sensor terms, moved off nominal so their layers work on every step.
SENSOR_RANGES = {"obs_noise": (0.01, 0.05), "obs_bias": (0.05, 0.1), "obs_scale": (1.05, 1.2), "action_delay": (1.0, 2.0)}


def full_stack(spec) -> BoxDistribution:
    """The spec's training box with the held-out sensor terms of :data:`SENSOR_RANGES` added
    (what the throughput benchmarks randomize)."""
    held = [spec.heldout_params[name].with_range(*SENSOR_RANGES[name]) for name in SENSOR_RANGES]
    return BoxDistribution(ParamSpace([*spec.params, *held]))


def full_stack_env(seed: int) -> gym.Env:
    spec = rs.load_env_spec("hopper")
    return rs.make_env(spec, seed=seed, distribution=full_stack(spec))


class Runner:
    """Steps one env through the actions, resetting as episodes end, and times itself."""

    def __init__(self, env: gym.Env, seed: int) -> None:
        self.env = env
        self.env.reset(seed=seed)
        self.episodes = 1
        self.wall = 0.0
        self.cpu = 0.0
        self.steps = 0

    def run(self, actions: np.ndarray) -> None:
        env = self.env
        wall, cpu = time.perf_counter(), time.process_time()
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
                self.episodes += 1
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.steps += len(actions)


def measure_round(raw: gym.Env, stack: gym.Env, actions: np.ndarray, seed: int, chunk: int) -> tuple[Runner, Runner]:
    """A and B alternate in chunks of ``chunk`` steps, so a change in machine load hits both alike."""
    a, b = Runner(raw, seed), Runner(stack, seed)
    for start in range(0, len(actions), chunk):
        a.run(actions[start : start + chunk])
        b.run(actions[start : start + chunk])
    return a, b


def check_stack_is_active(env: gym.Env) -> dict[str, float]:
    """The B env really randomizes: every parameter off nominal in one episode."""
    _, info = env.reset(seed=123)
    params = info["dr_params"]
    nominal = {p.name: p.identity for p in rs.load_env_spec("hopper").all_params}
    idle = [n for n, v in params.items() if v == nominal[n]]
    if idle:
        raise SystemExit(f"benchmark misconfigured: parameters at nominal: {idle}")
    return params


def before_section(result: dict) -> str:
    before = result.get("before_optimization")
    if before is None:
        return ""
    b, a = before["cpu_time"], result["cpu_time"]
    return f"""
## Before and after the hot-path optimization

| version | A steps/s (cpu) | B steps/s (cpu) | B/A (cpu) | B/A (wall) |
|---|---|---|---|---|
| before | {b['A_median']:,.0f} | {b['B_median']:,.0f} | {b['ratio_B_over_A']:.3f} | {before['wall_time']['ratio_B_over_A']:.3f} |
| after | {a['A_median']:,.0f} | {a['B_median']:,.0f} | {a['ratio_B_over_A']:.3f} | {result['wall_time']['ratio_B_over_A']:.3f} |

{before.get('note', '')}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="steps per round and side")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    parser.add_argument("--chunk", type=int, default=1000, help="steps before switching between A and B")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--baseline", type=Path, help="a JSON this script wrote for an earlier version, recorded as 'before_optimization'"
    )
    args = parser.parse_args()

    raw = gym.make("Hopper-v5")
    stack = full_stack_env(seed=0)
    example_params = check_stack_is_active(stack)
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (args.steps, *raw.action_space.shape)).astype(np.float32)
    measure_round(raw, stack, actions[:2000], seed=0, chunk=args.chunk)  # warm-up

    rounds = []
    for r in range(args.rounds):
        a, b = measure_round(raw, stack, actions, seed=r, chunk=args.chunk)
        rounds.append((a, b))
        print(
            f"round {r}: A {a.steps / a.cpu:7.0f} steps/s cpu ({a.steps / a.wall:7.0f} wall, {a.episodes} episodes)   "
            f"B {b.steps / b.cpu:7.0f} steps/s cpu ({b.steps / b.wall:7.0f} wall, {b.episodes} episodes)   "
            f"B/A {a.cpu / b.cpu:.3f} cpu, {a.wall / b.wall:.3f} wall"
        )
    summary = {}
    for clock in ("cpu", "wall"):
        a_runs = [a.steps / getattr(a, clock) for a, _ in rounds]
        b_runs = [b.steps / getattr(b, clock) for _, b in rounds]
        a_med, b_med = statistics.median(a_runs), statistics.median(b_runs)
        summary[clock] = {
            "A_steps_per_s": a_runs,
            "B_steps_per_s": b_runs,
            "A_median": a_med,
            "B_median": b_med,
            "ratio_B_over_A": b_med / a_med,
            "ratio_per_round": [b / a for a, b in zip(a_runs, b_runs)],
        }
        print(f"median ({clock} time): A {a_med:.0f} steps/s, B {b_med:.0f} steps/s, B/A {b_med / a_med:.3f} (goal >= 0.90)")

    command = "python " + " ".join([str(Path(sys.argv[0]).as_posix()), *sys.argv[1:]])
    result = {
        "benchmark": "env_throughput",
        "command": command,
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "mujoco": mujoco.__version__,
            "gymnasium": gym.__version__,
        },
        "steps_per_round": args.steps,
        "chunk": args.chunk,
        "rounds": args.rounds,
        "A": {"env": "gym.make('Hopper-v5')", "episodes": [a.episodes for a, _ in rounds]},
        "B": {
            "env": "rlsim2real.make_env('hopper') with the training box and non-nominal sensor terms "
            f"{SENSOR_RANGES} sampled at every reset",
            "episodes": [b.episodes for _, b in rounds],
            "example_params": example_params,
        },
        "cpu_time": summary["cpu"],
        "wall_time": summary["wall"],
        "ratio_B_over_A": summary["cpu"]["ratio_B_over_A"],
        "goal": 0.90,
    }
    if args.baseline is not None:
        before = json.loads(args.baseline.read_text())
        result["before_optimization"] = {k: before[k] for k in ("command", "cpu_time", "wall_time", "ratio_B_over_A")}
        if "note" in before:
            result["before_optimization"]["note"] = before["note"]
    if args.no_write:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "env_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    cpu, wall = summary["cpu"], summary["wall"]
    rows = "\n".join(
        f"| {r} | {a:,.0f} | {b:,.0f} | {b / a:.3f} | {aw:,.0f} | {bw:,.0f} | {bw / aw:.3f} |"
        for r, (a, b, aw, bw) in enumerate(
            zip(cpu["A_steps_per_s"], cpu["B_steps_per_s"], wall["A_steps_per_s"], wall["B_steps_per_s"])
        )
    )
    m = result["machine"]
    (args.out / "env_throughput.md").write_text(
        f"""# Env throughput: raw Hopper-v5 vs the rlsim2real stack

Command: `{command}`

Machine: {m['cpu']}, {m['cores']} CPU cores, no GPU; Python {m['python']}, MuJoCo {m['mujoco']},
Gymnasium {m['gymnasium']}. Single process, {args.steps:,} random-action steps per round and side,
resetting as episodes end; A and B alternate every {args.chunk:,} steps, {args.rounds} rounds.
Steps per second are given per second of this process's CPU time (the headline: other jobs on
a shared 2-core machine inflate wall time for both sides unevenly) and per second of wall time.

- A: `gym.make("Hopper-v5")`
- B: `rlsim2real.make_env("hopper")`, every layer active: training box (masses, friction, damping,
  motor strength) re-sampled at every reset, observation noise/bias/scale and action delay sampled
  from {SENSOR_RANGES}.

| round | A steps/s (cpu) | B steps/s (cpu) | B/A (cpu) | A steps/s (wall) | B steps/s (wall) | B/A (wall) |
|---|---|---|---|---|---|---|
{rows}
| **median** | **{cpu['A_median']:,.0f}** | **{cpu['B_median']:,.0f}** | **{cpu['ratio_B_over_A']:.3f}** | {wall['A_median']:,.0f} | {wall['B_median']:,.0f} | {wall['ratio_B_over_A']:.3f} |

Goal: B/A >= 0.90.
{before_section(result)}"""
    )
    print(f"wrote {args.out / 'env_throughput.json'} and .md")


if __name__ == "__main__":
    main()
