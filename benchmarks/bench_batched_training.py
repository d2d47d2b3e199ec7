"""Training steps per second end to end: rlsim2real's RecurrentPPO on the batched env against
SB3's MLP PPO on SubprocVecEnv, Hopper-v5 with the training box randomized, 64 envs.

Contenders, in one process, interleaved round by round (the order reversed every other
round) so that a noisy machine slows them alike:

- ``ours_batched_T``: :class:`rlsim2real.agents.RecurrentPPO` with the ``recurrent_ppo`` agent
  preset's policy (MLP encoder, 64-unit LSTM), on :class:`~rlsim2real.batched.BatchedVecEnv`
  with T simulation threads (``--threads``, default 1 and 2), what ``vec_env = "batched"``
  trains with;
- ``sb3_mlp_subproc``: ``stable_baselines3.PPO("MlpPolicy")`` on ``SubprocVecEnv`` of the
  project's randomized Gymnasium workers (``make_env``, one process each, started with
  ``fork``), what ``vec_env = "subproc"`` gives an MLP agent.

Both train on the same spec, seed, ``n_steps``, ``batch_size``, ``n_epochs`` (by default the
``hopper_udr`` experiment's 4,096-step rollout, batch of 256 and 4 epochs, the rollout spread
over 64 envs) and SB3's defaults for everything else, behind ``VecNormalize`` as ``normalize = true`` runs are. Each
round calls ``learn`` for ``--rollouts`` rollouts (``reset_num_timesteps=False``); a callback
splits wall time into rollout collection and the update. Round 0 warms up and is not
counted. Steps/s are env steps over wall time of ``learn`` (collection + update); ratios are
medians of per-round ratios.

Run:
    python benchmarks/bench_batched_training.py                  # writes benchmarks/results/batched_training.{json,md}
    python benchmarks/bench_batched_training.py --rounds 1 --no-write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch as th  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize  # noqa: E402

import rlsim2real as rs  # noqa: E402
from benchmarks.bench_batched_env import children_cpu  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402
from benchmarks.machine import describe, load_note, machine  # noqa: E402
from rlsim2real.agents import RecurrentPPO  # noqa: E402
from rlsim2real.batched import BatchedVecEnv  # noqa: E402
from rlsim2real.distributions import BoxDistribution  # noqa: E402
from rlsim2real.specs import load_agent_spec  # noqa: E402
from rlsim2real.training import _policy_kwargs, _worker  # noqa: E402

GOAL = 1.0
BASELINE = "sb3_mlp_subproc"


def label(name: str) -> str:
    if name == BASELINE:
        return "SB3 PPO (MlpPolicy), SubprocVecEnv"
    threads = int(name.rsplit("_", 1)[1])
    return f"rlsim2real RecurrentPPO (MlpLstmPolicy), BatchedVecEnv, {threads} thread{'s' if threads > 1 else ''}"


class PhaseTimer(BaseCallback):
    """Wall time spent collecting rollouts; the rest of ``learn`` is the update."""

    def __init__(self) -> None:
        super().__init__()
        self.rollout_s = 0.0

    def _on_rollout_start(self) -> None:
        self._t0 = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.rollout_s += time.perf_counter() - self._t0

    def _on_step(self) -> bool:
        return True


def build(name: str, spec, args) -> tuple[object, object]:
    """The model and its (unwrapped) VecEnv."""
    hyper = dict(n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs, seed=args.seed, device="cpu")
    dist = BoxDistribution(spec.params)
    if name != BASELINE:
        inner = BatchedVecEnv(spec, args.n_envs, seed=args.seed, distribution=dist, threads=int(name.rsplit("_", 1)[1]))
        inner.seed(args.seed)
        agent = load_agent_spec("recurrent_ppo")
        model = RecurrentPPO(agent.policy, VecNormalize(inner), policy_kwargs=_policy_kwargs(agent.policy_kwargs), **hyper)
    else:
        # fork: 64 forkserver workers would each import torch, more memory than this machine has.
        inner = SubprocVecEnv([_worker(spec, args.seed + i, dist) for i in range(args.n_envs)], start_method="fork")
        inner.seed(args.seed)
        model = PPO("MlpPolicy", VecNormalize(inner), **hyper)
    return model, inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=64, help="steps per env and rollout")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="counted rounds (round 0, a warm-up, comes first)")
    parser.add_argument("--rollouts", type=int, default=2, help="rollouts (learn + update) per round and contender")
    parser.add_argument("--threads", default="1,2", help="simulation threads of the batched env, one contender each")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    th.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()
    spec = rs.load_env_spec("hopper")
    steps = args.n_envs * args.n_steps
    contenders = [*(f"ours_batched_{int(t)}" for t in args.threads.split(",")), BASELINE]
    built = {name: build(name, spec, args) for name in contenders}
    wall = {k: [] for k in contenders}
    rollout = {k: [] for k in contenders}
    cpu = {k: [] for k in contenders}
    for r in range(args.rounds + 1):
        for name in contenders if r % 2 == 0 else contenders[::-1]:
            model, inner = built[name]
            timer = PhaseTimer()
            n = 1 if r == 0 else args.rollouts
            c0 = time.process_time() + children_cpu(inner)
            t0 = time.perf_counter()
            model.learn(n * steps, callback=timer, reset_num_timesteps=r == 0)
            seconds = time.perf_counter() - t0
            used = time.process_time() + children_cpu(inner) - c0
            print(f"round {r} {name}: {n * steps / seconds:,.0f} steps/s ({timer.rollout_s:.1f}s collecting, "
                  f"{seconds - timer.rollout_s:.1f}s updating)", flush=True)
            if r > 0:
                wall[name].append(seconds)
                rollout[name].append(timer.rollout_s)
                cpu[name].append(used)
    for model, inner in built.values():
        model.get_env().close()
    per_round = {k: [args.rollouts * steps / s for s in v] for k, v in wall.items()}
    ratios = {k: [a / b for a, b in zip(per_round[k], per_round[BASELINE])] for k in contenders if k != BASELINE}
    summary = {
        k: {
            "median_steps_per_s": statistics.median(per_round[k]),
            "steps_per_s": per_round[k],
            "collect_s_per_rollout": statistics.median(rollout[k]) / args.rollouts,
            "update_s_per_rollout": statistics.median([w - c for w, c in zip(wall[k], rollout[k])]) / args.rollouts,
            "steps_per_cpu_s": statistics.median([args.rollouts * steps / c for c in cpu[k]]),
        }
        for k in contenders
    }
    ratio = {k: statistics.median(v) for k, v in ratios.items()}
    for k, v in ratio.items():
        print(f"{k} / {BASELINE}: {v:.2f}x (goal >= {GOAL}x)")
    result = {
        "benchmark": "batched_training",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "settings": {"env": "hopper (training box re-sampled at every reset)", "n_envs": args.n_envs,
                     "n_steps": args.n_steps, "batch_size": args.batch_size, "n_epochs": args.n_epochs,
                     "rounds": args.rounds, "rollouts_per_round": args.rollouts, "threads": args.threads,
                     "torch_threads": args.torch_threads, "seed": args.seed, "normalize": True},
        "contenders": summary,
        "ratios_per_round": ratios,
        "ratios": ratio,
        "goal": GOAL,
    }
    if args.no_write:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "batched_training.json", result)  # atomically: write, then rename
    write_text(args.out / "batched_training.md", report(result))
    print(f"wrote {args.out / 'batched_training.json'} and .md")


def report(res: dict) -> str:
    s = res["settings"]
    rows = "\n".join(
        f"| {label(k)} | {c['median_steps_per_s']:,.0f} | " + " / ".join(f"{x:,.0f}" for x in c["steps_per_s"])
        + f" | {c['collect_s_per_rollout']:.2f} | {c['update_s_per_rollout']:.2f} | {c['steps_per_cpu_s']:,.0f} |"
        for k, c in res["contenders"].items()
    )
    ratios = "\n".join(
        f"| {label(k)} / MLP PPO on SubprocVecEnv | {v:.2f}x | "
        + " / ".join(f"{x:.2f}" for x in res["ratios_per_round"][k])
        + f" | >= {res['goal']}x: {'met' if v >= res['goal'] else '**not met**'} |"
        for k, v in res["ratios"].items()
    )
    return f"""# Training throughput end to end: batched env + RecurrentPPO vs SubprocVecEnv + MLP PPO

