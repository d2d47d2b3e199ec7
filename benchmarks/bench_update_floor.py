"""Where the recurrent update's time goes, against the floor its LSTM kernels set (Hopper-v5).

For each configuration of ``bench_agent_throughput.py`` (sb3-contrib's defaults at one env;
8 envs), every round, sb3-contrib's RecurrentPPO and ours each collect a fresh rollout (the
cost of a minibatch depends on its episodes' lengths, which change as the policies learn),
and the variants below are timed on it, one after the other. Per gradient step (one
minibatch: forward, backward, clipping, Adam) it reports medians over the rounds of:

- sb3-contrib's wall time, and the time the update goal (12x) leaves us;
- ours, in wall and CPU time, with the critic's branch on a second thread and without;
- the CPU time of oneDNN's LSTM kernels inside our one-thread update (torch profiler);
- our two LSTMs' forward and backward alone, on the same minibatches with the same segment
  plans: one after the other, and side by side on two threads. Side by side is the floor of
  the two-thread update for as long as these kernels do the recurrence; whatever else the
  step does (heads, losses, sampling, clipping, Adam) must fit between it and the goal.

Run:
    python benchmarks/bench_update_floor.py               # ~5 min on 2 cores
    python benchmarks/bench_update_floor.py --rounds 2    # smoke run

Writes benchmarks/results/update_floor.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch as th
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_agent_throughput import CONFIGS, build  # noqa: E402
from benchmarks.machine import describe, load_note, machine  # noqa: E402
from rlsim2real.agents.segments import run_planned  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 12.0
LSTM_KERNELS = ("aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward")


def steps_per_train(model) -> int:
    """Gradient steps in one ``train()``: epochs x minibatches."""
    total = model.n_steps * model.n_envs
    return model.n_epochs * -(-total // model.batch_size)


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def serial_train(model) -> None:
    """``train()`` with the critic's branch on this thread too."""
    model.parallel_update = False
    try:
        model.train()
    finally:
        model.parallel_update = None


