"""Env steps per second of the batched VecEnv against SB3's VecEnvs and bare physics.

Hopper-v5 with the full randomization stack (training box re-sampled at every reset, and the
held-out sensor terms, observation noise/bias/scale and action delay, sampled off nominal),
64 envs, random actions, resetting as episodes end. Contenders, side by side in one run:

- ``batched_T``: :class:`~rlsim2real.batched.BatchedVecEnv` on T = 1 and 2 threads;
- ``batched_T_no_dr``: the same without any randomization term (the spec's parameters
  removed), for the randomization's cost end to end (which includes what other masses and
  frictions do to the physics and to episode lengths);
- ``batched_T_drawn_once``: no randomization term either, but every world's model fields
  written once, before the run, with a draw from the same training box: the randomized
  physics without the randomization machinery (re-drawing and re-writing at every reset,
  ``mj_setConst``, sensor noise and action delay at every step), for the machinery's cost
  with the physics held alike;
- ``dummy``: ``DummyVecEnv`` of ``Monitor(make_env(...))`` workers (``make_vec_env``);
- ``subproc``: ``SubprocVecEnv`` of the same workers, one process each (started with
  ``fork``: 64 forkserver workers would each import torch, more memory than this machine has);
- ``bare_T``: ``mujoco.batch`` alone on T threads: the same model, actions and resets
  (``mj_resetData`` + ``mj_forward`` of the worlds ``batched_1`` reset at that step), nothing else.

Every round runs each contender on the same chunk of actions in turn, chunk after chunk
(the order reversed every other round), so changes in machine load hit all of them alike;
ratios are taken per round, then their median. Throughput is given per second of wall time
and per CPU-second (this process's threads plus, for SubprocVecEnv, its workers' CPU time
from /proc), the second being what a loaded machine disturbs least.

Run:
    python benchmarks/bench_batched_env.py                 # writes benchmarks/results/batched_env.{json,md}
    python benchmarks/bench_batched_env.py --rounds 2 --steps 200 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from mujoco import batch as mj_batch  # noqa: E402
from stable_baselines3.common.vec_env import SubprocVecEnv  # noqa: E402

import rlsim2real as rs  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402
from benchmarks.bench_env_throughput import SENSOR_RANGES, full_stack  # noqa: E402
from benchmarks.machine import describe, load_note, machine  # noqa: E402
from rlsim2real import BoxDistribution, ParamSpace  # noqa: E402
from rlsim2real.batched import BatchedVecEnv  # noqa: E402
from rlsim2real.batched.randomization import BatchedDynamics  # noqa: E402
from rlsim2real.training import _worker, make_vec_env  # noqa: E402

GOALS = {"batched_2_over_subproc": 2.5, "batched_over_bare": 0.85, "randomization_cost": 0.05}


class BarePhysics:
    """``mujoco.batch`` alone: controls in, ``nstep`` physics steps, resets replayed."""

    def __init__(self, model, n: int, threads: int, frame_skip: int) -> None:
        self.batch = mj_batch.Batch(model, n, threads)
        self.ctrl = self.batch.bind("ctrl")
        self.frame_skip = frame_skip
        self.resets: list[np.ndarray] = []

    def reset(self) -> None:
        self.batch.reset()

    def step(self, actions: np.ndarray, k: int) -> None:
        self.ctrl[...] = actions
        self.batch.step(nstep=self.frame_skip)
        ids = self.resets[k]
        if ids.size:
            self.batch.reset(ids)


def children_cpu(env) -> float:
    """CPU seconds the worker processes of a SubprocVecEnv have used (0 for other envs)."""
    total = 0
    for process in getattr(env, "processes", ()):
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def run_chunk(name: str, env, actions: np.ndarray, recorder: list | None) -> tuple[float, float, int]:
    """Step ``env`` through ``actions``; returns (wall seconds, CPU seconds of this process
    and of the env's worker processes, episodes ended)."""
    episodes = 0
    cpu = time.process_time() + children_cpu(env)
    start = time.perf_counter()
    if isinstance(env, BarePhysics):
        for k, a in enumerate(actions):
            env.step(a, k)
    else:
        for a in actions:
            _, _, dones, _ = env.step(a)
            episodes += int(dones.sum())
            if recorder is not None:
                recorder.append(np.flatnonzero(dones).astype(np.int32))
    wall = time.perf_counter() - start
    return wall, time.process_time() + children_cpu(env) - cpu, episodes


class CodeTimer:
    """Adds up the main thread's CPU time inside the randomization code of a batched env:
    sampling (the resetting worlds' draws and the values they report), writing the vectors
    into the worlds (model fields, mj_setConst, sensor and delay settings), and the per-step
    sensor noise and action delay."""

    def __init__(self, venv: BatchedVecEnv) -> None:
        self.seconds = 0.0
        rnd = venv.randomization
        for owner, name in [(rnd, "draw"), (rnd, "apply"), (rnd.noise, "observe"), (rnd.delay, "act"),
                            (rnd.delay, "start_episode")]:
            setattr(owner, name, self._timed(getattr(owner, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - start

        return timed


def drawn_once(plain, spec, n: int, threads: int, seed: int) -> BatchedVecEnv:
    """A batched env without randomization terms whose worlds hold one draw each of the
    spec's training box, written into their model fields before the run."""
    venv = BatchedVecEnv(plain, n, seed=0, threads=threads)
    model_terms = spec.params.select("model")
    values = BoxDistribution(model_terms).sample_batch(np.random.default_rng(seed), n)
    BatchedDynamics(venv.backend, model_terms).apply(np.arange(n), values)
    return venv


def randomization_share(spec, dist, n: int, steps: int) -> dict:
    """The share of a 1-thread batched env's CPU time spent in its randomization code."""
    venv = BatchedVecEnv(spec, n, seed=1, distribution=dist, threads=1)
    timer = CodeTimer(venv)
    venv.seed(1)
    venv.reset()
    actions = np.random.default_rng(1).uniform(-1, 1, (steps, n, 3)).astype(np.float32)
    timer.seconds = 0.0
    start = time.thread_time()
    for a in actions:
        venv.step(a)
    total = time.thread_time() - start
    venv.close()
    return {"steps": steps, "cpu_seconds": total, "randomization_cpu_seconds": timer.seconds,
            "share": timer.seconds / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600, help="VecEnv steps per round and contender")
    parser.add_argument("--chunk", type=int, default=100, help="VecEnv steps before switching contender")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    n = args.n_envs
    load_before = os.getloadavg()

    spec = rs.load_env_spec("hopper")
    dist = full_stack(spec)
    plain = replace(spec, params=ParamSpace(), heldout_params=ParamSpace())
    envs = {
        "batched_1": BatchedVecEnv(spec, n, seed=0, distribution=dist, threads=1),
        "batched_2": BatchedVecEnv(spec, n, seed=0, distribution=dist, threads=2),
        "batched_1_no_dr": BatchedVecEnv(plain, n, seed=0, threads=1),
        "batched_2_no_dr": BatchedVecEnv(plain, n, seed=0, threads=2),
        "batched_1_drawn_once": drawn_once(plain, spec, n, 1, seed=1),
        "batched_2_drawn_once": drawn_once(plain, spec, n, 2, seed=1),
        "dummy": make_vec_env(spec, n, 0, dist, "dummy"),
        "subproc": SubprocVecEnv([_worker(spec, i, dist) for i in range(n)], start_method="fork"),
    }
    frame_skip = envs["batched_1"].task.frame_skip
    model = envs["batched_1"].backend.model
    for threads in (1, 2):
        envs[f"bare_{threads}"] = BarePhysics(model, n, threads, frame_skip)
    for env in envs.values():
        if not isinstance(env, BarePhysics):
            env.seed(0)
        env.reset()
    params = envs["batched_2"].get_attr("params", indices=[0])[0]
    idle = [k for k, v in params.items() if v == {p.name: p.identity for p in spec.all_params}[k]]
    if idle:
        raise SystemExit(f"benchmark misconfigured: parameters at nominal: {idle}")

    rng = np.random.default_rng(0)
    names = list(envs)
    seconds = {k: [0.0] * args.rounds for k in names}
    cpu_seconds = {k: [0.0] * args.rounds for k in names}
    episodes = {k: [0] * args.rounds for k in names}
    # Warm-up: one chunk each.
    warm = rng.uniform(-1, 1, (args.chunk, n, 3)).astype(np.float32)
    for name in names:
        if isinstance(envs[name], BarePhysics):
            envs[name].resets = [np.zeros(0, np.int32)] * args.chunk
        run_chunk(name, envs[name], warm, None)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for start in range(0, args.steps, args.chunk):
            actions = rng.uniform(-1, 1, (min(args.chunk, args.steps - start), n, 3)).astype(np.float32)
            resets: list[np.ndarray] = []
            # batched_1 runs first in the chunk: its resets are what the bare batches replay.
            for name in ["batched_1", *[x for x in order if x != "batched_1"]]:
                env = envs[name]
                if isinstance(env, BarePhysics):
                    env.resets = resets
                wall, cpu, eps = run_chunk(name, env, actions, resets if name == "batched_1" else None)
                seconds[name][r] += wall
                cpu_seconds[name][r] += cpu
                episodes[name][r] += eps
        rates = {k: n * args.steps / seconds[k][r] for k in names}
        print(f"round {r}: " + "  ".join(f"{k} {v:,.0f}" for k, v in rates.items()), flush=True)
    for env in envs.values():
        if not isinstance(env, BarePhysics):
            env.close()

    per_round = {k: [n * args.steps / s for s in seconds[k]] for k in names}
    median = {k: statistics.median(v) for k, v in per_round.items()}
    per_cpu = {k: [n * args.steps / s for s in cpu_seconds[k]] for k in names}
    median_cpu = {k: statistics.median(v) for k, v in per_cpu.items()}

    def ratio(a: str, b: str, table: dict = per_round) -> float:
        return statistics.median([x / y for x, y in zip(table[a], table[b])])

    ratios = {
        "batched_2_over_subproc": ratio("batched_2", "subproc"),
        "batched_1_over_subproc": ratio("batched_1", "subproc"),
        "batched_2_over_dummy": ratio("batched_2", "dummy"),
        "batched_1_over_dummy": ratio("batched_1", "dummy"),
        "batched_1_over_bare_1": ratio("batched_1", "bare_1"),
        "batched_2_over_bare_2": ratio("batched_2", "bare_2"),
        "randomization_cost_1": 1.0 - ratio("batched_1", "batched_1_no_dr"),
        "randomization_cost_2": 1.0 - ratio("batched_2", "batched_2_no_dr"),
        "machinery_cost_1": 1.0 - ratio("batched_1", "batched_1_drawn_once"),
        "machinery_cost_2": 1.0 - ratio("batched_2", "batched_2_drawn_once"),
    }
    # Per CPU-second (this process's threads, and SubprocVecEnv's workers): the work each
    # contender does per env step, which other jobs on the machine disturb much less.
    ratios_cpu = {
        "batched_1_over_subproc": ratio("batched_1", "subproc", per_cpu),
        "batched_1_over_dummy": ratio("batched_1", "dummy", per_cpu),
        "batched_1_over_bare_1": ratio("batched_1", "bare_1", per_cpu),
        "batched_2_over_bare_2": ratio("batched_2", "bare_2", per_cpu),
        "randomization_cost_1": 1.0 - ratio("batched_1", "batched_1_no_dr", per_cpu),
        "randomization_cost_2": 1.0 - ratio("batched_2", "batched_2_no_dr", per_cpu),
        "machinery_cost_1": 1.0 - ratio("batched_1", "batched_1_drawn_once", per_cpu),
        "machinery_cost_2": 1.0 - ratio("batched_2", "batched_2_drawn_once", per_cpu),
    }
    share = randomization_share(spec, dist, n, args.steps)
    print(f"randomization code: {share['share']:.1%} of the 1-thread batched env's CPU time")
    for k, v in ratios.items():
        print(f"{k} (wall): {v:.3f}")
    for k, v in ratios_cpu.items():
        print(f"{k} (cpu): {v:.3f}")
    load_after = os.getloadavg()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    result = {
        "benchmark": "batched_env",
        "command": command,
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "n_envs": n,
        "steps_per_round": args.steps,
        "chunk": args.chunk,
        "rounds": args.rounds,
        "randomization": f"hopper training box + sensor terms {SENSOR_RANGES}, re-sampled at every reset",
        "example_params": params,
        "env_steps_per_s": per_round,
        "median_env_steps_per_s": median,
        "env_steps_per_cpu_s": per_cpu,
        "median_env_steps_per_cpu_s": median_cpu,
        "episodes": episodes,
        "ratios": ratios,
        "ratios_cpu": ratios_cpu,
        "randomization_code_share": share,
        "goals": GOALS,
    }
    previous = args.out / "batched_env.json"
    if previous.exists():  # the last recorded run's ratios, shown next to the new ones
        old = json.loads(previous.read_text())
        result["previous"] = {"ratios": old["ratios"], "ratios_cpu": old["ratios_cpu"],
                              "randomization_code_share": old["randomization_code_share"]["share"],
                              "load_average_before": old["load_average_before"]}
    if args.no_write:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "batched_env.json", result)  # atomically: write, then rename
    write_text(args.out / "batched_env.md", report(result))
    print(f"wrote {args.out / 'batched_env.json'} and .md")


LABELS = {
    "batched_1": "BatchedVecEnv, 1 thread",
    "batched_2": "BatchedVecEnv, 2 threads",
    "batched_1_no_dr": "BatchedVecEnv, 1 thread, no randomization",
    "batched_2_no_dr": "BatchedVecEnv, 2 threads, no randomization",
    "batched_1_drawn_once": "BatchedVecEnv, 1 thread, each world's physics drawn once, no machinery",
    "batched_2_drawn_once": "BatchedVecEnv, 2 threads, each world's physics drawn once, no machinery",
    "dummy": "DummyVecEnv (make_vec_env)",
    "subproc": "SubprocVecEnv, 64 processes",
    "bare_1": "bare mujoco.batch, 1 thread",
    "bare_2": "bare mujoco.batch, 2 threads",
}


def report(res: dict) -> str:
    rows = "\n".join(
        f"| {LABELS[k]} | {res['median_env_steps_per_s'][k]:,.0f} | "
        + " / ".join(f"{x:,.0f}" for x in v) + f" | {res['median_env_steps_per_cpu_s'][k]:,.0f} | {sum(res['episodes'][k]):,} |"
        for k, v in res["env_steps_per_s"].items()
    )
    r, g, c = res["ratios"], res["goals"], res["ratios_cpu"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    before = res.get("previous")

    def prev(key: str, unit: str) -> str:
        if not before:
            return "-"
        show = (lambda x: f"{x:.1%}") if unit == "%" else (lambda x: f"{x:.2f}x")
        wall, cpu = before["ratios"].get(key), before["ratios_cpu"].get(key)
        return " / ".join(show(x) if x is not None else "-" for x in (wall, cpu))

    def previous_note() -> str:
        if not before:
            return ""
        load = ", ".join(f"{x:.1f}" for x in before["load_average_before"])
        return f"The last column is the run recorded before this one (load average {load} before it).\n\n"

    def prev_share() -> str:
        return f"{before['randomization_code_share']:.1%}" if before else "-"

    return f"""# Batched env throughput: Hopper-v5, {res['n_envs']} envs, full randomization

Command: `{res['command']}`

{describe(res['machine'])}

{load_note(res['load_average_before'], res['load_average_after'], res['machine']['cores'])} The contenders ran side by side, alternating every
{res['chunk']} VecEnv steps, and the ratios below are medians of per-round ratios.
{res['rounds']} rounds of {res['steps_per_round']:,} VecEnv steps ({res['steps_per_round'] * res['n_envs']:,} env steps)
per contender; random actions, resetting as episodes end. Randomization: {res['randomization']}.
Steps/s are wall-clock env steps (VecEnv steps x {res['n_envs']}).

| contender | median env steps/s (wall) | per round (wall) | median env steps per CPU-second | episodes |
|---|---|---|---|---|
{rows}

| ratio (median of per-round ratios) | wall | per CPU-second | goal | previous run (wall / CPU) |
|---|---|---|---|---|
| batched 2 threads / SubprocVecEnv | {r['batched_2_over_subproc']:.2f}x | | >= {g['batched_2_over_subproc']}x (wall): {verdict(r['batched_2_over_subproc'] >= g['batched_2_over_subproc'])} | {prev('batched_2_over_subproc', 'x')} |
| batched 1 thread / SubprocVecEnv | {r['batched_1_over_subproc']:.2f}x | {c['batched_1_over_subproc']:.2f}x | | {prev('batched_1_over_subproc', 'x')} |
| batched 2 threads / DummyVecEnv | {r['batched_2_over_dummy']:.2f}x | | | {prev('batched_2_over_dummy', 'x')} |
| batched 1 thread / DummyVecEnv | {r['batched_1_over_dummy']:.2f}x | {c['batched_1_over_dummy']:.2f}x | | {prev('batched_1_over_dummy', 'x')} |
| batched / bare physics, 1 thread | {r['batched_1_over_bare_1']:.1%} | {c['batched_1_over_bare_1']:.1%} | >= {g['batched_over_bare']:.0%}: {verdict(c['batched_1_over_bare_1'] >= g['batched_over_bare'])} (CPU) | {prev('batched_1_over_bare_1', '%')} |
| batched / bare physics, 2 threads | {r['batched_2_over_bare_2']:.1%} | {c['batched_2_over_bare_2']:.1%} | >= {g['batched_over_bare']:.0%}: {verdict(c['batched_2_over_bare_2'] >= g['batched_over_bare'])} (CPU) | {prev('batched_2_over_bare_2', '%')} |
| randomization's cost, 1 thread | {r['randomization_cost_1']:.1%} | {c['randomization_cost_1']:.1%} | <= {g['randomization_cost']:.0%}: {verdict(c['randomization_cost_1'] <= g['randomization_cost'])} (CPU) | {prev('randomization_cost_1', '%')} |
| randomization's cost, 2 threads | {r['randomization_cost_2']:.1%} | {c['randomization_cost_2']:.1%} | <= {g['randomization_cost']:.0%}: {verdict(c['randomization_cost_2'] <= g['randomization_cost'])} (CPU) | {prev('randomization_cost_2', '%')} |
| randomization machinery's cost at the same physics (drawn once), 1 thread | {r['machinery_cost_1']:.1%} | {c['machinery_cost_1']:.1%} | <= {g['randomization_cost']:.0%}: {verdict(c['machinery_cost_1'] <= g['randomization_cost'])} (CPU) | {prev('machinery_cost_1', '%')} |
| randomization machinery's cost at the same physics (drawn once), 2 threads | {r['machinery_cost_2']:.1%} | {c['machinery_cost_2']:.1%} | <= {g['randomization_cost']:.0%}: {verdict(c['machinery_cost_2'] <= g['randomization_cost'])} (CPU) | {prev('machinery_cost_2', '%')} |
| randomization code's share of the batched env's CPU time, 1 thread | | {res['randomization_code_share']['share']:.1%} | <= {g['randomization_cost']:.0%}: {verdict(res['randomization_code_share']['share'] <= g['randomization_cost'])} | {prev_share()} |

{previous_note()}Three measures of the randomization's cost. End to end (randomized / not randomized) also
counts what randomization does to the physics itself: heavier or lighter links, other
friction and gains change the solver's work per step and how soon episodes end, so it is
not the cost of the machinery alone. At the same physics (randomized / drawn once), the
comparison env has no randomization term but each of its worlds holds one draw of the same
training box in its model fields, written before the run: the same kind of physics, without
the re-draws, re-writes and `mj_setConst` at every reset or the per-step sensor noise and
action delay; it counts the machinery end to end, thread waits included. The code share times the randomization code directly
(the main thread's CPU time inside the resetting worlds' draws and the values they report,
the writes into the worlds' model fields with `mj_setConst`, the sensor and delay settings,
and the per-step noise and delay)
over a separate {res['randomization_code_share']['steps']:,}-step run of the 1-thread batched env.

The batched env, DummyVecEnv and SubprocVecEnv ran the same episodes (the same seeds give
the same trajectories, see the episode counts): the batched env reproduces the Gymnasium
workers exactly.

Wall-clock ratios answer "how much faster on this machine"; on a machine this busy they
swing from round to round and from run to run, SubprocVecEnv's most (its 64 processes compete
with the other jobs for the two cores), so a change in them between two runs at different
loads says little. Per-CPU-second ratios count the work each contender does per env
step (all of this process's threads; for SubprocVecEnv its worker processes too), which the
other jobs disturb much less: the bare-physics and randomization goals are judged on them,
the SubprocVecEnv goal (parallel throughput) on wall time.

Bare physics: the same model, actions and resets (`mj_resetData` + `mj_forward` of the
worlds the 1-thread batched env reset at that step), and nothing else: no observations,
rewards, randomization or bookkeeping. Randomization's cost: 1 - (randomized / not randomized),
where "not randomized" is the same env with every parameter removed from the spec (its
episodes end at a somewhat different rate, see the episode counts). Random actions end a
Hopper episode every {res['n_envs'] * res['steps_per_round'] * res['rounds'] / max(1, sum(res['episodes']['batched_1'])):.0f} steps on average, so a world is reset and
re-drawn far more often than under a policy that hops: this is the reset-heavy case, and most
of the randomization code's time (the draws, the model-field writes and `mj_setConst`) is
spent at resets. A batch step with two simulation threads ends when both have finished
theirs: when other jobs keep the cores busy, the second thread often waits for a core and
gains little.
"""


if __name__ == "__main__":
    main()
