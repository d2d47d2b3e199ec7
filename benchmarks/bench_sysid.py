"""System identification on Hopper: fit error against a known truth, and evaluation speed.

Logs: ``collect_trajectories`` on ``make_real_env("hopper", truth)`` with a random policy,
``--episodes`` episodes, saved *without* qpos/qvel (the state is recovered from the
observations, as for a real robot). Noisy logs add Gaussian noise of ``--noise`` times each
observation dimension's standard deviation over the log (1%: "1% sensor noise").

Fitted: the four link masses, friction, joint damping and motor strength (the spec's training
box), state-reset replay of ``--steps`` steps, ``rlsim2real.sysid.identify`` with the default
objective (SimOpt's discrepancy, a point fit of the mean) at ``--budget`` candidate
evaluations; the DROPO likelihood (mean and std, one-step windows) runs too, on the first seed,
when ``--likelihood-budget`` is above 0. Truths: ``in_range`` (inside the prior box) and
``heavy_torso`` (torso 1.6, outside it). Reported: the relative error of the fitted mean per
parameter, the mean over the four masses, wall time. "5 transitions": the same fit from 5
evenly spaced transitions (one-step windows) of the noise-free log.

A second opinion, ``--lm-budget`` above 0: MuJoCo's own system-identification toolbox
(``mujoco.sysid``, Levenberg–Marquardt; the extra ``mujoco[sysid]``) fits the same
parameters from the same logs, from the same start (the middle of the prior box) inside the
same limits, in two setups:

- ``LM, replay windows``: ``identify(..., fitter="lm")``, the same windows as CMA-ES (one
  toolbox sequence per window), the residual the env's observations scaled like the
  discrepancy (see ``rlsim2real/sysid/lm.py``), at most ``--lm-budget`` simulated candidates;
- ``LM, whole episodes (toolbox residual)``: as the toolbox is designed: each episode one
  sequence from its first recovered state, the toolbox's default residual on qpos (all but
  rootx, which the observation lacks) and qvel, normalized its own way (by each signal's
  norm over the sequence).

Throughput: one CMA-ES generation's work (``--candidates`` parameter vectors, every window
of the log) evaluated (A) batched, one ``mujoco.rollout`` call on ``--threads`` threads, and
(B) by a Python loop over pinned rlsim2real envs (``set_state`` then ``step``); A and B
alternate over ``--rounds`` rounds, and their observations are checked to agree.

Run:
    python benchmarks/bench_sysid.py --budget 1500 --steps 3 --likelihood-budget 1500 --lm-budget 1500 --seeds 0,1,2 --threads 2
    python benchmarks/bench_sysid.py --budget 300 --seeds 0 --no-write     # a quick look
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import rlsim2real as rs  # noqa: E402
from benchmarks.machine import describe, machine  # noqa: E402
from rlsim2real.io import write_json, write_text  # noqa: E402
from rlsim2real.sysid import BatchSimulator, SysIdProblem, identify  # noqa: E402

MASSES = ("torso_mass", "thigh_mass", "leg_mass", "foot_mass")
TRUTHS = ("in_range", "heavy_torso")


def make_log(folder: Path, truth: str, episodes: int, seed: int, noise: float) -> Path:
    trajs = rs.collect_trajectories(rs.make_real_env("hopper", truth, seed=seed), None, episodes, seed)
    trajs.qpos = trajs.qvel = None
    if noise:
        rng = np.random.default_rng(10_000 + seed)
        trajs.obs = trajs.obs + rng.normal(size=trajs.obs.shape) * noise * trajs.obs.std(axis=0)
    trajs.metadata = {"env": "hopper", "set": truth, "noise": noise}
    return trajs.save(folder / f"{truth}_{seed}_{noise}.npz")


def fit(path: Path, truth: str, args, seed: int, case: str, objective: str | None = None, budget: int | None = None,
        max_windows: int = 256, steps: int | None = None, fitter: str = "cma") -> dict:
    steps = steps or args.steps
    problem = SysIdProblem.build("hopper", path, truth=truth, max_windows=max_windows, steps=steps)
    if fitter == "lm-episodes":
        result = lm_whole_episodes(problem, args.lm_budget, args.threads)
    else:
        budget = budget or (args.lm_budget if fitter == "lm" else args.budget)
        result = identify(problem, objective=objective, budget=budget, seed=seed, nthread=args.threads, fitter=fitter)
    rel = dict(zip(result.names, result.relative_error.tolist()))
    row = {
        "case": case, "fitter": FITTER_NAMES[fitter], "truth": truth, "seed": seed,
        "objective": result.info["objective"],
        "fit_std": result.info["fit_std"], "steps": steps, "budget": result.info["budget"], "evaluations": result.info["evaluations"],
        "windows": result.info["windows"], "wall_s": result.info["wall_s"],
        "mean_mass_error": float(np.mean([rel[m] for m in MASSES])), "relative_error": rel,
        "fit": result.to_dict(),
        "fit_info": {k: result.info[k] for k in ("fitter", "generations", "steps_per_window")},
    }
    print(f"{case:<28} {row['fitter']:<34} {truth:<12} seed {seed}  mass error {100 * row['mean_mass_error']:.2f}%  "
          f"max error {100 * max(rel.values()):.2f}%  {row['wall_s']:.1f}s", flush=True)
    return row


FITTER_NAMES = {"cma": "CMA-ES", "lm": "LM (mujoco.sysid), replay windows",
                "lm-episodes": "LM (mujoco.sysid), whole episodes"}


def lm_whole_episodes(problem: SysIdProblem, budget: int, nthread: int):
    """The toolbox as designed: whole episodes from their first state, its own residual on qpos/qvel."""
    import mujoco

    from rlsim2real.sysid.fit import Gaussian
    from rlsim2real.sysid.identify import _result
    from rlsim2real.sysid.lm import model_spec, toolbox

    ms = toolbox()
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    model, fs, space, writer = problem.model, problem.frame_skip, problem.space, problem.writer
    low, high, dt = problem.low, problem.high, problem.model.opt.timestep
    log = problem.log
    obs = log.obs.reshape(len(log.obs), -1)
    qpos, qvel = problem.state_map.state_from_obs(obs)
    known = problem.state_map.recoverable(obs)
    joints = [model.joint(j).name for j in range(model.njnt)]
    names = [j + "_qpos" for j in joints[1:]] + [j + "_qvel" for j in joints]  # rootx's position is not observed
    sim = BatchSimulator(model, writer, problem.state_map, fs, 0)
    stops = np.cumsum(log.lengths)
    starts, controls, measured = [], [], []
    for a, b in zip((stops - log.lengths).tolist(), stops.tolist()):
        if b - a < 2 or not known[a]:
            continue
        held = np.repeat(log.actions[a:b - 1].reshape(b - 1 - a, -1).astype(np.float64), fs, axis=0)
        held = np.vstack([held, held[-1:]])
        controls.append(ms.TimeSeries(np.arange(len(held)) * dt, held))
        data = np.hstack([qpos[a:b, 1:], qvel[a:b]])
        measured.append(ms.TimeSeries.from_names(np.arange(b - a) * fs * dt, data, model, names))
        starts.append(sim.initial_states(qpos[a:a + 1], qvel[a:a + 1])[0])
    sim.close()
    sequences = ms.ModelSequences("hopper", model_spec(problem), [f"episode_{i}" for i in range(len(starts))], starts,
                                  controls, measured, allow_missing_sensors=True)
    params = ms.ParameterDict()
    for i, p in enumerate(space):
        params.add(ms.Parameter(p.name, float(np.clip(0.5, low[i], high[i])), low[i], high[i]))
    scratch = mujoco.MjData(model)

    def build_model(values, spec):
        m = writer.copy_model()
        writer.write(m, space.from_normalized(values.as_vector()), scratch)
        return m

    evaluations = 0
    residual = ms.build_residual_fn(
        models_sequences=[sequences], build_model=build_model, n_threads=nthread,
        enabled_observations=[(n, ms.SignalType.MjStateQPos if n.endswith("_qpos") else ms.SignalType.MjStateQVel)
                              for n in names],
    )

    def counted(x, values, **kwargs):
        nonlocal evaluations
        evaluations += 1 if np.ndim(x) == 1 else int(np.shape(x)[1])
        return residual(x, values, **kwargs)

    iterations = 0

    def count_iterations(trace):
        nonlocal iterations
        iterations = len(trace)

    started = time.perf_counter()
    fitted, _ = ms.optimize(params, counted, optimizer="mujoco", verbose=False,
                            max_iters=max(1, budget // (len(space) + 2)), output=io.StringIO(),
                            iter_callback=count_iterations)
    wall = time.perf_counter() - started
    info = {"fitter": "lm-episodes", "objective": "least squares (toolbox residual, qpos/qvel)", "fit_std": False,
            "budget": budget, "seed": None, "samples": 1, "generations": iterations, "evaluations": evaluations,
            "wall_s": wall}
    result = _result(problem, Gaussian(np.asarray(fitted.as_vector()), np.full(len(space), 1e-3)), [], info)
    result.info["windows"] = len(starts)
    result.info["steps_per_window"] = int(np.mean([len(m.times) - 1 for m in measured]))
    return result


def throughput(path: Path, truth: str, args) -> dict:
    problem = SysIdProblem.build("hopper", path, truth=truth)
    w = problem.windows
    rng = np.random.default_rng(0)
    unit = rng.uniform(0.2, 0.8, size=(args.candidates, len(problem.space)))
    values = problem.space.from_normalized(unit)
    sim = BatchSimulator(problem.model, problem.writer, problem.state_map, problem.frame_skip, args.threads)
    envs = []
    for v in values:
        env = rs.make_real_env("hopper", problem.space.to_dict(v), seed=0)
        env.reset(seed=0)
        envs.append(env)

    def batched() -> np.ndarray:
        return sim.replay(values, w.qpos, w.qvel, w.actions)[:, :, 0]

    def python_loop() -> np.ndarray:
        out = np.empty((len(envs), len(w.qpos), w.target.shape[-1]))
        for c, env in enumerate(envs):
            base = env.unwrapped
            for i in range(len(w.qpos)):
                base.set_state(w.qpos[i], w.qvel[i])
                out[c, i] = env.step(w.actions[i, 0])[0]
        return out

    agree = float(np.max(np.abs(batched() - python_loop())))
    rows = {"A_batched_rollout": [], "B_python_loop": []}
    for _ in range(args.rounds):
        for name, fn in (("A_batched_rollout", batched), ("B_python_loop", python_loop)):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rows[name].append({"wall_s": wall, "cpu_s": cpu, "evals_per_s_wall": args.candidates / wall})
    sim.close()
    med = {k: statistics.median(r["evals_per_s_wall"] for r in v) for k, v in rows.items()}
    # Per CPU-second (all of this process's threads): the work per candidate, which other jobs
    # on a shared machine disturb far less than wall time.
    per_cpu = {k: statistics.median(args.candidates / r["cpu_s"] for r in v) for k, v in rows.items()}
    print(f"throughput: batched {med['A_batched_rollout']:.1f} candidates/s, loop {med['B_python_loop']:.1f} candidates/s "
          f"(x{med['A_batched_rollout'] / med['B_python_loop']:.1f}); max |obs difference| {agree:.2e}", flush=True)
    return {
        "candidates": args.candidates, "windows": int(len(w.qpos)), "threads": args.threads, "rounds": rows,
        "median_evals_per_s_wall": med, "speedup": med["A_batched_rollout"] / med["B_python_loop"],
        "median_evals_per_cpu_s": per_cpu, "speedup_cpu": per_cpu["A_batched_rollout"] / per_cpu["B_python_loop"],
        "load_average": os.getloadavg(),
        "max_abs_obs_difference": agree,
    }


def summarize(fits: list[dict]) -> list[dict]:
    out = []
    for case, fitter in dict.fromkeys((f["case"], f["fitter"]) for f in fits):
        for truth in TRUTHS:
            rows = [f for f in fits if f["case"] == case and f["fitter"] == fitter and f["truth"] == truth]
            if not rows:
                continue
            names = list(rows[0]["relative_error"])
            out.append({
                "case": case, "fitter": fitter, "truth": truth, "seeds": [r["seed"] for r in rows],
                "mean_mass_error": float(np.mean([r["mean_mass_error"] for r in rows])),
                "relative_error": {n: float(np.mean([r["relative_error"][n] for r in rows])) for n in names},
                "wall_s": float(np.mean([r["wall_s"] for r in rows])),
                "evaluations": round(float(np.mean([r["evaluations"] for r in rows]))), "windows": float(np.mean([r["windows"] for r in rows])),
                "steps": rows[0]["steps"], "steps_per_window": rows[0]["fit_info"]["steps_per_window"],
            })
    return out


def lm_setup(result: dict) -> list[str]:
    """How each fitter was set up, when the toolbox ran."""
    if not result.get("lm_budget"):
        return []
    return [
        "How each fitter was set up. All start from the middle of the prior box, search the same normalized box "
        "bounded by the same limits, and write candidate models through the same `ModelWriter`. "
        "**CMA-ES**: `identify()`, SimOpt's discrepancy (L1 + L2 of the scaled observation error) as a point fit, "
        f"{result['budget']} candidates, batched `mujoco.rollout` per generation (the DROPO likelihood: mean and std, "
        "10 draws per candidate, one-step windows). "
        "**LM (mujoco.sysid), replay windows**: `identify(fitter=\"lm\")`: the toolbox's `ParameterDict`, "
        "`ModelSequences` (one sequence per replay window: the same windows as CMA-ES), `build_residual_fn` with a "
        "`modify_residual` that returns the env's observations minus the real ones over the same per-dimension scale, "
        f"and `optimize(optimizer=\"mujoco\")` (Levenberg-Marquardt, finite differences), at most {result['lm_budget']} "
        "candidates; it stopped on its own tolerances well before. "
        "**LM (mujoco.sysid), whole episodes**: the toolbox as designed: one sequence per episode from its first "
        "recovered state, its default residual on qpos (rootx is not observed) and qvel, normalized by each "
        "signal's norm over the sequence.",
        "",
    ]


def side_by_side(summary: list[dict]) -> list[str]:
    """CMA-ES against the toolbox's LM on the same logs: mean mass error, worst parameter, wall time."""
    by = {(s["case"], s["fitter"], s["truth"]): s for s in summary}
    lm_names = [n for n in dict.fromkeys(s["fitter"] for s in summary) if n.startswith("LM")]
    if not lm_names:
        return []
    cases = [c for c in dict.fromkeys(s["case"] for s in summary) if (c, "CMA-ES", TRUTHS[0]) in by]
    head = "| case | truth | CMA-ES: mass error / worst / wall s | " + " | ".join(f"{n}: mass error / worst / wall s"
                                                                           for n in lm_names) + " |"
    lines = ["", "## Side by side: CMA-ES and `mujoco.sysid` on the same logs (means over the seeds)", "", head,
             "|---|---|---|" + "---|" * len(lm_names)]
    for case in cases:
        for truth in TRUTHS:
            cells = []
            for fitter in ["CMA-ES", *lm_names]:
                s = by.get((case, fitter, truth))
                cells.append("-" if s is None else f"{100 * s['mean_mass_error']:.2f}% / "
                             f"{100 * max(s['relative_error'].values()):.2f}% / {s['wall_s']:.1f}")
            lines.append(f"| {case} | {truth} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    names = list(result["summary"][0]["relative_error"])
    short = {"torso_mass": "torso", "thigh_mass": "thigh", "leg_mass": "leg", "foot_mass": "foot",
             "friction": "friction", "joint_damping": "damping", "motor_strength": "motor"}
    lines = [
        "# System identification on Hopper",
        "",
        f"Command: `{result['command']}`",
        "",
        describe(result["machine"]) + " The machine was shared with other jobs (load above its 2 cores), so wall "
        "times are upper bounds.",
        "",
        f"Logs: {result['episodes']} random-policy episodes of `make_real_env(\"hopper\", truth)` per seed, saved without "
        "qpos/qvel (states recovered from the observations). Fitted: the 7 parameters of the training box. "
        f"Budget: {result['budget']} candidate evaluations per fit (CMA-ES), seeds {result['seeds']}, "
        f"{result['threads']} rollout threads, replay windows of {result['steps']} steps unless said. Noise: Gaussian, {100 * result['noise']:g}% of each observation "
        "dimension's standard deviation. Errors are |fitted mean - truth| / truth, averaged over the seeds.",
        "",
        *lm_setup(result),
        "| case | fitter | truth | windows x steps | seeds | mass error (mean of 4) | "
        + " | ".join(short.get(n, n) for n in names) + " | evaluations (mean) | wall s |",
        "|---|---|---|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for s in result["summary"]:
        errs = " | ".join(f"{100 * s['relative_error'][n]:.2f}%" for n in names)
        seeds = ",".join(str(x) for x in s["seeds"])
        lines.append(f"| {s['case']} | {s['fitter']} | {s['truth']} | {s['windows']:.0f} x {s['steps_per_window']} | "
                     f"{seeds} | **{100 * s['mean_mass_error']:.2f}%** | "
                     f"{errs} | {s['evaluations']} | {s['wall_s']:.1f} |")
    lines += side_by_side(result["summary"])
    t = result["throughput"]
    med = t["median_evals_per_s_wall"]
    lines += [
        "",
        "Goal: mean mass error <= 1% noise-free and <= 2.5% with 1% sensor noise.",
        "",
        f"## Candidate evaluations per second ({t['candidates']} candidates x {t['windows']} windows, one step each; "
        f"median of {len(t['rounds']['A_batched_rollout'])} alternating rounds)",
        "",
        "| measure | A: batched `mujoco.rollout` | B: Python loop over envs | A/B |",
        "|---|---|---|---|",
        f"| candidates per second, wall | {med['A_batched_rollout']:.1f} | {med['B_python_loop']:.1f} | {t['speedup']:.1f}x |",
        *([f"| candidates per CPU-second | {t['median_evals_per_cpu_s']['A_batched_rollout']:.1f} | "
           f"{t['median_evals_per_cpu_s']['B_python_loop']:.1f} | {t['speedup_cpu']:.1f}x |"] if "speedup_cpu" in t else []),
        "",
        f"A and B agree to {t['max_abs_obs_difference']:.1e} (max absolute observation difference). "
        f"A runs on {t['threads']} threads" + (f"; load average {t['load_average'][0]:.1f} on 2 cores when it ran"
                                              if "load_average" in t else " on a loaded 2-core machine") + ".",
        *([f"Measured by `{t['command']}`, apart from the fits."] if "command" in t else []),
        "",
    ]
    return "\n".join(lines)


def rerun_throughput(args, seeds: list[int]) -> None:
    """Re-measure the throughput table of an existing results file; its fits and notes stay."""
    result = json.loads(Path(args.out + ".json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tput = throughput(make_log(Path(tmp), "in_range", args.episodes, seeds[0], 0.0), "in_range", args)
    tput["command"] = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    result["throughput"] = tput
    old = Path(args.out + ".md").read_text() if Path(args.out + ".md").is_file() else ""
    notes = old[old.index("## Notes"):] if "## Notes" in old else ""
    text = markdown(result) + ("\n" + notes if notes else "")
    print(text)
    if not args.no_write:
        write_json(args.out + ".json", result)
        write_text(args.out + ".md", text)


def machine_with_toolbox() -> dict:
    """The machine, and the versions of what ``mujoco.sysid`` runs on."""
    from importlib import metadata

    m = machine()
    for name in ("scipy", "absl-py"):
        try:
            m["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            m["versions"][name] = None
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=1500, help="candidate evaluations per fit")
    parser.add_argument("--likelihood-budget", type=int, default=0, help="also fit with the DROPO likelihood (0: skip)")
    parser.add_argument("--lm-budget", type=int, default=1500,
                        help="also fit with mujoco.sysid's Levenberg-Marquardt, at most this many candidates (0: skip)")
    parser.add_argument("--steps", type=int, default=3, help="replay window, env steps")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (log and fit)")
    parser.add_argument("--threads", type=int, default=2, help="rollout threads")
    parser.add_argument("--episodes", type=int, default=2, help="random-policy episodes per log")
    parser.add_argument("--noise", type=float, default=0.01, help="sensor noise, fraction of each dimension's std")
    parser.add_argument("--candidates", type=int, default=16, help="candidates in the throughput comparison")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sysid_hopper"), help="results stem")
    parser.add_argument("--throughput-only", action="store_true",
                        help="measure only the candidate throughput, into the existing results file (fits kept)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.throughput_only:
        rerun_throughput(args, seeds)
        return
    started = time.perf_counter()
    fits = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for seed in seeds:
            for truth in TRUTHS:
                clean = make_log(folder, truth, args.episodes, seed, 0.0)
                noisy = make_log(folder, truth, args.episodes, seed, args.noise)
                fits.append(fit(clean, truth, args, seed, "noise-free"))
                fits.append(fit(noisy, truth, args, seed, f"{100 * args.noise:g}% sensor noise"))
                fits.append(fit(clean, truth, args, seed, "5 transitions, noise-free", max_windows=5, steps=1))
                if args.lm_budget:
                    fits.append(fit(clean, truth, args, seed, "noise-free", fitter="lm"))
                    fits.append(fit(noisy, truth, args, seed, f"{100 * args.noise:g}% sensor noise", fitter="lm"))
                    fits.append(fit(clean, truth, args, seed, "5 transitions, noise-free", max_windows=5, steps=1,
                                    fitter="lm"))
                    fits.append(fit(clean, truth, args, seed, "noise-free", fitter="lm-episodes"))
                    fits.append(fit(noisy, truth, args, seed, f"{100 * args.noise:g}% sensor noise",
                                    fitter="lm-episodes"))
                if args.likelihood_budget and seed == seeds[0]:
                    fits.append(fit(clean, truth, args, seed, "DROPO likelihood, noise-free", objective="likelihood",
                                    budget=args.likelihood_budget, steps=1))
        tput = throughput(make_log(folder, "in_range", args.episodes, seeds[0], 0.0), "in_range", args)
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_with_toolbox(), "budget": args.budget, "likelihood_budget": args.likelihood_budget,
        "lm_budget": args.lm_budget, "seeds": seeds,
        "threads": args.threads, "steps": args.steps, "episodes": args.episodes, "noise": args.noise,
        "summary": summarize(fits), "throughput": tput, "fits": fits, "total_wall_s": time.perf_counter() - started,
    }
    text = markdown(result)
    print(text)
    if not args.no_write:
        write_json(args.out + ".json", result)
        write_text(args.out + ".md", text)
        print(f"wrote {args.out}.json, {args.out}.md")


if __name__ == "__main__":
    main()
