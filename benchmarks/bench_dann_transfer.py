"""With and without a DANN encoder on a domain shift, same budget and seeds.

``--task sensor`` (the default): `experiments/quickstart.toml` (recurrent PPO, uniform
randomization) against `experiments/inverted_pendulum_dann.toml` (the same, plus a DANN
encoder whose target domain is the `sensor_shift` real set), evaluated on the nominal sim
and `sensor_shift`. ``--task pixels``: `experiments/inverted_pendulum_pixels.toml` (a CNN
recurrent policy on 64x64 frames under randomized colours and light) against
`experiments/inverted_pendulum_pixels_dann.toml` (the same, with a DANN encoder aligned with
frames of the `unseen_colours` look), and both again on the nominal look alone
(`..._pixels_nominal.toml`, `..._pixels_nominal_dann.toml`): (a) nominal look, (b) visual DR,
(c) DANN, (d) both, evaluated on every visual set, with the fraction of each shifted set's gap
that DANN recovers. Each run is one
subprocess (``--workers`` at a time); the discriminator's held-out accuracy at the end of
training is read from its log.

    python benchmarks/bench_dann_transfer.py [--task sensor|pixels] [--seeds 0 1 2] [--timesteps 80000] [--workers 2] [--only VARIANT ...]

Writes benchmarks/results/dann_transfer.json and .md (pixels: dann_pixels.json and .md).
"""

from __future__ import annotations

import argparse
import csv
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

TASKS = {
    "sensor": {"env": "inverted_pendulum", "stem": "dann_transfer", "title": "a sensor shift (InvertedPendulum-v5)",
               "variants": {"udr": "experiments/quickstart.toml", "udr_dann": "experiments/inverted_pendulum_dann.toml"},
               "sets": ["nominal", "sensor_shift"], "timesteps": 80_000},
    "pixels": {"env": "inverted_pendulum_pixels", "stem": "dann_pixels",
               "title": "a visual shift (InvertedPendulum-v5 from 64x64 pixels)",
               "variants": {"a_nominal": "experiments/inverted_pendulum_pixels_nominal.toml",
                            "b_visual_dr": "experiments/inverted_pendulum_pixels.toml",
                            "c_dann": "experiments/inverted_pendulum_pixels_nominal_dann.toml",
                            "d_visual_dr_dann": "experiments/inverted_pendulum_pixels_dann.toml"},
               # Recovered fraction: (DANN variant - baseline) / (baseline on nominal - baseline on the set).
               "recovered": [("c_dann", "a_nominal"), ("d_visual_dr_dann", "a_nominal"), ("d_visual_dr_dann", "b_visual_dr")],
               "sets": ["nominal", "in_range", "unseen_colours", "dim_light", "camera_offset", "noisy_tinted"],
               "timesteps": 200_000},
}


def last_logged(run_dir: Path, key: str) -> float | None:
    rows = list(csv.DictReader(open(run_dir / "logs" / "progress.csv")))
    values = [r[key] for r in rows if r.get(key) not in (None, "")]
    return float(values[-1]) if values else None


