"""A small, budgeted sweep of DANN settings against UDR alone on the `sensor_shift` set.

Every setting trains recurrent PPO with uniform randomization on InvertedPendulum (the
budget and env of `experiments/inverted_pendulum_dann.toml`) from temporary agent and
experiment TOML files, on the same seeds; evaluates on `nominal` and `sensor_shift`; and
reads the discriminator's held-out accuracy from the run's `logs/progress.csv` (the last
value, and the mean of the last 10 updates, since each value is measured on few target rows).

    python benchmarks/sweep_dann.py [--seeds 0 1 2] [--timesteps 80000] [--only udr w0.3 ...] [--append]

Writes benchmarks/results/dann_sweep.json and .md (after every run, so a cut-off sweep
keeps what it finished). With ``--append`` the runs already in the JSON are kept and
skipped, so more settings or seeds can be added to a finished sweep.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import rlsim2real as rs
from rlsim2real.io import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
SETS = ["nominal", "sensor_shift"]
OUT_DIR = ROOT / "benchmarks" / "results"

# The defaults of agents/recurrent_ppo_dann.toml before this sweep; each setting overrides some.
BASE_DANN: dict[str, Any] = {
    "enabled": True, "weight": 0.1, "schedule": "ganin", "gamma": 10.0,
    "discriminator_hidden": [64, 64], "mmd_weight": 0.0, "coral_weight": 0.0,
}

# name -> (DANN overrides or None for UDR alone, encoder widths, what it tests)
SETTINGS: dict[str, tuple[dict[str, Any] | None, list[int], str]] = {
    "udr": (None, [64], "UDR alone (no DANN), same encoder"),
    # Weight 0: the DANN code path runs (target episodes are collected with the policy's
    # sampling, which draws from torch's RNG) but nothing is adapted. Shows how much a seed's
    # outcome moves from a perturbation of the random stream alone.
    "w0_placebo": ({"weight": 0.0}, [64], "placebo: DANN path, weight 0 (no adaptation)"),
    "w0.1": ({}, [64], "the preset before this sweep: weight 0.1, Ganin schedule"),
    "w0.3": ({"weight": 0.3}, [64], "stronger adversary"),
    "w1.0": ({"weight": 1.0}, [64], "strongest adversary"),
    "w1.0_linear0.5": ({"weight": 1.0, "schedule": "linear", "warmup": 0.5}, [64],
                       "strong adversary ramped in slowly (half of training)"),
    "w0.3_dlr1e-3": ({"weight": 0.3, "lr": 1e-3}, [64], "faster discriminator"),
    "w0.3_dlr3e-5": ({"weight": 0.3, "lr": 3e-5}, [64], "slower discriminator (less saturated)"),
    "w0.3_enc128": ({"weight": 0.3}, [128], "wider encoder"),
    "w0.1_mmd1": ({"mmd_weight": 1.0}, [64], "plus multi-kernel MMD alignment"),
    "w0.1_coral100": ({"coral_weight": 100.0}, [64], "plus CORAL alignment (raw CORAL is ~1e-3 here)"),
}

AGENT_TEMPLATE = """[agent]
algorithm = "recurrent_ppo"
policy = "MlpLstmPolicy"

[hyperparameters]
n_steps = 256
batch_size = 256
n_epochs = 5
learning_rate = 3e-4
gamma = 0.99
gae_lambda = 0.95
clip_range = 0.2
ent_coef = 0.0

[policy_kwargs]
features_extractor_class = "mlp"
features_extractor_kwargs = {{ net_arch = {encoder} }}
lstm_hidden_size = 64
n_lstm_layers = 1
net_arch = {{ pi = [64], vf = [64] }}
ortho_init = true
{dann}"""

EXPERIMENT_TEMPLATE = """[experiment]
env = "inverted_pendulum"
agent = "{agent}"
strategy = "uniform"
timesteps = {timesteps}
seed = 0
n_envs = 4
normalize = true
{target}
[evaluation]
episodes = 10
"""

TARGET = """
[target]
set = "sensor_shift"
episodes = 4
refresh_every = 5
"""


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_specs(folder: Path, name: str, timesteps: int) -> Path:
    """Agent + experiment TOML for one setting; returns the experiment's path."""
    overrides, encoder, _ = SETTINGS[name]
    dann = ""
    if overrides is not None:
        table = {**BASE_DANN, **overrides}
        dann = "\n[dann]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
    agent = folder / f"agent_{name}.toml"
    agent.write_text(AGENT_TEMPLATE.format(encoder=_toml_value(encoder), dann=dann))
    exp = folder / f"exp_{name}.toml"
    exp.write_text(EXPERIMENT_TEMPLATE.format(agent=agent, timesteps=timesteps, target=TARGET if overrides is not None else ""))
    return exp


def logged(run_dir: Path, key: str) -> list[float]:
    rows = list(csv.DictReader(open(run_dir / "logs" / "progress.csv")))
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def summarize(per_seed: dict[str, dict]) -> dict[str, Any]:
    runs = list(per_seed.values())
    out: dict[str, Any] = {f"{s}_mean": statistics.mean(r["sets"][s] for r in runs) for s in SETS}
    out["sensor_shift_solved"] = sum(r["sets"]["sensor_shift"] >= 990 for r in runs)
    out["nominal_min"] = min(r["sets"]["nominal"] for r in runs)
    accs = [r["heldout_accuracy_last10"] for r in runs if r["heldout_accuracy_last10"] is not None]
    out["heldout_accuracy_last10_mean"] = statistics.mean(accs) if accs else None
    return out


