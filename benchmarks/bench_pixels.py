"""Frames per second of the pixel envs, with and without visual randomization, side by side.

Each contender is a pixel env stepped with random actions (resetting as episodes end, so
every reset draws and applies a new look); contenders alternate in rounds and the report
gives the median over rounds and the randomized/unrandomized ratio per size. Unrandomized
means every term pinned at its nominal value (the same renderer, the same stack).

    python benchmarks/bench_pixels.py [--rounds 5] [--steps 200] [--sizes 64 84]

Writes benchmarks/results/pixels_fps.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlsim2real as rs  # noqa: E402
from benchmarks.machine import describe, machine  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402


def build(name: str, size: int, randomized: bool):
    spec = rs.load_env_spec(name)
    spec = dataclasses.replace(spec, pixels=dataclasses.replace(spec.pixels, width=size, height=size))
    env = rs.make_env(spec, seed=0, randomize=randomized)
    env.reset(seed=0)
    return env


def frames_per_second(env, steps: int, rng: np.random.Generator) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample() if rng is None else
                                                  rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32))
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="env steps per contender and round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 84])
    parser.add_argument("--envs", nargs="+", default=["inverted_pendulum_pixels", "hopper_pixels"])
    args = parser.parse_args()
    contenders = [(e, s, r) for e in args.envs for s in args.sizes for r in (False, True)]
    envs = {c: build(*c) for c in contenders}
    rng = np.random.default_rng(0)
    fps: dict[tuple, list[float]] = {c: [] for c in contenders}
    for _ in range(args.rounds):
        for c in contenders:
            fps[c].append(frames_per_second(envs[c], args.steps, rng))
    for env in envs.values():
        env.close()
    rows = []
    for e in args.envs:
        for s in args.sizes:
            plain, rand = fps[(e, s, False)], fps[(e, s, True)]
            ratio = statistics.median(r / p for r, p in zip(rand, plain))
            rows.append({"env": e, "size": s, "fps_nominal": statistics.median(plain),
                         "fps_randomized": statistics.median(rand), "randomized_over_nominal": ratio,
                         "rounds_nominal": [round(x, 1) for x in plain], "rounds_randomized": [round(x, 1) for x in rand]})
    data = {"command": "python benchmarks/bench_pixels.py " + " ".join(sys.argv[1:]), "machine": machine(),
            "rounds": args.rounds, "steps": args.steps, "results": rows}
    lines = ["# Pixel env frames per second, with and without visual randomization", "",
             f"Command: `{data['command']}`; {args.rounds} rounds of {args.steps} env steps per contender, "
             "contenders alternating; random actions, resets as episodes end (each draws a new look). "
             "One frame per env step (the stack reuses the previous frames); MuJoCo's fast settings "
             "(no multisampling, shadows, reflections or skybox), EGL with Mesa's software renderer.", "",
             describe(data["machine"]), "",
             "| env | size | frames/s nominal | frames/s randomized | randomized / nominal (median of rounds) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['env']} | {r['size']}x{r['size']} | {r['fps_nominal']:.0f} | {r['fps_randomized']:.0f} | "
                     f"{r['randomized_over_nominal']:.2f} |")
    out = ROOT / "benchmarks" / "results"
    write_json(out / "pixels_fps.json", data)
    write_text(out / "pixels_fps.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
