"""Uniform, automatic, active DR and SimOpt at the same agent steps, over seeds, on every held-out set.

Trains each strategy's experiment for each seed (one subprocess per run, ``--workers`` at a
time), evaluates every run on the nominal sim and every real set of the env spec, and
reports per set the mean and standard deviation of the per-seed mean returns and success
rates; for automatic DR the final ranges and the distribution's entropy; for active DR the
reference-env steps spent and where the particles ended; for SimOpt each fit, the return of
the real episodes it ran and what it cost. ``--curve SET ...`` also evaluates every checkpoint
of every run on those sets, for the return along training (SimOpt: after each iteration).

    python benchmarks/bench_strategies.py --env inverted_pendulum --seeds 0 1 2 --timesteps 300000 --workers 2
    python benchmarks/bench_strategies.py --env hopper --seeds 0 1 2 --timesteps 1000000 --workers 6
    python benchmarks/bench_strategies.py --env hopper --only active ... --name part_b
    python benchmarks/bench_strategies.py --env hopper --only uniform simopt --timesteps 400000 --curve weak_motors
    python benchmarks/bench_strategies.py --env hopper --merge part_a part_b --name whole

Writes benchmarks/results/strategies_<env>.json and .md (``--no-write``: print only);
``--merge`` joins earlier results files of the same env and budget into one report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402

PAIRS = {
    "inverted_pendulum": {"uniform": "experiments/quickstart.toml", "automatic": "experiments/inverted_pendulum_adr.toml",
                          "active": "experiments/inverted_pendulum_active.toml",
                          "simopt": "experiments/inverted_pendulum_simopt.toml"},
    "hopper": {"uniform": "experiments/hopper_udr.toml", "automatic": "experiments/hopper_adr.toml",
               "active": "experiments/hopper_active.toml", "simopt": "experiments/hopper_simopt.toml"},
}


def curve(out: Path, sets: list[str], episodes: int, env: dict) -> list[dict]:
    """Mean returns on ``sets`` of every checkpoint of a run, in step order."""
    points = []
    for folder in sorted((out / "checkpoints").glob("step_*")):
        step = int(folder.name.split("_")[1])
        proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "evaluate", str(out), "--step", str(step),
                               "--sets", ",".join(sets), "--episodes", str(episodes), "--no-progress"],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"evaluate {out} --step {step} failed:\n{proc.stderr[-2000:]}")
        transfer = json.loads((folder / "transfer.json").read_text())
        points.append({"step": step, "sets": {n: transfer["sets"][n]["mean_return"] for n in sets}})
    return points


def run_one(strategy: str, experiment: str, seed: int, timesteps: int, episodes: int, folder: Path,
            curve_sets: list[str] | None = None) -> dict:
    out = folder / f"{strategy}_{seed}"
    env = {**os.environ, "RLSIM2REAL_TORCH_THREADS": "1"}
    t0 = time.time()
    cmd = [sys.executable, "-m", "rlsim2real.cli", "train", str(ROOT / experiment), "--seed", str(seed),
           "--timesteps", str(timesteps), "--out", str(out), "--no-eval", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    train_seconds = time.time() - t0
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "evaluate", str(out), "--episodes", str(episodes)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"evaluate {out} failed:\n{proc.stderr[-2000:]}")
    transfer = json.loads((out / "transfer.json").read_text())
    summary = json.loads((out / "strategy.json").read_text())
    status = json.loads((out / "run.json").read_text())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "strategy": strategy, "seed": seed, "train_seconds": round(train_seconds, 1), "commit": commit or None,
        "timesteps": transfer["timesteps"], "unstable_fraction": status.get("unstable_fraction"),
        "sets": {name: {"mean_return": s["mean_return"], "success_rate": s["success_rate"]}
                 for name, s in transfer["sets"].items()},
    }
    if curve_sets:
        result["curve"] = curve(out, curve_sets, episodes, env)
    if strategy == "automatic":
        result["ranges"] = summary["ranges"]
        result["entropy_per_dim"] = summary["entropy_per_dim"]
        result["point_dims"] = summary["point_dims"]
        result["expansions"] = summary["expansions"]
    if strategy == "active":
        result["particles"] = summary["particles"]
        result["reference_steps"] = summary["reference_steps"]
        result["rounds"] = summary["rounds"]
    if strategy == "simopt":
        result["fits"] = summary["fits"]
        result["real_episodes"] = summary["real_episodes"]
        result["real_steps"] = summary["real_steps"]
        result["sim_evaluations"] = summary["sim_evaluations"]
        result["fitted"] = summary["fitted"]
    print(f"{strategy} seed {seed}: " + ", ".join(f"{k} {v['mean_return']:.0f}" for k, v in result["sets"].items()), flush=True)
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_table(title: str, runs: list[dict]) -> list[str]:
    """A paragraph and the head of a table with one column per seed."""
    return ["", title, "", "| parameter | uniform box | " + " | ".join(f"seed {r['seed']}" for r in runs) + " |",
            "|---|---|" + "---|" * len(runs)]


def report(args: argparse.Namespace, runs: list[dict], pair: dict, box: dict, m: dict, seconds: float) -> tuple[dict, str]:
    strategies = list(pair)
    sets = list(runs[0]["sets"])
    table: dict[str, dict[str, dict]] = {}
    for s in strategies:
        mine = [r for r in runs if r["strategy"] == s]
        table[s] = {}
        for name in sets:
            ret = mean_std([r["sets"][name]["mean_return"] for r in mine])
            suc = mean_std([r["sets"][name]["success_rate"] for r in mine])
            table[s][name] = {"mean_return": ret[0], "std_return": ret[1], "success_rate": suc[0], "std_success": suc[1]}
    command = " ".join(["python benchmarks/bench_strategies.py", f"--env {args.env}", "--seeds", *map(str, args.seeds),
                        f"--timesteps {args.timesteps}", f"--episodes {args.episodes}", f"--workers {args.workers}",
                        *(["--only", *args.only] if args.only else []), *([f"--name {args.name}"] if args.name else []),
                        *(["--merge", *args.merge] if args.merge else []),
                        *(["--curve", *args.curve] if args.curve else [])])
    data = {"command": command, "env": args.env, "experiments": pair, "seeds": args.seeds, "timesteps": args.timesteps,
            "episodes_per_set": args.episodes, "machine": m, "wall_seconds": round(seconds, 1), "summary": table,
            "training_box": box, "runs": runs}
    lines = [
        f"# {' vs '.join(strategies).capitalize()} DR on `{args.env}`",
        "",
        f"Command: `{command}`",
        "",
        f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.timesteps:,} agent steps per run, "
        f"{args.episodes} deterministic episodes per set and run. Each cell: mean ± standard deviation over seeds of "
        f"the per-run mean return (success rate in brackets). Experiments: " +
        ", ".join(f"{s} = `{e}`" for s, e in pair.items()) + ".",
        "",
        describe(m),
        "",
        "| set | " + " | ".join(strategies) + " | differs from nominal |",
        "|---|" + "---:|" * len(strategies) + "---|",
    ]
    for name in sets:
        cells = [f"{table[s][name]['mean_return']:.0f} ± {table[s][name]['std_return']:.0f} "
                 f"({table[s][name]['success_rate']:.0%})" for s in strategies]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {box['sets'].get(name, '-')} |")
    adr = [r for r in runs if r["strategy"] == "automatic"]
    if adr:
        lines += seed_table("Final ADR ranges per seed (training box of the uniform run in brackets), and the entropy of "
                            "the ADR distribution in nats per dimension over dimensions of positive width:", adr)
        for name in adr[0]["ranges"]:
            lines.append(f"| {name} | {box['params'].get(name, 'nominal')} | " +
                         " | ".join(f"[{r['ranges'][name][0]:.3g}, {r['ranges'][name][1]:.3g}]" for r in adr) + " |")
        lines.append("| entropy (nats/dim) | | " + " | ".join(f"{r['entropy_per_dim']:.2f} ({r['point_dims']} points)" for r in adr) + " |")
        lines.append("| expansions | | " + " | ".join(str(r["expansions"]) for r in adr) + " |")
    active = [r for r in runs if r["strategy"] == "active"]
    if active:
        lines += seed_table("Active DR: reference-env steps (run on the reference env, not trained on) and where the "
                            "particles ended (mean, min and max over particles):", active)
        for name in active[0]["particles"]:
            lines.append(f"| {name} | {box['params'].get(name, 'nominal')} | " + " | ".join(
                f"{statistics.fmean(r['particles'][name]):.3g} [{min(r['particles'][name]):.3g}, {max(r['particles'][name]):.3g}]"
                for r in active) + " |")
        lines.append("| reference steps | | " + " | ".join(f"{r['reference_steps']:,} ({r['reference_steps'] / r['timesteps']:.1%})"
                                                     for r in active) + " |")
        lines.append("| rounds | | " + " | ".join(str(r["rounds"]) for r in active) + " |")
    simopt = [r for r in runs if r["strategy"] == "simopt"]
    if simopt:
        lines += seed_table("SimOpt: each fit's mean per parameter (fit 1 -> fit 2 -> ...), and the real episodes, real "
                            "steps and simulator evaluations it used:", simopt)
        for k, name in enumerate(simopt[0]["fitted"]):
            lines.append(f"| {name} | {box['params'].get(name, 'nominal')} | " + " | ".join(
                " -> ".join(f"{f['mean'][k]:.3g}" for f in r["fits"]) for r in simopt) + " |")
        lines.append("| return of its real episodes | | " + " | ".join(
            " -> ".join(f"{f['real_return']:.0f}" if "real_return" in f else "-" for f in r["fits"]) for r in simopt) + " |")
        lines.append("| real episodes (steps) | | " + " | ".join(f"{r['real_episodes']} ({r['real_steps']:,})" for r in simopt) + " |")
        lines.append("| simulator evaluations | | " + " | ".join(f"{r['sim_evaluations']:,}" for r in simopt) + " |")
    if all("curve" in r for r in runs):
        steps = [pt["step"] for pt in runs[0]["curve"]]
        for name in runs[0]["curve"][0]["sets"] if steps else []:
            lines += ["", f"Return on `{name}` along training: each checkpoint of each run evaluated for {args.episodes} "
                          f"deterministic episodes; mean ± standard deviation over seeds (SimOpt fits at the steps in "
                          f"its settings, so a checkpoint follows each fit).", "",
                      "| step | " + " | ".join(strategies) + " |", "|---:|" + "---:|" * len(strategies)]
            for i, step in enumerate(steps):
                cells = []
                for st in strategies:
                    vals = [r["curve"][i]["sets"][name] for r in runs if r["strategy"] == st and len(r["curve"]) > i]
                    m_, sd = mean_std(vals) if vals else (float("nan"), 0.0)
                    cells.append(f"{m_:.0f} ± {sd:.0f}")
                lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    lines += ["", "Per run:", "", "| strategy | seed | train s | " + " | ".join(sets) + " |", "|---|---:|---:|" + "---:|" * len(sets)]
    for r in runs:
        lines.append(f"| {r['strategy']} | {r['seed']} | {r['train_seconds']:.0f} | " +
                     " | ".join(f"{r['sets'][n]['mean_return']:.0f}" for n in sets) + " |")
    return data, "\n".join(lines) + "\n"


def train_all(args: argparse.Namespace, pair: dict, stem: str) -> tuple[list[dict], float]:
    earlier: list[dict] = []
    previous = ROOT / "benchmarks" / "results" / f"{stem}.json"
    if args.append and previous.is_file():
        old = json.loads(previous.read_text())
        if old["experiments"] != pair or old["timesteps"] != args.timesteps or old["episodes_per_set"] != args.episodes:
            raise SystemExit(f"{previous}: made with other experiments or budget; cannot append")
        earlier = [r for r in old["runs"] if r["seed"] in args.seeds]
        args.wall_before = old.get("wall_seconds", 0.0)
    done = {(r["strategy"], r["seed"]) for r in earlier}
    start = time.time()
    jobs = [(s, e, seed) for seed in args.seeds for s, e in pair.items() if (s, seed) not in done]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, s, e, seed, args.timesteps, args.episodes, Path(tmp), args.curve)
                   for s, e, seed in jobs]
        runs = earlier + [f.result() for f in futures]
    runs.sort(key=lambda r: (r["seed"], list(pair).index(r["strategy"])))
    return runs, time.time() - start + getattr(args, "wall_before", 0.0)


def merged(args: argparse.Namespace) -> tuple[list[dict], dict, float]:
    """Runs, experiments and wall time of several results files of one env and budget."""
    runs: list[dict] = []
    pair: dict[str, str] = {}
    seconds = 0.0
    for stem in args.merge:
        data = json.loads((ROOT / "benchmarks" / "results" / f"{stem}.json").read_text())
        if data["env"] != args.env or data["timesteps"] != args.timesteps or data["episodes_per_set"] != args.episodes:
            raise SystemExit(f"{stem}: made for another env or budget; cannot merge")
        for strategy, experiment in data["experiments"].items():
            if pair.setdefault(strategy, experiment) != experiment:
                raise SystemExit(f"{stem}: {strategy} ran {experiment}, not {pair[strategy]}; cannot merge")
        runs += [r for r in data["runs"] if r["seed"] in args.seeds]
        seconds += data.get("wall_seconds", 0.0)
    order = [s for s in PAIRS[args.env] if s in pair]
    pair = {s: pair[s] for s in order}
    runs.sort(key=lambda r: (r["seed"], order.index(r["strategy"])))
    return runs, pair, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=list(PAIRS), default="inverted_pendulum")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=300_000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once (one process each)")
    parser.add_argument("--only", nargs="+", choices=["uniform", "automatic", "active", "simopt"],
                        help="run these strategies only")
    parser.add_argument("--merge", nargs="+", metavar="STEM",
                        help="train nothing: join these results files (benchmarks/results/<STEM>.json) into one report")
    parser.add_argument("--name", help="results file stem (default strategies_<env>)")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs of the existing results file (same experiments and budget) and run only new seeds")
    parser.add_argument("--curve", nargs="+", metavar="SET",
                        help="also evaluate every checkpoint of every run on these sets (return along training)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import rlsim2real as rs

    pair = {k: v for k, v in PAIRS[args.env].items() if args.only is None or k in args.only}
    spec = rs.load_env_spec(args.env)
    box = {"params": {p.name: f"[{p.low:g}, {p.high:g}]" for p in spec.params},
           "sets": {n: ", ".join(f"{k}={v:g}" for k, v in values.items()) for n, values in spec.real_sets.items()}}
    stem = args.name or f"strategies_{args.env}"
    if args.merge:
        runs, pair, seconds = merged(args)
    else:
        runs, seconds = train_all(args, pair, stem)
    data, md = report(args, runs, pair, box, machine(), seconds)
    print(md)
    if not args.no_write:
        write_json(ROOT / "benchmarks" / "results" / f"{stem}.json", data)
        write_text(ROOT / "benchmarks" / "results" / f"{stem}.md", md)


if __name__ == "__main__":
    main()