def render(data: dict[str, Any]) -> str:
    lines = [
        "# DANN settings sweep: UDR vs UDR + DANN on a sensor shift (InvertedPendulum-v5)",
        "",
        f"Command: `{data['command']}`; {data['timesteps']} steps per run, seeds {data['seeds']}, "
        f"{data['episodes']} deterministic episodes per set. Machine: {data['machine']}. "
        f"Wall time {data['wall_seconds'] / 60:.1f} min.",
        "",
        "Held-out accuracy: the discriminator's balanced accuracy on unseen source and target "
        "rows (0.5 = features are domain-invariant), last value / mean of the last 10 updates.",
        "",
        "| setting | what | seed | nominal | sensor_shift | held-out acc (last / last 10) | train s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, per_seed in data["per_seed"].items():
        for seed, r in per_seed.items():
            last, last10 = r["heldout_accuracy_last"], r["heldout_accuracy_last10"]
            acc = "-" if last is None else f"{last:.2f} / {last10:.2f}"
            lines.append(f"| {name} | {SETTINGS[name][2]} | {seed} | {r['sets']['nominal']:.1f} | "
                         f"{r['sets']['sensor_shift']:.1f} | {acc} | {r['train_seconds']:.0f} |")
    common = sorted(set.intersection(*(set(p) for p in data["per_seed"].values())), key=int) if data["per_seed"] else []
    lines += ["", f"Means over all of a setting's seeds, and over the seeds every setting ran ({', '.join(common)}).", "",
              "| setting | seeds | nominal mean (min) | sensor_shift mean | sensor_shift mean, common seeds | "
              "seeds solving sensor_shift (>= 990) | held-out acc (last 10, mean) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in data["summary"].items():
        acc = s["heldout_accuracy_last10_mean"]
        per_seed = data["per_seed"][name]
        on_common = statistics.mean(per_seed[k]["sets"]["sensor_shift"] for k in common) if common else float("nan")
        lines.append(f"| {name} | {len(per_seed)} | {s['nominal_mean']:.1f} ({s['nominal_min']:.1f}) | {s['sensor_shift_mean']:.1f} | "
                     f"{on_common:.1f} | {s['sensor_shift_solved']}/{len(per_seed)} | {'-' if acc is None else f'{acc:.2f}'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=80_000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="a subset of the settings")
    parser.add_argument("--name", default="dann_sweep", help="results file stem in benchmarks/results")
    parser.add_argument("--append", action="store_true", help="keep (and skip) the runs already in the results JSON")
    args = parser.parse_args()
    names = args.only or list(SETTINGS)
    command = "python benchmarks/sweep_dann.py " + " ".join(sys.argv[1:])
    previous = json.loads((OUT_DIR / f"{args.name}.json").read_text()) if args.append else None
    data: dict[str, Any] = {
        "command": command,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores shared with another job, no GPU",
        "env": "inverted_pendulum",
        "timesteps": args.timesteps,
        "seeds": args.seeds,
        "episodes": args.episodes,
        "settings": {n: {"dann": None if SETTINGS[n][0] is None else {**BASE_DANN, **SETTINGS[n][0]},
                         "encoder": SETTINGS[n][1], "what": SETTINGS[n][2]} for n in names},
        "per_seed": {},
        "summary": {},
    }
    elapsed = 0.0
    if previous is not None:
        if previous["timesteps"] != args.timesteps or previous["episodes"] != args.episodes:
            raise SystemExit(f"--append: {args.name}.json was run with other timesteps/episodes")
        data["command"] = previous["command"] + "; then " + command
        data["seeds"] = sorted(set(previous["seeds"]) | set(args.seeds))
        data["settings"] = {**previous["settings"], **data["settings"]}
        data["per_seed"] = previous["per_seed"]
        data["summary"] = previous["summary"]
        elapsed = previous.get("wall_seconds", 0.0)
    start = time.time() - elapsed
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            exp = write_specs(Path(tmp), name, args.timesteps)
            for seed in args.seeds:
                if str(seed) in data["per_seed"].get(name, {}):
                    continue
                out = Path(tmp) / f"{name}_{seed}"
                t0 = time.time()
                run = rs.train(exp, seed=seed, out=out, evaluate=False)
                train_s = time.time() - t0
                report = rs.evaluate_transfer(run, episodes=args.episodes, sets=SETS)
                accs = logged(out, "dann/heldout_accuracy")
                data["per_seed"].setdefault(name, {})[str(seed)] = {
                    "sets": {s: report.sets[s].mean_return for s in SETS},
                    "heldout_accuracy_last": accs[-1] if accs else None,
                    "heldout_accuracy_last10": statistics.mean(accs[-10:]) if accs else None,
                    "train_seconds": round(train_s, 1),
                }
                data["summary"][name] = summarize(data["per_seed"][name])
                data["wall_seconds"] = round(time.time() - start, 1)
                print(name, seed, data["per_seed"][name][str(seed)], flush=True)
                write_json(OUT_DIR / f"{args.name}.json", data)
                write_text(OUT_DIR / f"{args.name}.md", render(data))
    print(render(data))


if __name__ == "__main__":
    main()