def lstm_kernel_cpu_s(model) -> float:
    """CPU seconds that oneDNN's LSTM forward and backward kernels take in one ``train()``
    on one thread (where the profiler sees every kernel)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        serial_train(model)
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in LSTM_KERNELS) / 1e6


def lstm_forward_backward(features, states, lstm, plan) -> None:
    run_planned(features, states, lstm, plan).sum().backward()


def lstm_jobs(model) -> list[tuple[Callable[[], None], Callable[[], None]]]:
    """Per minibatch of one epoch: the actor's and the critic's LSTM forward + backward."""
    policy = model.policy
    jobs = []
    for batch in model.rollout_buffer.get_sequences(model.batch_size):
        with th.no_grad():
            pi_features, vf_features = (f.detach() for f in policy.branch_features(batch.observations))
        jobs.append((partial(lstm_forward_backward, pi_features, batch.lstm_states.pi, policy.lstm_actor, batch.plan),
                     partial(lstm_forward_backward, vf_features, batch.lstm_states.vf, policy.lstm_critic, batch.plan)))
    return jobs


def measure(name: str, cfg: dict, rounds: int, seed: int) -> dict:
    ref, ours = build("sb3_contrib", cfg, seed), build("ours", cfg, seed)
    callbacks = {}
    for model in (ref, ours):
        model.learn(cfg["n_envs"] * cfg["n_steps"])  # sets the agent up: one rollout, one update
        callbacks[model] = model._init_callback(None)
    steps = steps_per_train(ours)
    assert steps == steps_per_train(ref)
    pool = ThreadPoolExecutor(1, initializer=th.set_num_threads, initargs=(th.get_num_threads(),))
    jobs: list[tuple[Callable[[], None], Callable[[], None]]] = []

    def lstms(mode):
        for actor, critic in jobs:
            if mode == "actor":
                actor()
            elif mode == "in_turn":
                actor()
                critic()
            else:
                job = pool.submit(critic)
                actor()
                job.result()

    variants = {
        "sb3_contrib": (ref.train, steps),
        "ours": (ours.train, steps),
        "ours_serial": (lambda: serial_train(ours), steps),
        "lstm_actor_alone": (lambda: lstms("actor"), None),
        "lstms_in_turn": (lambda: lstms("in_turn"), None),
        "lstms_side_by_side": (lambda: lstms("side_by_side"), None),
    }
    samples = {v: {"wall": [], "cpu": []} for v in variants}
    kernels = []
    for rnd in range(rounds + 1):
        for model in (ref, ours):
            model.collect_rollouts(model.env, callbacks[model], model.rollout_buffer, model.n_steps)
        jobs[:] = lstm_jobs(ours)  # one epoch's minibatches of this rollout
        for v, (fn, n) in variants.items():
            wall, cpu = timed(fn)
            if rnd > 0:  # round 0 warms up
                samples[v]["wall"].append(wall / (n or len(jobs)) * 1e3)
                samples[v]["cpu"].append(cpu / (n or len(jobs)) * 1e3)
        if rnd > 0:
            kernels.append(lstm_kernel_cpu_s(ours) / steps * 1e3)
        print(f"[{name}] round {rnd}: " + ", ".join(f"{v} {samples[v]['wall'][-1]:.2f} ms" for v in variants if samples[v]["wall"]), flush=True)
    kernels_ms = np.median(kernels)
    pool.shutdown()
    med = {v: {k: float(np.median(x)) for k, x in s.items()} for v, s in samples.items()}
    goal_ms = med["sb3_contrib"]["wall"] / GOAL
    floor_ms = med["lstms_side_by_side"]["wall"]
    return {
        "config": cfg,
        "gradient_steps_per_train": steps,
        "ms_per_gradient_step": med,
        "spread_ms": {v: [float(min(s["wall"])), float(max(s["wall"]))] for v, s in samples.items()},
        "lstm_kernels_cpu_ms_in_serial_update": float(kernels_ms),
        "goal_ms": goal_ms,
        "update_speedup_vs_sb3_contrib": med["sb3_contrib"]["wall"] / med["ours"]["wall"],
        "floor_speedup_vs_sb3_contrib": med["sb3_contrib"]["wall"] / floor_ms,
        "side_by_side_slowdown": floor_ms / med["lstm_actor_alone"]["wall"],
        "left_for_the_rest_ms": goal_ms - floor_ms,
        "the_rest_now_ms": med["ours"]["wall"] - floor_ms,
    }


def render(report: dict) -> str:
    lines = ["# The recurrent update against the floor of its LSTM kernels (Hopper-v5)", "",
             f"Command: `{report['command']}`", "", describe(report["machine"]), "",
             load_note(report["load_average_before"], report["load_average_after"], report["machine"]["cores"]), "",
             f"Medians over {report['rounds']} rounds, milliseconds per gradient step (one minibatch: forward, backward, "
             "clipping, Adam), each round on a fresh rollout of each agent.", ""]
    for name, r in report["configs"].items():
        m = r["ms_per_gradient_step"]
        lines += [f"## {name}: {r['config']}", "",
                  "| what | wall ms | CPU ms |", "|---|---:|---:|",
                  f"| sb3-contrib's gradient step | {m['sb3_contrib']['wall']:.2f} | {m['sb3_contrib']['cpu']:.2f} |",
                  f"| ours, critic on a second thread | {m['ours']['wall']:.2f} | {m['ours']['cpu']:.2f} |",
                  f"| ours, one thread | {m['ours_serial']['wall']:.2f} | {m['ours_serial']['cpu']:.2f} |",
                  f"| oneDNN's LSTM kernels inside the one-thread step (profiled) | | {r['lstm_kernels_cpu_ms_in_serial_update']:.2f} |",
                  f"| the actor's LSTM forward + backward alone | {m['lstm_actor_alone']['wall']:.2f} | {m['lstm_actor_alone']['cpu']:.2f} |",
                  f"| both LSTMs, one after the other | {m['lstms_in_turn']['wall']:.2f} | {m['lstms_in_turn']['cpu']:.2f} |",
                  f"| both LSTMs side by side on two threads (the floor) | {m['lstms_side_by_side']['wall']:.2f} | {m['lstms_side_by_side']['cpu']:.2f} |",
                  "",
                  f"- Update vs sb3-contrib: {r['update_speedup_vs_sb3_contrib']:.2f}x; goal {GOAL:.0f}x, "
                  f"a gradient step of {r['goal_ms']:.2f} ms.",
                  f"- The LSTM kernels alone, side by side, would be {r['floor_speedup_vs_sb3_contrib']:.1f}x sb3-contrib's step; "
                  f"side by side they run {r['side_by_side_slowdown']:.2f}x as long as one alone.",
                  f"- Everything else in the step takes {r['the_rest_now_ms']:.2f} ms of wall time past that floor; "
                  + (f"the goal leaves {r['left_for_the_rest_ms']:.2f} ms for it." if r["left_for_the_rest_ms"] >= 0 else
                     f"the goal lies {-r['left_for_the_rest_ms']:.2f} ms below the floor itself, so no saving outside "
                     "these kernels reaches it."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds, each on a fresh rollout (plus one to warm up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per thread")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, Path(__file__).resolve().parents[1]), *sys.argv[1:]]),
        "machine": machine(),
        "settings": {"rounds": args.rounds, "threads": args.threads, "seed": args.seed},
        "rounds": args.rounds,
        "load_average_before": list(os.getloadavg()),
        "configs": {},
    }
    for name, cfg in CONFIGS.items():
        report["configs"][name] = measure(name, cfg, args.rounds, args.seed)
    report["load_average_after"] = list(os.getloadavg())
    write_json(RESULTS / "update_floor.json", report)  # atomically: write, then rename
    write_text(RESULTS / "update_floor.md", render(report))
    print(render(report))


if __name__ == "__main__":
    main()
