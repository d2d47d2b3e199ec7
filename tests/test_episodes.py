"""The episode runner: reused envs, pinned and sampled jobs, recording, recurrent policies."""

import numpy as np
import pytest

import rlsim2real as rs
import rlsim2real.episodes as episodes
from rlsim2real.episodes import AS_IS, EpisodeJob, EpisodeRunner, episode_success, to_trajectories

SPEC = "inverted_pendulum"


def lean(obs: np.ndarray) -> np.ndarray:
    """Push the cart toward the pole's lean: episodes long enough to differ, still short."""
    return np.array([np.clip(2.0 * obs[1] + 0.3 * obs[3], -3.0, 3.0)], dtype=np.float32)


class CountingRecurrent:
    """A recurrent stub: its state counts the steps of each slot's episode, its action is a function of it."""

    def __init__(self) -> None:
        self.starts: list[np.ndarray] = []

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        self.starts.append(np.array(episode_start, copy=True))
        steps = np.zeros(len(obs)) if state is None else state.copy()
        steps[episode_start] = 0
        return (0.5 * np.sin(steps))[:, None].astype(np.float32), steps + 1


class CountingPolicy:
    def __init__(self) -> None:
        self.calls = 0

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        self.calls += 1
        return np.zeros((len(obs), 1), dtype=np.float32), state


def alone(job: EpisodeJob, policy, record=()) -> episodes.EpisodeResult:
    """The job run by itself on a fresh env built the old way (make_real_env / make_env)."""
    env = rs.make_env(SPEC, seed=job.seed) if job.values is None else rs.make_real_env(SPEC, job.values, seed=job.seed)
    with EpisodeRunner.from_envs([env], rs.load_env_spec(SPEC)) as runner:
        result = runner.run(policy, [EpisodeJob(AS_IS, job.seed)], record=record)[0]
    env.close()
    return result


MIXED = [
    EpisodeJob("nominal", 0),
    EpisodeJob("action_latency", 1),  # on an env that just ran without a delay
    EpisodeJob("sensor_shift", 2),
    EpisodeJob(None, 3),
    EpisodeJob({"pole_mass": 1.5, "friction": 0.3}, 4),
    EpisodeJob("nominal", 5),
    EpisodeJob("action_latency", 6),
]


def test_results_match_each_job_run_alone_on_a_fresh_env():
    with EpisodeRunner(SPEC, batch=2) as runner:
        results = runner.run(lean, MIXED, record=("obs", "qpos"))
    for job, got in zip(MIXED, results):
        want = alone(job, lean, record=("obs", "qpos"))
        assert got.params == want.params, job
        assert got.episode_return == want.episode_return and got.length == want.length, job
        np.testing.assert_array_equal(got.obs, want.obs)
        np.testing.assert_array_equal(got.qpos, want.qpos)
    assert results[1].params["action_delay"] == 2 and results[0].params["action_delay"] == 0


def test_envs_are_built_once_and_reused(monkeypatch):
    built = []

    def counting_make_env(*args, **kwargs):
        built.append(args)
        return rs.make_env(*args, **kwargs)

    monkeypatch.setattr(episodes, "make_env", counting_make_env)
    runner = EpisodeRunner(SPEC, batch=3)
    assert runner.envs == ()  # built lazily
    runner.run(None, episodes.seeded_jobs("heavy_pole", 9, seed=0))
    runner.run(None, episodes.seeded_jobs("nominal", 9, seed=0))
    assert len(built) == 3 and len(runner.envs) == 3
    runner.run(None, [EpisodeJob("nominal", 0)])
    assert len(built) == 3
    runner.close()
    assert runner.envs == ()


def test_a_pinned_job_does_not_stick_to_the_next_sampled_one():
    spec = rs.load_env_spec(SPEC)
    jobs = [EpisodeJob({"pole_mass": 1.25, "cart_mass": 0.75}, 0), EpisodeJob(None, 1), EpisodeJob(None, 2)]
    with EpisodeRunner(spec, batch=1) as runner:
        pinned, sampled, again = runner.run(None, jobs)
    assert pinned.params["pole_mass"] == 1.25 and pinned.params["cart_mass"] == 0.75
    assert pinned.params["motor_strength"] == 1.0  # not named: nominal
    for result in (sampled, again):
        assert result.params["pole_mass"] != 1.25 and result.params["cart_mass"] != 0.75
        lo, hi = spec.params["pole_mass"].range
        assert lo <= result.params["pole_mass"] <= hi
    assert sampled.params != again.params