def run_one(variant: str, experiment: str, seed: int, args: argparse.Namespace, sets: list[str], folder: Path) -> dict:
    out = folder / f"{variant}_{seed}"
    env = {**os.environ, "RLSIM2REAL_TORCH_THREADS": "1"}
    t0 = time.time()
    for cmd in (["train", str(ROOT / experiment), "--seed", str(seed), "--timesteps", str(args.timesteps), "--out",
                 str(out), "--no-eval", "--no-progress"],
                ["evaluate", str(out), "--episodes", str(args.episodes), "--sets", ",".join(sets), "--no-progress"]):
        proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", *cmd], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    transfer = json.loads((out / "transfer.json").read_text())
    result = {"sets": {s: transfer["sets"][s]["mean_return"] for s in sets},
              "disc_heldout_accuracy": last_logged(out, "dann/heldout_accuracy"),
              "train_seconds": round(time.time() - t0, 1)}
    print(variant, seed, result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(TASKS), default="sensor")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, help="agent steps per run (default: the task's)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once (one process each)")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants of the task")
    args = parser.parse_args()
    task = TASKS[args.task]
    args.timesteps = args.timesteps or task["timesteps"]
    variants, sets = task["variants"], task["sets"]
    if args.only:
        unknown = set(args.only) - set(variants)
        if unknown:
            raise SystemExit(f"--only: unknown variants {sorted(unknown)}; the {args.task} task has {', '.join(variants)}")
        variants = {v: e for v, e in variants.items() if v in args.only}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.workers) as pool:
        futures = {(v, seed): pool.submit(run_one, v, exp, seed, args, sets, Path(tmp))
                   for seed in args.seeds for v, exp in variants.items()}
        results = {v: {str(seed): futures[(v, seed)].result() for seed in args.seeds} for v in variants}
    summary = {v: {s: statistics.mean(r["sets"][s] for r in per_seed.values()) for s in sets} for v, per_seed in results.items()}
    data = {
        "command": "python benchmarks/bench_dann_transfer.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "env": task["env"],
        "experiments": variants,
        "timesteps": args.timesteps,
        "seeds": args.seeds,
        "episodes": args.episodes,
        "per_seed": results,
        "mean_return": summary,
        "wall_seconds": round(time.time() - start, 1),
    }
    out_dir = ROOT / "benchmarks" / "results"
    lines = [
        f"# {' vs '.join(variants)} on {task['title']}",
        "",
        f"Command: `{data['command']}`; {args.timesteps} steps per run, seeds {args.seeds}, "
        f"{args.episodes} deterministic episodes per set (each value: one run's mean over them). Experiments: "
        + ", ".join(f"{v} = `{e}`" for v, e in variants.items()) + ".",
        "",
        describe(data["machine"]),
        "",
        "| variant | seed | " + " | ".join(sets) + " | discriminator held-out accuracy (end) |",
        "|---|---:|" + "---:|" * len(sets) + "---:|",
    ]
    for v, per_seed in results.items():
        for seed, r in per_seed.items():
            acc = r["disc_heldout_accuracy"]
            lines.append(f"| {v} | {seed} | " + " | ".join(f"{r['sets'][s]:.1f}" for s in sets)
                         + f" | {'-' if acc is None else f'{acc:.2f}'} |")
    for v, per_seed in results.items():
        cells = []
        for s_name in sets:
            vals = [r["sets"][s_name] for r in per_seed.values()]
            spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {spread:.1f}")
        lines.append(f"| **{v} mean ± std over seeds** | | " + " | ".join(cells) + " | |")
    recovered = [(c, b) for c, b in task.get("recovered", []) if c in results and b in results]
    if recovered:
        data["recovered_fraction"] = {}
        lines += ["", "Recovered fraction of each shifted set's gap, from the means over seeds: (DANN variant - baseline) / "
                      "(baseline on nominal - baseline on the set); 1 closes the gap, 0 is no gain, negative is worse. "
                      "'-' where the baseline shows no gap (within 5% of the nominal return).", "",
                  "| DANN variant vs baseline | " + " | ".join(sets[1:]) + " |", "|---|" + "---:|" * (len(sets) - 1)]
        for c, b in recovered:
            row = {}
            for s_name in sets[1:]:
                gap = summary[b]["nominal"] - summary[b][s_name]
                row[s_name] = None if gap <= 0.05 * abs(summary[b]["nominal"]) else (summary[c][s_name] - summary[b][s_name]) / gap
            data["recovered_fraction"][f"{c} vs {b}"] = row
            lines.append(f"| {c} vs {b} | " + " | ".join("-" if v is None else f"{v:+.2f}" for v in row.values()) + " |")
    write_json(out_dir / f"{task['stem']}.json", data)
    write_text(out_dir / f"{task['stem']}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
