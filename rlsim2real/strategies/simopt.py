"""SimOpt (Chebotar et al. 2019): move the training distribution toward the real system.

Train under the current distribution; every ``policy_steps`` agent steps run the current
policy for ``real_episodes`` episodes on the "real" system (a held-out real set of the env
spec, standing in for the robot: the policy only sees its observations, the states are
recovered from them as they would be from a robot's log); fit the parameters to those
episodes with CMA-ES (:func:`rlsim2real.sysid.identify`, warm-started from the previous fit,
optionally with a KL penalty to it); train on, under a truncated normal around the fit.
After ``iterations`` fits the distribution stays where the last fit put it.

Each fit runs to completion at the end of one rollout, so no CMA-ES search is ever half done
at a checkpoint: the strategy's state is its fits (normalized Gaussians and their values),
the iteration, the counters of real episodes and simulator evaluations, and the policy steps
of the next fit.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlsim2real.distributions import BoxDistribution
from rlsim2real.params import Param, ParamSpace, SpecError
from rlsim2real.strategies.base import EpisodeRecord, Strategy, StrategySettings

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

    from rlsim2real.specs import EnvSpec

MODES = ("replay", "closed-loop")
OBJECTIVES = ("discrepancy", "likelihood")


@dataclass(frozen=True)
class SimOptSettings(StrategySettings):
    """The ``[strategy]`` table of ``name = "simopt"``.

    Attributes:
        real_set: The real set of the env spec that plays the real system (required).
        params: Training parameters to fit (model fields; default: every model term of the
            training box); the others keep their box.
        real_episodes: Episodes of the current policy on the real system per fit.
        iterations: Fits over the run.
        policy_steps: Agent steps before the first fit and between fits.
        mode: ``"replay"`` (reset to each real state, replay the real actions) or
            ``"closed-loop"`` (run the policy from each real episode's first state).
        objective: ``"discrepancy"`` (SimOpt) or ``"likelihood"`` (DROPO).
        budget: Candidate distributions CMA-ES evaluates per fit.
        steps: Replay window, env steps.
        kl_weight: Weight of the KL penalty to the previous fit (0: none).
        std_floor: Least std of the training distribution, as a fraction of each parameter's
            training range (a point fit would otherwise stop randomizing).
        threads: Rollout threads of the fit.
    """

    real_set: str = ""
    params: tuple[str, ...] = ()
    real_episodes: int = 2
    iterations: int = 3
    policy_steps: int = 50_000
    mode: str = "replay"
    objective: str = "discrepancy"
    budget: int = 300
    steps: int = 3
    kl_weight: float = 0.0
    std_floor: float = 0.05
    threads: int = 1

    def validate(self, where: str, env: "EnvSpec") -> None:
        need = functools.partial(self.require, where)
        need(self.real_set in env.real_sets, "real_set",
             f"a real set of {env.source} ({', '.join(env.real_sets) or 'none'})")
        need(self.real_episodes >= 1, "real_episodes", "an integer >= 1")
        need(self.iterations >= 1, "iterations", "an integer >= 1")
        need(self.policy_steps >= 1, "policy_steps", "an integer >= 1")
        need(self.mode in MODES, "mode", f"one of {', '.join(MODES)}")
        need(self.objective in OBJECTIVES, "objective", f"one of {', '.join(OBJECTIVES)}")
        need(self.budget >= 1, "budget", "an integer >= 1")
        need(self.steps >= 1, "steps", "an integer >= 1")
        need(self.kl_weight >= 0.0, "kl_weight", "a number >= 0")
        need(0.0 < self.std_floor <= 1.0, "std_floor", "a fraction in (0, 1]")
        need(self.threads >= 1, "threads", "an integer >= 1")
        fitted = fitted_names(self, env)
        if not fitted:
            raise SpecError(f"{where}.params: the training box of {env.source} has no model terms to fit")
        for name in self.params:
            if name not in env.params:
                raise SpecError(f"{where}.params: {name!r} is not a training parameter of {env.source}; "
                                f"expected some of {', '.join(env.params.names)}")
            if env.params[name].parsed.kind != "model":
                raise SpecError(f"{where}.params: {name!r} is not a model field; SimOpt fits masses, friction, "
                                f"damping, gears, ...")


def fitted_names(settings: SimOptSettings, env: "EnvSpec") -> tuple[str, ...]:
    model = [p.name for p in env.params if p.parsed.kind == "model"]
    return tuple(n for n in model if n in settings.params) if settings.params else tuple(model)


class SimOptStrategy(Strategy):
    """SimOpt: fit the distribution to episodes on the real system, retrain, repeat.

    Args:
        env: The env spec (training box, real sets).
        settings: The ``[strategy]`` settings.
        seed: Seeds the real episodes and the fits.
    """

    name = "simopt"
    Settings = SimOptSettings

    def __init__(self, env: "EnvSpec", settings: SimOptSettings | None = None, seed: int = 0) -> None:
        if settings is None:
            raise SpecError("strategy: simopt needs real_set = \"<a real set of the env spec>\"")
        settings.validate("strategy", env)
        self.env, self.settings, self.seed = env, settings, int(seed)
        self.fitted = fitted_names(settings, env)
        self.iteration = 0
        self.next_fit = settings.policy_steps
        self.real_episodes = 0
        self.real_steps = 0
        self.sim_evaluations = 0
        self.sim_steps = 0
        self.skipped = 0
        self.fits: list[dict[str, Any]] = []  # timesteps, mean, std (values), normalized mean/std, loss
        self._policy: Any = None
        self._runner: Any = None
        super().__init__(self._build())

    # ------------------------------------------------------------------ distribution
    def _build(self) -> BoxDistribution:
        if not self.fits:
            return BoxDistribution(self.env.params)
        last = self.fits[-1]
        params = []
        for p in self.env.params:
            if p.name not in self.fitted:
                params.append(p)
                continue
            k = self.fitted.index(p.name)
            low, high = p.limits if p.limits is not None else p.range
            std = max(float(last["std"][k]), self.settings.std_floor * (p.high - p.low))
            mean = float(np.clip(last["mean"][k], low, high))
            params.append(Param(p.name, p.target, (low, high), p.mode, "normal", mean, std, p.limits))
        return BoxDistribution(ParamSpace(params))

    # ------------------------------------------------------------------ the real system
    def attach(self, model: Any, venv: "VecEnv") -> None:
        from stable_baselines3.common.vec_env import unwrap_vec_normalize

        from rlsim2real.evaluation import RunPolicy

        self.set_policy(RunPolicy(model, unwrap_vec_normalize(venv)))

    def set_policy(self, policy: Any) -> None:
        """The policy that acts on the real system (``None``: random actions)."""
        self._policy = policy

    def update(self, records: Sequence[EpisodeRecord]) -> bool:
        for record in records:
            self.timesteps = max(self.timesteps, int(record.timesteps))
        if self.iteration >= self.settings.iterations or self.timesteps < self.next_fit:
            return False
        return self.fit()

    def fit(self) -> bool:
        """Run the real episodes, fit, and move the distribution (one SimOpt iteration).

        Returns:
            Whether the distribution moved (``False`` when the real episodes were too short
            to compare: the try is counted in ``simopt/skipped_fits``).
        """
        from rlsim2real.episodes import EpisodeRunner, seeded_jobs, to_trajectories
        from rlsim2real.sysid import SysIdProblem, identify
        from rlsim2real.sysid.fit import Gaussian

        s = self.settings
        if self._runner is None:
            self._runner = EpisodeRunner(self.env, batch=s.real_episodes)
        jobs = seeded_jobs(s.real_set, s.real_episodes, self.seed + 90_000 + 1000 * self.iteration)
        results = self._runner.run(self._policy, jobs, deterministic=False, record=("obs", "actions", "rewards"))
        self.real_episodes += len(results)
        self.real_steps += sum(r.length for r in results)
        previous = None
        if self.fits:
            previous = Gaussian(np.asarray(self.fits[-1]["unit_mean"]), np.asarray(self.fits[-1]["unit_std"]))
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "real.npz"
            to_trajectories(results).save(log)
            try:
                problem = SysIdProblem.build(self.env, log, list(self.fitted), mode=s.mode, steps=s.steps)
            except SpecError as exc:
                # Episodes too short for a window (a policy that falls at once): no fit this
                # time; the distribution stays and the next try comes policy_steps later.
                self.skipped += 1
                self.next_fit = self.timesteps + s.policy_steps
                warnings.warn(f"simopt: no fit at step {self.timesteps:,}: {str(exc).split(': ', 2)[-1]}", stacklevel=2)
                return False
            result = identify(problem, s.objective, s.budget, seed=self.seed + self.iteration, nthread=s.threads,
                              policy=self._policy if s.mode == "closed-loop" else None, previous=previous,
                              kl_weight=s.kl_weight)
        self.sim_evaluations += int(result.info["evaluations"])
        self.sim_steps += int(result.info["simulated_env_steps"])
        self.fits.append({
            "timesteps": self.timesteps, "mean": result.mean.tolist(), "std": result.std.tolist(),
            "unit_mean": result.fit.mean.tolist(), "unit_std": result.fit.std.tolist(),
            "loss": float(result.history[-1]["best_loss"]) if result.history else float("nan"),
            "real_steps": sum(r.length for r in results),
            # What the policy of this iteration scored on the real system (stochastic actions).
            "real_return": float(np.mean([r.episode_return for r in results])),
        })
        self.iteration += 1
        self.next_fit = self.timesteps + s.policy_steps
        self.distribution = self._build()
        return True

    # ------------------------------------------------------------------ logs and state
    def log_values(self) -> dict[str, float]:
        out = {"simopt/iteration": float(self.iteration), "simopt/real_episodes": float(self.real_episodes),
               "simopt/real_steps": float(self.real_steps), "simopt/sim_evaluations": float(self.sim_evaluations),
               "simopt/sim_steps": float(self.sim_steps), "simopt/skipped_fits": float(self.skipped)}
        if self.fits:
            last = self.fits[-1]
            out["simopt/fit_loss"] = float(last["loss"])
            out["simopt/real_return"] = float(last.get("real_return", float("nan")))
            for k, name in enumerate(self.fitted):
                out[f"simopt/{name}_mean"] = float(last["mean"][k])
                out[f"simopt/{name}_std"] = float(last["std"][k])
        return out

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "settings": self.settings.to_dict(), "fitted": list(self.fitted),
                "fits": self.fits, "iteration": self.iteration, "real_episodes": self.real_episodes,
                "real_steps": self.real_steps, "sim_evaluations": self.sim_evaluations, "sim_steps": self.sim_steps,
                "next_fit": self.next_fit, "timesteps": self.timesteps}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "fitted": self.fitted, "fits": [dict(f) for f in self.fits],
                "iteration": self.iteration, "next_fit": self.next_fit, "real_episodes": self.real_episodes,
                "real_steps": self.real_steps, "sim_evaluations": self.sim_evaluations, "sim_steps": self.sim_steps,
                "skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if tuple(state.get("fitted", ())) != self.fitted:
            raise SpecError(f"checkpoint fits {', '.join(state.get('fitted', ()))}, not {', '.join(self.fitted)}")
        self.fits = [dict(f) for f in state["fits"]]
        self.iteration, self.next_fit = int(state["iteration"]), int(state["next_fit"])
        self.real_episodes, self.real_steps = int(state["real_episodes"]), int(state["real_steps"])
        self.sim_evaluations, self.sim_steps = int(state["sim_evaluations"]), int(state["sim_steps"])
        self.skipped = int(state.get("skipped", 0))
        self.distribution = self._build()
