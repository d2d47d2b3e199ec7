"""The large configuration on a GPU machine: CPU against GPU update, and the batched env on all cores.

Hopper-v5 with the full randomization box on the batched env (``--worlds`` worlds), the
project's RecurrentPPO with an LSTM of ``--hidden`` units, ``--n-steps`` steps per world and
minibatches of ``--batch`` rows. Each device gets its own model of the same seed; they are
interleaved round by round (cpu, cuda, cpu, cuda, ...) in one process, and a callback splits
each ``learn`` into rollout collection and the update. The first round of each is a warm-up.
Then the batched env alone, random actions, at 1 thread and at every core, side by side; and,
where ``mujoco_warp`` is installed (``pip install "rlsim2real[warp]"``), the batched env on the
MuJoCo Warp backend (on the GPU where Warp sees one) at ``--warp-worlds`` worlds.

    python benchmarks/bench_gpu.py                       # on a GPU machine, a few minutes
    python benchmarks/bench_gpu.py --devices cpu --quick --no-write   # a dry run anywhere

Writes benchmarks/results/gpu_large.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch as th

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_agent_throughput import PhaseTimer  # noqa: E402
from benchmarks.machine import describe, machine  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402


def build(device: str, args: argparse.Namespace, threads: int):
    import rlsim2real as rs
    from rlsim2real.agents import RecurrentPPO
    from rlsim2real.batched import BatchedVecEnv

    venv = BatchedVecEnv(rs.load_env_spec("hopper"), args.worlds, seed=args.seed, threads=threads)
    return RecurrentPPO("MlpLstmPolicy", venv, n_steps=args.n_steps, batch_size=args.batch, n_epochs=args.epochs,
                        policy_kwargs=dict(lstm_hidden_size=args.hidden), seed=args.seed, device=device)


def training(args: argparse.Namespace, threads: int) -> dict:
    models = {d: build(d, args, threads) for d in args.devices}
    per_rollout = args.worlds * args.n_steps
    totals = {d: {"wall_s": 0.0, "rollout_s": 0.0, "rollouts": 0} for d in args.devices}
    for rnd in range(args.rounds + 1):
        for device, model in models.items():
            timer = PhaseTimer()
            t0 = time.perf_counter()
            model.learn(per_rollout * (1 if rnd == 0 else args.rollouts), callback=timer, reset_num_timesteps=rnd == 0)
            if device.startswith("cuda"):
                th.cuda.synchronize()
            wall = time.perf_counter() - t0
            print(f"round {rnd} {device}: {wall:.2f} s", flush=True)
            if rnd:
                totals[device]["wall_s"] += wall
                totals[device]["rollout_s"] += timer.rollout_s
                totals[device]["rollouts"] += timer.rollouts
    out = {}
    for device, t in totals.items():
        k = max(t["rollouts"], 1)
        out[device] = {"rollouts": t["rollouts"], "update_s_per_rollout": (t["wall_s"] - t["rollout_s"]) / k,
                       "rollout_s_per_rollout": t["rollout_s"] / k, "env_steps_per_s": t["rollouts"] * per_rollout / t["wall_s"]}
    return out


def env_alone(args: argparse.Namespace, thread_counts: list[int]) -> dict:
    import rlsim2real as rs
    from rlsim2real.batched import BatchedVecEnv

    spec = rs.load_env_spec("hopper")
    envs = {t: BatchedVecEnv(spec, args.worlds, seed=args.seed, threads=t) for t in thread_counts}
    actions = np.random.default_rng(0).uniform(-1, 1, (args.env_steps, args.worlds, 3)).astype(np.float32)
    seconds = {t: 0.0 for t in thread_counts}
    for venv in envs.values():
        venv.reset()
    for chunk in range(0, args.env_steps, 50):  # interleaved, 50 VecEnv steps at a time
        for t, venv in envs.items():
            t0 = time.perf_counter()
            for a in actions[chunk:chunk + 50]:
                venv.step(a)
            seconds[t] += time.perf_counter() - t0
    return {str(t): args.env_steps * args.worlds / s for t, s in seconds.items()}


def warp_alone(args: argparse.Namespace) -> list[dict]:
    """The batched env on the Warp backend against ``mujoco.batch`` (``bench_warp.measure``:
    full randomization, side by side, first step apart) at each of ``args.warp_worlds``."""
    import rlsim2real as rs
    from benchmarks.bench_env_throughput import full_stack
    from benchmarks.bench_warp import measure

    spec = rs.load_env_spec("hopper")
    rounds = argparse.Namespace(rounds=args.rounds, steps=args.env_steps, chunk=50)
    return [measure(spec, full_stack(spec), n, rounds) for n in args.warp_worlds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--worlds", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=1, help="rollouts per device and round")
    parser.add_argument("--env-steps", type=int, default=1000, help="VecEnv steps of the env-alone measure")
    parser.add_argument("--warp-worlds", type=int, nargs="+", default=[256, 4096],
                        help="worlds of the Warp-backend measure (run where mujoco_warp is installed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if any(d.startswith("cuda") for d in args.devices) and not th.cuda.is_available():
        raise SystemExit("bench_gpu.py: --devices names cuda but torch sees no CUDA device (run it on a GPU machine, "
                         "or --devices cpu for a dry run)")
    if args.quick:
        args.worlds, args.hidden, args.n_steps, args.batch, args.rounds, args.env_steps = 16, 32, 16, 64, 1, 100
        args.warp_worlds = [16]
    cores = os.cpu_count() or 1
    th.set_num_threads(cores)  # the CPU update gets the whole machine, as a user's would
    start = time.time()
    train = training(args, threads=cores)
    env = env_alone(args, sorted({1, cores}))
    from rlsim2real.batched.warp_backend import warp_available

    warp = warp_alone(args) if warp_available() else None
    command = "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:])
    data = {"command": command, "machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "no_write"},
            "training": train, "batched_env_steps_per_s": env, "warp_env": warp, "wall_seconds": round(time.time() - start, 1)}
    lines = [f"# Large configuration: {args.worlds} Hopper worlds, LSTM {args.hidden}, minibatch {args.batch}", "",
             f"Command: `{command}`", "", describe(data["machine"]), "",
             f"{args.n_steps} steps per world and rollout ({args.worlds * args.n_steps:,} rows), {args.epochs} epochs, "
             f"the batched env on {cores} threads, torch on {cores} CPU threads; devices interleaved round by round, "
             f"{args.rounds} counted rounds of {args.rollouts} rollout(s) each after a warm-up.", "",
             "| device | update s/rollout | rollout s/rollout | env steps/s end to end |", "|---|---:|---:|---:|"]
    for device, r in train.items():
        lines.append(f"| {device} | {r['update_s_per_rollout']:.2f} | {r['rollout_s_per_rollout']:.2f} | {r['env_steps_per_s']:,.0f} |")
    gpus = [d for d in train if d.startswith("cuda")]
    if "cpu" in train and gpus:
        g = train[gpus[0]]
        lines += ["", f"Update on the GPU: {train['cpu']['update_s_per_rollout'] / g['update_s_per_rollout']:.1f}x the CPU's; "
                      f"end to end {g['env_steps_per_s'] / train['cpu']['env_steps_per_s']:.2f}x."]
    lines += ["", "The batched env alone (random actions, resets as episodes end):", "", "| threads | env steps/s |", "|---:|---:|"]
    lines += [f"| {t} | {v:,.0f} |" for t, v in env.items()]
    if warp is None:
        lines += ["", "The Warp backend was not measured: mujoco_warp is not installed here."]
    else:
        lines += ["", "The batched env on the MuJoCo Warp backend against `mujoco.batch` on 1 thread (full randomization, "
                      "random actions, side by side; Warp's first step, which compiles or loads the kernels and captures "
                      "the graphs, is timed apart):", "",
                  "| worlds | Warp device | warp env steps/s | mujoco_batch env steps/s | warp / mujoco_batch | first step s |",
                  "|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {r['n_envs']} | {r['warp_device']} | {r['median_env_steps_per_s']['warp']:,.0f} | "
                  f"{r['median_env_steps_per_s']['mujoco_batch']:,.0f} | {r['warp_over_mujoco_batch']:.2f}x | "
                  f"{r['first_step_s']['warp']:.1f} |" for r in warp]
    md = "\n".join(lines) + "\n"
    print(md)
    if not args.no_write:
        write_json(ROOT / "benchmarks" / "results" / "gpu_large.json", data)
        write_text(ROOT / "benchmarks" / "results" / "gpu_large.md", md)


if __name__ == "__main__":
    main()