Command: `{res['command']}`

{describe(res['machine'])}

{load_note(res['load_average_before'], res['load_average_after'], res['machine']['cores'])} The two contenders ran in one process, alternating
round by round (the order reversed every other round), and the ratio is the median of the
per-round ratios.

Hopper-v5 with the spec's training box re-sampled at every reset, {s['n_envs']} envs, both
behind `VecNormalize`; `n_steps` {s['n_steps']} ({s['n_envs'] * s['n_steps']:,} env steps per rollout),
`batch_size` {s['batch_size']}, `n_epochs` {s['n_epochs']}, SB3's defaults for the rest; seed {s['seed']};
{s['rounds']} counted rounds of {s['rollouts_per_round']} rollout(s) each after a one-rollout warm-up;
torch on {s['torch_threads']} thread(s).
Steps/s are env steps over the wall time of `learn` (collection and update).

| contender | median steps/s | per round | collect s/rollout | update s/rollout | steps per CPU-second |
|---|---|---|---|---|---|
{rows}

| ratio (median of per-round ratios) | value | per round | goal |
|---|---|---|---|
{ratios}

CPU-seconds count this process's threads and, for SubprocVecEnv, its worker processes:
steps per CPU-second is the work per step, which other jobs disturb least. The recurrent agent
does more work per step than the MLP (an LSTM over each sequence in the update, a recurrent
state carried in collection); the batched env is what pays for it. A batch step with two
simulation threads ends when both have finished theirs: when other jobs keep the cores busy,
the second thread often waits for a core, and the 2-thread contender's rounds swing more than
the 1-thread one's. The update runs the critic's LSTM on a second thread beside the actor's
(`parallel_update`, automatic with one torch thread on two or more cores).
"""


if __name__ == "__main__":
    main()
