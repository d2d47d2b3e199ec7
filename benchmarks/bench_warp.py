"""Env steps per second of the batched env on its two backends: ``mujoco_batch`` and ``warp``.

Hopper-v5 with the full randomization stack (training box re-sampled at every reset, and the
held-out sensor terms sampled off nominal, as ``bench_batched_env.py``), random actions,
resetting as episodes end, at several world counts. Contenders, side by side in one run:

- ``mujoco_batch``: :class:`~rlsim2real.batched.BatchedVecEnv` on ``mujoco.batch``, 1 thread;
- ``warp``: the same env on MuJoCo Warp (``backend="warp"``) on ``--device`` (default: CUDA
  where Warp sees a GPU, else Warp's CPU device).

Both run the same seeds, so the same episodes up to float32 chaos. Every round runs each
contender on the same chunk of actions in turn (the order reversed every other round);
throughput is the median over rounds, per second of wall time and per CPU-second of this
process. The warp env's first step (Warp compiling or loading its kernels, and capturing
the step's graph) is timed apart and left out of the rates.

Run:
    python benchmarks/bench_warp.py                          # writes benchmarks/results/warp_env.{json,md}
    python benchmarks/bench_warp.py --n-envs 16 --rounds 1 --steps 50 --no-write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import rlsim2real as rs  # noqa: E402
from benchmarks.bench_env_throughput import SENSOR_RANGES, full_stack  # noqa: E402
from benchmarks.machine import describe, load_note, machine  # noqa: E402
from rlsim2real.batched import BatchedVecEnv  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402



def run_chunk(env: BatchedVecEnv, actions: np.ndarray) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, episodes ended) for ``actions``."""
    episodes = 0
    cpu = time.process_time()
    start = time.perf_counter()
    for a in actions:
        episodes += int(env.step(a)[2].sum())
    return time.perf_counter() - start, time.process_time() - cpu, episodes


def measure(spec, dist, n: int, args) -> dict:
    envs = {"mujoco_batch": BatchedVecEnv(spec, n, seed=0, distribution=dist, threads=1)}
    built = time.perf_counter()
    envs["warp"] = BatchedVecEnv(spec, n, seed=0, distribution=dist, backend="warp")
    build_warp = time.perf_counter() - built
    rng = np.random.default_rng(0)
    first = rng.uniform(-1, 1, (1, n, 3)).astype(np.float32)
    first_step = {}
    for name, env in envs.items():
        env.seed(0)
        env.reset()
        first_step[name] = run_chunk(env, first)[0]
    names = list(envs)
    seconds = {k: [0.0] * args.rounds for k in names}
    cpu_seconds = {k: [0.0] * args.rounds for k in names}
    episodes = {k: 0 for k in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for start in range(0, args.steps, args.chunk):
            actions = rng.uniform(-1, 1, (min(args.chunk, args.steps - start), n, 3)).astype(np.float32)
            for name in order:
                wall, cpu, eps = run_chunk(envs[name], actions)
                seconds[name][r] += wall
                cpu_seconds[name][r] += cpu
                episodes[name] += eps
    device = str(envs["warp"].backend.device)
    for env in envs.values():
        env.close()
    rates = {k: [n * args.steps / s for s in v] for k, v in seconds.items()}
    cpu_rates = {k: [n * args.steps / s for s in v] for k, v in cpu_seconds.items()}
    result = {
        "n_envs": n,
        "warp_device": device,
        "env_steps_per_s": rates,
        "median_env_steps_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "median_env_steps_per_cpu_s": {k: statistics.median(v) for k, v in cpu_rates.items()},
        "warp_over_mujoco_batch": statistics.median(w / m for w, m in zip(rates["warp"], rates["mujoco_batch"])),
        "episodes": episodes,
        "first_step_s": first_step,
        "warp_build_s": build_warp,
    }
    print(f"{n} envs: " + "  ".join(f"{k} {v:,.0f}/s" for k, v in result["median_env_steps_per_s"].items())
          + f"  warp/mujoco_batch {result['warp_over_mujoco_batch']:.2f}x  (warp on {device}, "
          f"first step {first_step['warp']:.1f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-envs", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=300, help="VecEnv steps per round and contender")
    parser.add_argument("--chunk", type=int, default=50, help="VecEnv steps before switching contender")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load_before = os.getloadavg()
    spec = rs.load_env_spec("hopper")
    dist = full_stack(spec)
    runs = [measure(spec, dist, n, args) for n in args.n_envs]
    info = machine()
    for name in ("warp-lang", "mujoco-warp"):
        info["versions"][name] = metadata.version(name)
    result = {
        "benchmark": "warp_env",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": info,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "steps_per_round": args.steps,
        "chunk": args.chunk,
        "rounds": args.rounds,
        "randomization": f"hopper training box + sensor terms {SENSOR_RANGES}, re-sampled at every reset",
        "runs": runs,
    }
    if args.no_write:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "warp_env.json", result)
    write_text(args.out / "warp_env.md", report(result))
    print(f"wrote {args.out / 'warp_env.json'} and .md")


def report(res: dict) -> str:
    rows = "\n".join(
        f"| {r['n_envs']} | {r['warp_device']} | {r['median_env_steps_per_s']['mujoco_batch']:,.0f} | "
        f"{r['median_env_steps_per_s']['warp']:,.0f} | {r['warp_over_mujoco_batch']:.2f}x | "
        f"{r['median_env_steps_per_cpu_s']['mujoco_batch']:,.0f} / {r['median_env_steps_per_cpu_s']['warp']:,.0f} | "
        f"{r['first_step_s']['warp']:.1f} s | {r['episodes']['mujoco_batch']:,} / {r['episodes']['warp']:,} |"
        for r in res["runs"]
    )
    return f"""# Batched env on its two backends: mujoco_batch and warp, Hopper-v5

Command: `{res['command']}`

{describe(res['machine'])}

{load_note(res['load_average_before'], res['load_average_after'], res['machine']['cores'])} {res['rounds']} rounds of {res['steps_per_round']:,} VecEnv steps per
contender, alternating every {res['chunk']} steps; random actions, resetting as episodes end.
Randomization: {res['randomization']}. Steps/s are env steps (VecEnv steps x worlds), medians over rounds.

| worlds | warp device | mujoco_batch, 1 thread (steps/s) | warp (steps/s) | warp / mujoco_batch | per CPU-second (mujoco_batch / warp) | warp's first step | episodes (mujoco_batch / warp) |
|---|---|---|---|---|---|---|---|
{rows}

The warp env's first step compiles or loads Warp's kernels (from Warp's kernel cache after
the first run on a machine) and captures the step as a graph; it is left out of the rates.
Both envs run the same seeds: their episodes agree until float32 chaos separates them.

{device_note(res)}
"""


def device_note(res: dict) -> str:
    if all(r["warp_device"] == "cpu" for r in res["runs"]):
        return ("On Warp's CPU device the physics runs its kernels on one thread, in float32, for every\n"
                "world in turn, so it is slower than `mujoco.batch`: recorded for honesty, not as the use\n"
                "case. On a GPU the worlds run in parallel, which is the point of the backend; this machine\n"
                "has none.")
    return ("The warp env's physics ran on the GPU named above; `mujoco.batch` on one CPU thread. The\n"
            "observations, rewards and randomization of both are computed in numpy on the host.")


if __name__ == "__main__":
    main()
