"""SlidingBlock: push a block with a payload across a floor to a goal (a custom rlsim2real env).

The model is ``sliding_block.xml`` next to this file. Two force motors push the block along
x and y; it cannot roll or tip, so floor friction sets how much of the push becomes motion and
how quickly the block stops. A random goal is drawn on the floor at every reset.

Observation, shape (6,), float64::

    [x, y, vx, vy, goal_x - x, goal_y - y]     block position (m), velocity (m/s), offset to goal

Action, shape (2,), in [-1, 1]: motor commands along x and y (force = gear * command, N).

Reward per step: ``-distance - ctrl_cost_weight * |action|^2`` plus ``success_bonus`` while the
block's centre is within ``goal_radius`` of the goal. Episodes never terminate; the time limit
(``max_episode_steps`` in the spec) truncates them. ``info`` has ``distance``, ``is_success``,
``reward_dist`` and ``reward_ctrl``.

Example:
    >>> env = SlidingBlockEnv()
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, env.action_space.shape
    ((6,), (2,))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box

# Absolute, so the env loads from any working directory (and MujocoEnv takes paths that
# start with "/" as they are).
MODEL_PATH = str(Path(__file__).resolve().with_name("sliding_block.xml"))

DEFAULT_CAMERA_CONFIG = {"distance": 2.6, "elevation": -55.0, "azimuth": 90.0, "lookat": np.array([0.0, 0.0, 0.0])}


class SlidingBlockEnv(MujocoEnv, utils.EzPickle):
    """Push a sliding block to a random goal with two planar force motors.

    Args:
        frame_skip: MuJoCo steps (5 ms each) per env step; 10 gives 20 Hz control.
        ctrl_cost_weight: Weight of the squared action in the reward.
        goal_radius: Distance (m) within which the block counts as at the goal.
        success_bonus: Reward added at every step the block is at the goal.
        goal_distance: ``(min, max)`` distance (m) of the goal from the origin at reset.
        reset_noise_scale: Half-width of the uniform noise on the block's initial position
            (m) and velocity (m/s).
        render_mode: ``None`` (default), ``"human"``, ``"rgb_array"`` or ``"depth_array"``.
        **kwargs: Passed to :class:`gymnasium.envs.mujoco.MujocoEnv` (width, height, ...).
    """

    metadata = {"render_modes": ["rgb_array", "depth_array"]}

    def __init__(
        self,
        frame_skip: int = 10,
        ctrl_cost_weight: float = 0.1,
        goal_radius: float = 0.05,
        success_bonus: float = 1.0,
        goal_distance: tuple[float, float] = (0.3, 0.8),
        reset_noise_scale: float = 0.05,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(
            self, frame_skip, ctrl_cost_weight, goal_radius, success_bonus, goal_distance, reset_noise_scale,
            render_mode, **kwargs,
        )
        low, high = (float(d) for d in goal_distance)
        if not 0.0 <= low <= high:
            raise ValueError(f"goal_distance must be (min, max) with 0 <= min <= max, got {goal_distance!r}")
        self._ctrl_cost_weight = float(ctrl_cost_weight)
        self._goal_radius = float(goal_radius)
        self._success_bonus = float(success_bonus)
        self._goal_distance = (low, high)
        self._reset_noise_scale = float(reset_noise_scale)
        self._goal = np.zeros(2)

        observation_space = Box(low=-np.inf, high=np.inf, shape=(6,), dtype=np.float64)
        MujocoEnv.__init__(
            self,
            MODEL_PATH,
            frame_skip,
            observation_space=observation_space,
            render_mode=render_mode,
            default_camera_config=DEFAULT_CAMERA_CONFIG,
            **kwargs,
        )
        self.metadata = {
            "render_modes": ["rgb_array", "depth_array"],
            "render_fps": int(np.round(1.0 / self.dt)),
        }
        # Planar DOFs of the block (qpos and qvel share indices: slides have one of each).
        self._xy = np.array([self.model.joint(n).qposadr[0] for n in ("slide_x", "slide_y")])
        self._goal_mocap = int(self.model.body("goal").mocapid[0])

    @property
    def goal(self) -> np.ndarray:
        """The goal's (x, y) this episode, shape (2,)."""
        return self._goal.copy()

    def _get_obs(self) -> np.ndarray:
        pos = self.data.qpos[self._xy]
        vel = self.data.qvel[self._xy]
        return np.concatenate([pos, vel, self._goal - pos]).astype(np.float64)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        self.do_simulation(action, self.frame_skip)
        obs = self._get_obs()
        distance = float(np.linalg.norm(obs[4:6]))
        ctrl_cost = self._ctrl_cost_weight * float(np.sum(np.square(action)))
        success = distance < self._goal_radius
        reward = -distance - ctrl_cost + (self._success_bonus if success else 0.0)
        info = {"distance": distance, "is_success": success, "reward_dist": -distance, "reward_ctrl": -ctrl_cost}
        if self.render_mode == "human":
            self.render()
        return obs, reward, False, False, info

    def reset_model(self) -> np.ndarray:
        noise = self._reset_noise_scale
        qpos = self.init_qpos.copy()
        qvel = self.init_qvel.copy()
        qpos[self._xy] += self.np_random.uniform(-noise, noise, size=2)
        qvel[self._xy] += self.np_random.uniform(-noise, noise, size=2)
        angle = self.np_random.uniform(0.0, 2.0 * np.pi)
        radius = self.np_random.uniform(*self._goal_distance)
        self._goal = radius * np.array([np.cos(angle), np.sin(angle)])
        self.data.mocap_pos[self._goal_mocap, :2] = self._goal
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"distance": float(np.linalg.norm(self._goal - self.data.qpos[self._xy])), "goal": self.goal}