def test_recording_matches_episode_lengths_and_the_model():
    env = rs.make_real_env(SPEC, "nominal")
    nq, nv = env.unwrapped.model.nq, env.unwrapped.model.nv
    with EpisodeRunner(SPEC, batch=2) as runner:
        results = runner.run(None, episodes.seeded_jobs("heavy_pole", 3, seed=0), record=episodes.RECORDABLE)
        plain = runner.run(None, episodes.seeded_jobs("heavy_pole", 3, seed=0))
        trajs = to_trajectories(results)
    for r in results:
        assert r.obs.shape == (r.length, 4) and r.actions.shape == (r.length, 1) and r.rewards.shape == (r.length,)
        assert r.qpos.shape == (r.length, nq) and r.qvel.shape == (r.length, nv)
        assert r.rewards.sum() == pytest.approx(r.episode_return)
    assert plain[0].obs is None and plain[0].episode_return == results[0].episode_return
    np.testing.assert_array_equal(trajs.lengths, [r.length for r in results])
    np.testing.assert_allclose(trajs.returns(), [r.episode_return for r in results])
    assert trajs.params[0]["pole_mass"] == 2.0
    with pytest.raises(rs.SpecError, match="record"):
        to_trajectories(plain)


def test_recurrent_state_restarts_exactly_at_each_episode_start():
    jobs = episodes.seeded_jobs("nominal", 5, seed=0)
    policy = CountingRecurrent()
    with EpisodeRunner(SPEC, batch=2) as runner:
        results = runner.run(policy, jobs, record=("actions",))
    starts = np.array(policy.starts)
    assert starts[0].all() and starts.sum() == len(jobs)  # one start per job: the first two, then refills
    for job, r in zip(jobs, results):
        # The action at step t is a function of the state's step count: it must be t.
        np.testing.assert_allclose(r.actions[:, 0], 0.5 * np.sin(np.arange(r.length)), rtol=1e-6)
        assert r.episode_return == alone(job, CountingRecurrent()).episode_return


def test_bad_jobs_fail_before_any_step():
    policy = CountingPolicy()
    with EpisodeRunner(SPEC, batch=2) as runner:
        with pytest.raises(rs.SpecError, match="unknown real set 'no_such_set'"):
            runner.run(policy, [EpisodeJob("nominal", 0), EpisodeJob("no_such_set", 1)])
        with pytest.raises(rs.SpecError, match="job 2: unknown parameters pole_mas"):
            runner.run(policy, [EpisodeJob("nominal", 0)] * 2 + [EpisodeJob({"pole_mas": 1.0}, 1)])
        with pytest.raises(rs.SpecError, match="job 3: .*pole_mass.*expected > 0"):
            runner.run(policy, [EpisodeJob("nominal", i) for i in range(3)] + [EpisodeJob({"pole_mass": 0.0}, 3)])
        with pytest.raises(rs.SpecError, match="cannot record"):
            runner.run(policy, [EpisodeJob("nominal", 0)], record=("pixels",))
    assert policy.calls == 0


def test_random_actions_repeat_with_the_seed():
    with EpisodeRunner(SPEC, batch=2) as runner:
        first = runner.run(None, episodes.seeded_jobs("nominal", 3, seed=7), record=("actions",))
        again = runner.run(None, list(reversed(episodes.seeded_jobs("nominal", 3, seed=7))), record=("actions",))[::-1]
        other = runner.run(None, episodes.seeded_jobs("nominal", 3, seed=8), record=("actions",))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.episode_return == b.episode_return
    assert not np.array_equal(first[0].actions[:3], other[0].actions[:3])


def test_collect_trajectories_runs_the_users_env_as_configured():
    env = rs.make_real_env(SPEC, "heavy_pole", seed=0)
    trajs = rs.collect_trajectories(env, policy=lean, episodes=3, seed=4, max_steps=5)
    assert [p["pole_mass"] for p in trajs.params] == [2.0, 2.0, 2.0]
    assert trajs.lengths.max() <= 5
    assert env.reset()[1]["dr_params"]["pole_mass"] == 2.0  # still pinned


def test_plain_gymnasium_envs_run_too():
    import gymnasium as gym

    env = gym.make("InvertedPendulum-v5")
    trajs = rs.collect_trajectories(env, policy=None, episodes=2, seed=0)
    assert trajs.params == [{}, {}] and trajs.qpos.shape == (len(trajs.obs), 2)
    with EpisodeRunner.from_envs([env]) as runner:
        assert runner.run(lean, [EpisodeJob("nominal", 0)])[0].length > 0
        with pytest.raises(rs.SpecError, match="unknown parameters pole_mass"):
            runner.run(lean, [EpisodeJob({"pole_mass": 2.0}, 0)])
    assert env.reset(seed=0)[0].shape == (4,)  # the runner leaves a given env open


def test_success_rule():
    assert episode_success(None, 5.0, terminated=False, truncated=True, unstable=False)
    assert not episode_success(None, 5.0, terminated=True, truncated=False, unstable=False)
    assert not episode_success(None, 5.0, terminated=False, truncated=True, unstable=True)
    assert episode_success(4.0, 5.0, terminated=True, truncated=False, unstable=False)
    assert not episode_success(6.0, 5.0, terminated=False, truncated=True, unstable=False)
