"""The joint sampler's cost: env throughput of this checkout against an earlier one.

Each side is ``benchmarks/bench_env_throughput.py`` (full Hopper stack vs raw Hopper-v5,
alternating in one process) run in its own checkout; the two checkouts' runs alternate
round by round, so machine load hits both alike. Reported per side: the full-stack / raw
ratio (the >= 0.90 goal) and the full stack's steps per second, and the new / old ratio of
those steps per second from adjacent rounds.

    python benchmarks/bench_sampler_overhead.py --old 085e0c1 --rounds 5

``--old`` is any git revision (default: the last commit before the joint sampler); a
temporary worktree of it is made and removed. Writes benchmarks/results/sampler_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine  # noqa: E402

OLD = "085e0c1"  # per-layer sampling, before the joint sampler


def one_round(checkout: Path, steps: int, seed_dir: Path) -> dict:
    out = seed_dir / checkout.name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "benchmarks/bench_env_throughput.py", "--rounds", "1", "--steps", str(steps), "--out", str(out)]
    # Each checkout imports its own package (the script puts its checkout first on sys.path).
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, env={"PYTHONPATH": str(checkout), "PATH": ""})
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: {proc.stderr[-1500:]}")
    data = json.loads((out / "env_throughput.json").read_text())
    return {"ratio": data["cpu_time"]["ratio_B_over_A"], "stack_steps_per_s": data["cpu_time"]["B_median"],
            "raw_steps_per_s": data["cpu_time"]["A_median"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=OLD, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.old], cwd=ROOT, check=True, capture_output=True)
        try:
            for r in range(args.rounds):
                first, second = (old, ROOT) if r % 2 == 0 else (ROOT, old)
                got = {first: one_round(first, args.steps, Path(tmp) / f"r{r}"),
                       second: one_round(second, args.steps, Path(tmp) / f"r{r}")}
                rows.append({"old": got[old], "new": got[ROOT]})
                print(f"round {r}: old stack/raw {got[old]['ratio']:.3f}, new stack/raw {got[ROOT]['ratio']:.3f}, "
                      f"new/old stack steps/s {got[ROOT]['stack_steps_per_s'] / got[old]['stack_steps_per_s']:.3f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    med = {side: statistics.median(r[side]["ratio"] for r in rows) for side in ("old", "new")}
    speed = statistics.median(r["new"]["stack_steps_per_s"] / r["old"]["stack_steps_per_s"] for r in rows)
    command = f"python benchmarks/bench_sampler_overhead.py --old {args.old} --rounds {args.rounds} --steps {args.steps}"
    m = machine()
    md = [
        "# Joint sampler overhead: env throughput against the per-layer sampler",
        "",
        f"Command: `{command}`",
        "",
        describe(m),
        "",
        "Each side runs `benchmarks/bench_env_throughput.py` (Hopper-v5, every layer active, vs raw Hopper-v5, "
        f"{args.steps:,} random-action steps per side, process CPU time) in its own checkout; the sides alternate "
        f"round by round. Old: `{args.old}` (each layer sampled its own parameters); new: this checkout (one joint "
        "sample per env and episode, sliced to the layers, plus the episode record on the last step).",
        "",
        "| round | old stack / raw | new stack / raw | new / old stack steps/s |",
        "|---|---:|---:|---:|",
    ]
    for r, row in enumerate(rows):
        md.append(f"| {r} | {row['old']['ratio']:.3f} | {row['new']['ratio']:.3f} | "
                  f"{row['new']['stack_steps_per_s'] / row['old']['stack_steps_per_s']:.3f} |")
    md.append(f"| **median** | **{med['old']:.3f}** | **{med['new']:.3f}** | **{speed:.3f}** |")
    md += ["", "Goal: new stack / raw >= 0.90."]
    text = "\n".join(md) + "\n"
    print(text)
    if not args.no_write:
        results = ROOT / "benchmarks" / "results"
        (results / "sampler_overhead.json").write_text(json.dumps(
            {"command": command, "old": args.old, "machine": m, "rounds": rows, "median_ratio": med,
             "median_new_over_old": speed}, indent=2) + "\n")
        (results / "sampler_overhead.md").write_text(text)


if __name__ == "__main__":
    main()
