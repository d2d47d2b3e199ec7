"""Pixel observations: every appearance and image term really changes the picture, nominal
comes back, seeds repeat, the checker passes, and bad specs are one line."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rlsim2real as rs
from rlsim2real.params import Param, SpecError
from rlsim2real.wrappers import DynamicsRandomization, PixelObservation

ROOT = Path(__file__).resolve().parents[1]

# (target, value that differs from nominal, mode) on Hopper seen through its tracking camera.
MODEL_TERMS = {
    "geom_rgba": ("geom_rgba[torso_geom,0]", 0.1, "abs"),
    "mat_emission": ("mat_emission[MatPlane]", 0.8, "abs"),
    "light_diffuse": ("light_diffuse[#0,0]", 0.1, "abs"),
    "light_dir": ("light_dir[#0,0]", 0.6, "abs"),
    "cam_pos": ("cam_pos[track,1]", -1.0, "abs"),  # a tracking camera: needs mj_setConst
    "cam_fovy": ("cam_fovy[track]", 70.0, "abs"),
    "headlight": ("vis.headlight.diffuse[*]", 0.9, "abs"),
}
IMAGE_TERMS = {
    "brightness": ("image.brightness", 0.2, "add"),
    "contrast": ("image.contrast", 1.8, "scale"),
    "saturation": ("image.saturation", 0.0, "abs"),
    "hue": ("image.hue", 0.3, "add"),
    "noise": ("image.noise", 0.1, "add"),
    "blur": ("image.blur", 1.5, "add"),
    "shift": ("image.shift", 6.0, "add"),
    "cutout": ("image.cutout", 0.4, "add"),
}


def frames(env: gym.Env, values: dict) -> np.ndarray:
    env.pin(values)
    obs, _ = env.reset(seed=0)
    return obs


def nominal_changed_nominal(env: gym.Env, term: str, value: float) -> tuple[np.ndarray, ...]:
    """Frames at nominal, with ``term`` pinned at ``value``, and at nominal again; closes ``env``."""
    try:
        return frames(env, {}), frames(env, {term: value}), frames(env, {})
    finally:
        env.close()


@pytest.mark.parametrize("term", sorted(MODEL_TERMS))
def test_every_appearance_term_changes_the_picture_and_nominal_comes_back(term):
    target, value, mode = MODEL_TERMS[term]
    p = Param(term, target, (value, value), mode=mode)
    env = PixelObservation(DynamicsRandomization(gym.make("Hopper-v5"), [p], seed=0), camera="track", seed=0)
    nominal, changed, again = nominal_changed_nominal(env, term, value)
    assert np.abs(changed.astype(int) - nominal).mean() > 0.1, term
    assert np.array_equal(again, nominal), term  # rebuilt from the cached nominal model


@pytest.mark.parametrize("term", sorted(IMAGE_TERMS))
def test_every_image_term_changes_the_picture_and_nominal_comes_back(term):
    target, value, mode = IMAGE_TERMS[term]
    p = Param(term, target, (value, value), mode=mode)
    env = PixelObservation(gym.make("InvertedPendulum-v5"), [p], distance=2.2, azimuth=90.0, elevation=0.0,
                           lookat=(0.0, 0.0, 0.25), seed=0)
    nominal, changed, again = nominal_changed_nominal(env, term, value)
    assert changed.dtype == np.uint8 and changed.shape == nominal.shape
    assert np.abs(changed.astype(int) - nominal).mean() > 0.05, term
    assert np.array_equal(again, nominal), term


@pytest.mark.parametrize("family", [1, 2, 3])
def test_each_texture_family_changes_the_floor_and_the_models_own_comes_back(family):
    terms = [Param("floor", "texture.family[texplane]", (0.0, 4.0), mode="abs"),
             Param("hue", "texture.hue[texplane]", (0.0, 1.0), mode="add")]
    env = PixelObservation(gym.make("Hopper-v5"), terms, camera="track", seed=0)
    try:
        nominal = frames(env, {})
        painted = frames(env, {"floor": family + 0.5, "hue": 0.3})
        other_hue = frames(env, {"floor": family + 0.5, "hue": 0.8})
        again = frames(env, {})
    finally:
        env.close()
    assert np.abs(painted.astype(int) - nominal).mean() > 1.0
    assert np.abs(painted.astype(int) - other_hue).mean() > 1.0
    assert np.array_equal(again, nominal)


def test_a_texture_edit_shows_only_once_uploaded():
    # The trap the texture terms avoid: tex_data edited in the model alone changes nothing
    # on screen, because the renderer draws the copy it uploaded.
    env = PixelObservation(gym.make("Hopper-v5"), camera="track", seed=0)
    try:
        before, _ = env.reset(seed=0)
        model = env.unwrapped.model
        start, size = int(model.tex_adr[2]), int(model.tex_width[2] * model.tex_height[2] * model.tex_nchannel[2])
        model.tex_data[start : start + size] = 0
        stale = env.frame()
        env.renderer.upload_texture(2)
        fresh = env.frame()
    finally:
        env.close()
    assert np.array_equal(stale, before[..., -3:])
    assert np.abs(fresh.astype(int) - stale).mean() > 1.0


def test_a_material_colour_that_no_geom_shows_and_a_directional_light_position_are_spec_errors():
    env = gym.make("Hopper-v5")
    with pytest.raises(SpecError, match="shows on no geom.*geom_rgba"):
        DynamicsRandomization(env, [Param("floor_colour", "mat_rgba[MatPlane,0]", (0.1, 0.2), mode="abs")])
    with pytest.raises(SpecError, match="directional light.*light_dir"):
        DynamicsRandomization(env, [Param("light_height", "light_pos[#0,2]", (0.5, 1.5), mode="abs")])
    env.close()


def test_the_pixel_spec_gives_uint8_frames_that_repeat_with_the_seed_and_pass_the_checker():
    spec = rs.load_env_spec("inverted_pendulum_pixels")
    env = rs.make_env(spec, seed=3)
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 9), np.uint8)
    check_env(env, skip_render_check=True)
    env.close()

    def episode(seed: int, values=None) -> list[np.ndarray]:
        e = rs.make_env(spec, seed=seed) if values is None else rs.make_real_env(spec, values, seed=seed)
        obs, info = e.reset(seed=seed)
        out = [obs]
        for _ in range(5):
            obs, *_ = e.step(np.zeros(1, dtype=np.float32))
            out.append(obs)
        e.close()
        return out

    a, b, c = episode(0), episode(0), episode(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # colours, light and image terms repeat
    assert not np.array_equal(a[0], c[0])  # another seed, another look
    # Noise and cut-outs come from the layer's own seeded stream: they repeat too.
    noisy = {"pixel_noise": 0.1, "camera_shift": 3}
    assert all(np.array_equal(x, y) for x, y in zip(episode(5, noisy), episode(5, noisy)))
    # The frames are stacked oldest first: each step drops the oldest three channels and
    # appends the new frame (a reset fills the stack with its first frame).
    for before, after in zip(a, a[1:]):
        assert np.array_equal(after[..., :6], before[..., 3:])


@pytest.mark.parametrize("name", ["inverted_pendulum_pixels", "hopper_pixels"])
def test_every_visual_real_set_looks_different_from_nominal(name):
    spec = rs.load_env_spec(name)
    nominal = rs.make_real_env(spec, "nominal", seed=0)
    base, info = nominal.reset(seed=0)
    nominal.close()
    assert base.dtype == np.uint8 and base.shape == (64, 64, 9)
    for real in spec.real_sets:
        env = rs.make_real_env(spec, real, seed=0)
        obs, info = env.reset(seed=0)
        env.close()
        assert np.abs(obs.astype(int) - base).mean() > 0.05, real
        # info reports the set's values, summarized as one entry per term.
        assert set(spec.real_sets[real]) <= set(info["dr_params"])


def test_state_alongside_the_image():
    env = PixelObservation(gym.make("InvertedPendulum-v5"), state=True, frame_stack=2, width=32, height=24, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (24, 32, 6) and obs["state"].shape == (4,)
    check_env(env, skip_render_check=True)
    env.close()


BAD_PIXELS = {
    "image term without pixels": ("[pixels]", None, "image terms need pixel observations"),
    "unknown pixels key": ("frame_stack = 3", "frame_stack = 3\nzoom = 2", "pixels: unknown key 'zoom'"),
    "frame stack": ("frame_stack = 3", "frame_stack = 0", "pixels.frame_stack"),
    "camera and free camera": ("frame_stack = 3", 'frame_stack = 3\ncamera = "track"', "pixels.camera"),
    "brightness out of bounds": ("range = [-0.08, 0.08]", "range = [-0.08, 1.5]", "params.brightness"),
    "colour outside [0, 1]": ("range = [0.0, 0.6]\nlimits = [0.0, 1.0]", "range = [0.0, 0.6]\nlimits = [0.0, 1.6]",
                              "params.pole_red: abs 1.6 makes geom_rgba[cpole,0] 1.6; expected a colour in [0, 1]"),
    "image term with element": ('target = "image.contrast"', 'target = "image.contrast[0]"', "takes no [element]"),
    "texture family past the last": ("[real_sets.in_range]", '[params.floor_tex]\ntarget = "texture.family[nothing]"\n'
                                     'mode = "abs"\nrange = [0.0, 5.0]\n\n[real_sets.in_range]', "params.floor_tex"),
    "unknown texture": ("[real_sets.in_range]", '[params.floor_tex]\ntarget = "texture.family[nothing]"\n'
                        'mode = "abs"\nrange = [0.0, 3.0]\n\n[real_sets.in_range]',
                        "params.floor_tex: unknown texture 'nothing'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PIXELS))
def test_bad_pixel_specs_are_one_line_naming_the_file_and_key(tmp_path, case):
    old, new, expected = BAD_PIXELS[case]
    text = (ROOT / "envs" / "inverted_pendulum_pixels.toml").read_text()
    assert old in text
    path = tmp_path / "bad_pixels.toml"
    if new is None:  # drop the whole table
        start = text.index(old)
        text = text[:start] + text[text.index("\n\n", start) + 2 :]
    else:
        text = text.replace(old, new, 1)
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        rs.load_env_spec(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and expected in message, message


def test_an_unknown_camera_is_named():
    with pytest.raises(SpecError, match="unknown camera 'front'.*track"):
        PixelObservation(gym.make("Hopper-v5"), camera="front")


def test_a_tiny_pixel_training_run_is_evaluated_on_every_visual_set(tmp_path):
    exp = tmp_path / "pixels.toml"
    exp.write_text((ROOT / "experiments" / "inverted_pendulum_pixels.toml").read_text()
                   .replace("timesteps = 200_000", "timesteps = 256").replace("n_envs = 8", "n_envs = 2")
                   .replace('vec_env = "subproc"', 'vec_env = "dummy"').replace("checkpoint_every = 50_000", "checkpoint_every = 0")
                   + "\n[hyperparameters]\nn_steps = 64\nbatch_size = 64\nn_epochs = 1\n")
    run = rs.train(exp, out=tmp_path / "run", evaluate=False)
    assert (run.path / "vecnormalize.pkl").is_file()  # reward statistics, under SB3's image transpose
    report = rs.evaluate_transfer(run, episodes=1)
    assert set(report.sets) == {"nominal", *rs.load_env_spec("inverted_pendulum_pixels").real_sets}
    assert all(r.episodes == 1 and r.mean_return > 0 for r in report.sets.values())


@pytest.mark.parametrize("source", ["set", "file"])
def test_dann_on_pixels_aligns_the_cnn_encoder_with_frames_of_a_visual_set(tmp_path, source):
    import csv

    from rlsim2real.episodes import EpisodeRunner, seeded_jobs, to_trajectories

    text = (ROOT / "experiments" / "inverted_pendulum_pixels_dann.toml").read_text()
    if source == "file":  # frames a camera recorded on the target look, saved as a trajectory file
        spec = rs.load_env_spec("inverted_pendulum_pixels")
        frames = EpisodeRunner(spec).run(None, seeded_jobs("unseen_colours", 3, 0), record=("obs", "actions", "rewards"))
        to_trajectories(frames).save(tmp_path / "camera.npz")
        text = text.replace('set = "unseen_colours"', f'file = "{tmp_path / "camera.npz"}"')
    exp = tmp_path / "pixels_dann.toml"
    exp.write_text(text.replace("timesteps = 200_000", "timesteps = 256").replace("n_envs = 8", "n_envs = 2")
                   .replace('vec_env = "subproc"', 'vec_env = "dummy"').replace("checkpoint_every = 50_000", "checkpoint_every = 0")
                   .replace("episodes = 4", "episodes = 2") + "\n[hyperparameters]\nn_steps = 64\nbatch_size = 64\nn_epochs = 1\n")
    run = rs.train(exp, out=tmp_path / "run", evaluate=False)
    rows = list(csv.DictReader(open(run.path / "logs" / "progress.csv")))
    logged = [r for r in rows if r.get("dann/domain_loss")]
    assert logged and float(logged[-1]["dann/target_observations"]) > 0
    assert 0.0 < float(logged[-1]["dann/domain_loss"]) < 5.0


def test_per_element_terms_draw_every_element_on_its_own():
    spec = rs.load_env_spec("hopper_pixels")
    names = [n for n in spec.params.names if n.startswith("leg_green.")]
    assert names == ["leg_green.thigh_geom", "leg_green.leg_geom", "leg_green.foot_geom"]
    env = rs.make_env(spec, seed=0)
    _, info = env.reset(seed=0)
    greens = env.unwrapped.model.geom_rgba[2:5, 1]
    env.close()
    assert np.allclose(greens, [info["dr_params"][n] for n in names], atol=1e-6)
    assert len(set(np.round(greens, 6))) == 3  # three draws, not one shared


def test_per_element_needs_its_elements_listed(tmp_path):
    text = (ROOT / "envs" / "hopper_pixels.toml").read_text().replace(
        'target = "geom_rgba[thigh_geom|leg_geom|foot_geom,1]"', 'target = "geom_rgba[*,1]"')
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"params.leg_green.per_element: expected a target that lists its elements"):
        rs.load_env_spec(path)


def test_the_gl_backend_is_chosen_headless_and_its_absence_names_the_package(monkeypatch):
    from rlsim2real.wrappers import pixels

    found = {"EGL": None, "OSMesa": None}
    monkeypatch.setattr(pixels.ctypes.util, "find_library", lambda name: found.get(name))
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    with pytest.raises(SpecError, match="libegl1.*libosmesa6"):
        pixels.gl_backend()
    found["OSMesa"] = "libOSMesa.so.8"
    assert pixels.gl_backend() == "osmesa"  # the fallback
    found["EGL"] = "libEGL.so.1"
    assert pixels.gl_backend() == "egl"  # the default
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert pixels.gl_backend() == "osmesa"  # the user's choice wins
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    with pytest.raises(SpecError, match="MUJOCO_GL='glfw'; expected one of egl, osmesa"):
        pixels.gl_backend()


def test_visual_terms_leave_the_dynamics_untouched():
    spec = rs.load_env_spec("hopper_pixels")
    looks = [{}, spec.real_sets["unseen_colours"], spec.real_sets["camera_offset"], {"floor_texture": 2.5, "light_x": 0.3}]
    trajectories = []
    for look in looks:
        env = rs.make_real_env(spec, look, seed=0)
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        qpos = []
        for _ in range(20):
            env.step(rng.uniform(-1, 1, 3).astype(np.float32))
            qpos.append(env.unwrapped.data.qpos.copy())
        env.close()
        trajectories.append(np.array(qpos))
    for other in trajectories[1:]:
        assert np.array_equal(other, trajectories[0])


def test_render_grid_writes_a_labelled_png_of_the_expected_size(tmp_path):
    import subprocess
    import sys

    import matplotlib.image

    out = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "render-grid", "inverted_pendulum_pixels", "--n", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    image = matplotlib.image.imread(out)
    frames = 3 + 1 + len(rs.load_env_spec("inverted_pendulum_pixels").real_sets)  # randomized, nominal, sets
    cols = min(8, frames)
    rows = -(-frames // cols)
    assert image.shape[:2] == (int(round(2.1 * rows * 100)), int(round(1.6 * cols * 100)))
    proc = subprocess.run([sys.executable, "-m", "rlsim2real.cli", "render-grid", "hopper", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "needs a pixel env spec" in proc.stderr
