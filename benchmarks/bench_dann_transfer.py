"""UDR alone vs UDR + DANN on the sensor-shifted held-out set, same budget and seeds.

Trains `experiments/quickstart.toml` (recurrent PPO, uniform randomization) and
`experiments/inverted_pendulum_dann.toml` (the same, plus a DANN encoder whose target
domain is the `sensor_shift` real set) for each seed, evaluates both on the nominal sim and
on `sensor_shift`, and reads the discriminator's held-out accuracy at the end of training.

    python benchmarks/bench_dann_transfer.py [--seeds 0 1 2] [--timesteps 80000]

Writes benchmarks/results/dann_transfer.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlsim2real as rs  # noqa: E402
from benchmarks.machine import describe, machine  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402

VARIANTS = {"udr": ROOT / "experiments/quickstart.toml", "udr_dann": ROOT / "experiments/inverted_pendulum_dann.toml"}
SETS = ["nominal", "sensor_shift"]


def last_logged(run_dir: Path, key: str) -> float | None:
    rows = list(csv.DictReader(open(run_dir / "logs" / "progress.csv")))
    values = [r[key] for r in rows if r.get(key) not in (None, "")]
    return float(values[-1]) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=80_000)
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    results: dict[str, dict[str, dict]] = {v: {} for v in VARIANTS}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for variant, exp in VARIANTS.items():
                out = Path(tmp) / f"{variant}_{seed}"
                t0 = time.time()
                run = rs.train(exp, timesteps=args.timesteps, seed=seed, out=out, evaluate=False)
                report = rs.evaluate_transfer(run, episodes=args.episodes, sets=SETS)
                results[variant][str(seed)] = {
                    "sets": {s: report.sets[s].mean_return for s in SETS},
                    "disc_heldout_accuracy": last_logged(out, "dann/heldout_accuracy"),
                    "train_seconds": round(time.time() - t0, 1),
                }
                print(variant, seed, results[variant][str(seed)], flush=True)
    summary = {
        v: {s: statistics.mean(r["sets"][s] for r in per_seed.values()) for s in SETS} for v, per_seed in results.items()
    }
    data = {
        "command": "python benchmarks/bench_dann_transfer.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "env": "inverted_pendulum",
        "timesteps": args.timesteps,
        "seeds": args.seeds,
        "episodes": args.episodes,
        "per_seed": results,
        "mean_return": summary,
        "wall_seconds": round(time.time() - start, 1),
    }
    out_dir = ROOT / "benchmarks" / "results"
    write_json(out_dir / "dann_transfer.json", data)
    lines = [
        "# UDR vs UDR + DANN on a sensor shift (InvertedPendulum-v5)",
        "",
        f"Command: `{data['command']}`; {args.timesteps} steps per run, seeds {args.seeds}, "
        f"{args.episodes} deterministic episodes per set (each value: one run's mean over them).",
        "",
        describe(data["machine"]),
        "",
        "| variant | seed | nominal | sensor_shift | discriminator held-out accuracy (end) |",
        "|---|---:|---:|---:|---:|",
    ]
    for v, per_seed in results.items():
        for seed, r in per_seed.items():
            acc = r["disc_heldout_accuracy"]
            lines.append(f"| {v} | {seed} | {r['sets']['nominal']:.1f} | {r['sets']['sensor_shift']:.1f} | "
                         f"{'-' if acc is None else f'{acc:.2f}'} |")
    for v, per_seed in results.items():
        cells = []
        for s_name in SETS:
            vals = [r["sets"][s_name] for r in per_seed.values()]
            spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {spread:.1f}")
        lines.append(f"| **{v} mean ± std over seeds** | | {cells[0]} | {cells[1]} | |")
    write_text(out_dir / "dann_transfer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
