"""The ``rlsim2real`` command line: ``envs``, ``train``, ``evaluate``, ``sysid``.

Bad input (a spec error, an unknown set, a missing run, a bad option) prints one line
naming the place and what was expected, and exits with status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

from rlsim2real.params import SpecError


def _cmd_envs(args: argparse.Namespace) -> int:
    from rlsim2real.specs import list_specs, load_env_spec

    names = args.names or [str(p) for p in list_specs("envs").values()]
    for name in names:
        spec = load_env_spec(name)
        base = spec.env_id or spec.entry_point
        print(f"{spec.name}  ({base})  {spec.path}")
        if spec.description:
            print(f"  {spec.description}")
        wn = max([len(n) for n in (*spec.all_params.names, *spec.real_sets)] or [0]) + 2
        wt = max((len(p.target) for p in spec.all_params), default=0) + 2
        for title, space in (("training box", spec.params), ("held out of training", spec.heldout_params)):
            if len(space):
                print(f"  {title}:")
            for p in space:
                rng = f"[{p.low:g}, {p.high:g}]" if p.low != p.high else f"{p.low:g}"
                lim = f"  limits [{p.limits[0]:g}, {p.limits[1]:g}]" if p.limits is not None else ""
                print(f"    {p.name:<{wn}}{p.target:<{wt}}{p.mode:<6}{rng:<14}{p.dist:<11}{lim}")
        print("  real sets:")
        for set_name, values in spec.real_sets.items():
            shown = ", ".join(f"{k}={v:g}" for k, v in values.items())
            print(f"    {set_name:<{wn}}{shown}")
        print()
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rlsim2real.training import train

    run = train(
        args.experiment,
        timesteps=args.timesteps,
        seed=args.seed,
        out=args.out,
        device=args.device,
        resume=args.resume,
        evaluate=False if args.no_eval else None,
        progress_bar=args.progress,
        verbose=args.verbose,
    )
    print(f"run written to {run.path}")
    return 0


def _cmd_render_grid(args: argparse.Namespace) -> int:
    from rlsim2real.plots import plot_render_grid
    from rlsim2real.specs import load_env_spec

    spec = load_env_spec(args.spec)
    out = plot_render_grid(args.out or f"{spec.name}_grid.png", spec, n=args.n, seed=args.seed)
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rlsim2real.evaluation import evaluate_transfer

    sets = [s.strip() for s in args.sets.split(",") if s.strip()] if args.sets else None
    report = evaluate_transfer(
        args.run_dir,
        episodes=args.episodes,
        sets=sets,
        grid=args.grid,
        device=args.device,
        checkpoint=args.checkpoint,
        step=args.step,
        progress=args.progress,
    )
    print(report.table())
    print(f"wrote {', '.join(str(p) for p in report.saved.values())}")
    return 0


def _cmd_sysid(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rlsim2real.sysid import SysIdProblem, identify

    out = Path(args.out) if args.out else Path(args.trajectories).with_suffix(".fit.json")
    if out.suffix != ".json":
        raise SpecError(f"--out: {out}: expected a .json file name")
    if out.exists() and not args.overwrite:
        raise SpecError(f"--out: {out} exists; choose another name or pass --overwrite")
    if args.smooth < 0:
        raise SpecError(f"--smooth: expected a width in steps >= 0, got {args.smooth}")
    if args.budget < 1:
        raise SpecError(f"--budget: expected at least 1 candidate evaluation, got {args.budget}")
    if args.samples is not None and args.samples < 2 and args.objective == "likelihood":
        raise SpecError(f"--samples: the likelihood needs at least 2 draws per candidate, got {args.samples}")
    if args.mode == "closed-loop" and not args.run:
        raise SpecError("--mode closed-loop: needs --run RUN_DIR, the policy that acted in the log")
    if args.run and args.mode != "closed-loop":
        raise SpecError("--run: the policy is used only with --mode closed-loop")
    if args.fitter == "lm":
        from rlsim2real.sysid.lm import toolbox

        toolbox()  # a missing extra is one line before the log is read
        if args.mode != "replay" or args.objective == "likelihood" or args.samples is not None or args.smooth:
            raise SpecError("--fitter lm: fits a point to replay windows; --mode closed-loop, --objective likelihood, "
                            "--samples and --smooth need --fitter cma")
    params = [s.strip() for s in args.params.split(",") if s.strip()] if args.params else None
    problem = SysIdProblem.build(
        args.env, args.trajectories, params=params, mode=args.mode, steps=args.steps, truth=args.truth,
        horizon=args.horizon,
    )
    policy = None
    if args.run:
        from rlsim2real.evaluation import RunPolicy

        policy = RunPolicy.from_run(args.run)
    w = problem.windows
    print(
        f"sysid: {problem.spec.name}, {len(problem.space)} parameters, {problem.mode} on {len(w.qpos)} windows "
        f"of {w.target.shape[1]} step(s) from {problem.log_path} ({problem.log.n_episodes} episodes, "
        f"{len(problem.log.obs)} steps; {problem.skipped} starts skipped)",
        flush=True,
    )
    meta = problem.log.metadata
    if meta:
        shown = ", ".join(f"{k}={v}" for k, v in meta.items() if isinstance(v, (str, int, float)))
        print(f"sysid: log metadata: {shown or '(nested values only)'}", flush=True)
        if isinstance(meta.get("env"), str) and meta["env"] not in (problem.spec.name, str(args.env)):
            print(f"sysid: note: the log says env {meta['env']!r}; fitting it as {problem.spec.name!r}", flush=True)
    started = time.perf_counter()

    step = "iteration" if args.fitter == "lm" else "generation"

    def progress(gen) -> None:
        print(
            f"sysid/{step} {gen.generation:>3}  evaluations {gen.evaluations:>5}  best {gen.best_loss:.5g}  "
            f"median {gen.median_loss:.5g}  {time.perf_counter() - started:.1f}s",
            flush=True,
        )

    result = identify(
        problem, objective=args.objective, budget=args.budget, seed=args.seed, samples=args.samples,
        nthread=args.threads, policy=policy, smooth=args.smooth, progress=progress, fitter=args.fitter,
    )
    print(result.table())
    saved = result.save(out)
    print(f"wrote {', '.join(str(p) for p in saved.values())}")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """Reports a bad option in one line (``-h`` still shows the usage), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"rlsim2real: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="rlsim2real", description="Sim-to-real RL for MuJoCo.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("envs", help="list env specs, their parameters and real sets")
    p.add_argument("names", nargs="*", help="spec names or paths (default: every spec found)")
    p.set_defaults(func=_cmd_envs)

    p = sub.add_parser("train", help="train from an experiment file, then evaluate transfer")
    p.add_argument("experiment", help="experiment name or .toml path")
    p.add_argument("--timesteps", type=int, help="total environment steps (overrides the spec)")
    p.add_argument("--seed", type=int, help="seed (overrides the spec)")
    p.add_argument("--out", help="run directory (default runs/<name>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch device (default: the spec's)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the transfer evaluation at the end")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.add_argument("-v", "--verbose", action="count", default=0, help="print SB3's log table")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on held-out real sets")
    p.add_argument("run_dir", help="a run directory written by train")
    p.add_argument("--sets", help="comma-separated set names (default: nominal and every real set)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per set, >= 1 (default 10)")
    p.add_argument("--grid", action="store_true", help="also sweep the spec's 2-D grid and draw transfer.png")
    p.add_argument("--device", default="cpu", help="torch device: auto, cpu, cuda or cuda:N (default cpu)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--checkpoint", metavar="PATH",
        help="evaluate this checkpoint folder instead of the final model.zip; the report goes into that folder",
    )
    which.add_argument(
        "--step", type=int, metavar="N",
        help="evaluate the checkpoint saved at step N; the report goes into its folder (checkpoints/step_N)",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("render-grid", help="a PNG of randomized frames and each real set's frame (pixel specs)")
    p.add_argument("spec", help="pixel env spec name or .toml path")
    p.add_argument("--n", type=int, default=8, help="randomized frames (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first randomized frame (default 0)")
    p.add_argument("--out", help="PNG path (default <spec>_grid.png)")
    p.set_defaults(func=_cmd_render_grid)

    p = sub.add_parser(
        "sysid", help="fit the spec's parameters to a real log with CMA-ES (SimOpt / DROPO) or Levenberg-Marquardt",
    )
    p.add_argument("--env", required=True, help="env spec name or .toml path")
    p.add_argument("--trajectories", required=True, metavar="FILE.npz", help="the real log (see docs/sysid.md)")
    p.add_argument("--params", help="comma-separated parameters to fit (default: the spec's training box)")
    p.add_argument("--mode", choices=["replay", "closed-loop"], default="replay",
                   help="replay: reset to each real state, replay the real actions (default); "
                        "closed-loop: run the policy of --run from each episode's first state")
    p.add_argument("--run", metavar="RUN_DIR", help="the run whose policy acted in the log (closed-loop mode)")
    p.add_argument("--objective", choices=["likelihood", "discrepancy"],
                   help="discrepancy (SimOpt; default: a point fit of the mean) or likelihood "
                        "(DROPO: fits mean and std)")
    p.add_argument("--fitter", choices=["cma", "lm"], default="cma",
                   help="cma: CMA-ES (default); lm: a point fit of the replay windows by Levenberg-Marquardt "
                        "with MuJoCo's toolbox (needs the extra mujoco[sysid])")
    p.add_argument("--budget", type=int, default=1000, help="candidates to evaluate (default 1000)")
    p.add_argument("--steps", type=int, default=1, help="replay window, env steps (default 1)")
    p.add_argument("--horizon", type=int, default=100, help="closed-loop steps per episode at most (default 100)")
    p.add_argument("--samples", type=int,
                   help="parameter draws per candidate (default 10 for the likelihood, 1 for a point fit)")
    p.add_argument("--smooth", type=float, default=0.0,
                   help="Gaussian smoothing of the discrepancy along time, in steps (default 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of CMA-ES and the draws (default 0)")
    p.add_argument("--threads", type=int, help="rollout threads (default: every CPU)")
    p.add_argument("--out", metavar="FIT.json", help="the fit (default FILE.fit.json); FIT.png beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--truth", metavar="SET", help="a real set of the spec with the true values, to report errors")
    p.set_defaults(func=_cmd_sysid)
    return parser


_CANNOT_WRITE = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlsim2real`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"rlsim2real: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Output that could not be written (read-only, full disk) after the up-front
        # checks passed: one line, the files already written are kept.
        if exc.errno not in _CANNOT_WRITE:
            raise
        print(f"rlsim2real: error: {exc.filename or 'output'}: cannot write: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from rlsim2real.training import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"rlsim2real: interrupted: {exc}", file=sys.stderr)
            return exc.exit_status
        print("rlsim2real: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
