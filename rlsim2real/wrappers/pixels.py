"""Pixel observations, headless, with image-space randomization terms.

:class:`PixelObservation` renders the MuJoCo scene after every reset and step with its own
offscreen renderer (:class:`PixelRenderer`: its own headless GL context, EGL or else OSMesa,
and the fast settings by default: no multisampling, shadows, reflections or skybox), applies
the image-space terms of the env's joint sample to each frame (``image.brightness``,
``image.contrast``, ``image.saturation``, ``image.hue``, ``image.noise``, ``image.blur``,
``image.shift``, ``image.cutout``), and stacks the last ``frame_stack`` frames along the
channel axis as ``uint8`` (height, width, 3 * frame_stack), the layout SB3's CNN policies
take (SB3 transposes channel-last images itself). With ``state=True`` the observation is a
dict of ``image`` and the env's own ``state`` vector.

Appearance terms that act on the model (``geom_rgba``, ``mat_rgba``, ``light_diffuse``,
``cam_pos``, ``cam_fovy``, ``vis.headlight.diffuse``, ...) are ordinary dynamics terms: the
renderer reads the model at every frame, so they need nothing from this layer.

Image terms and their nominal values (a Param's ``mode`` applies as everywhere; most use
``abs`` or ``add`` since several are nominally 0):

============================  =======  ==========================================================
target                        nominal  effect
============================  =======  ==========================================================
``image.brightness``          0        add ``value`` (a fraction of full scale) to every channel
``image.contrast``            1        scale each frame's deviation from its mean intensity
``image.saturation``          1        blend with the grey image (0: grey, >1: more colourful)
``image.hue``                 0        rotate hue by ``value`` turns (YIQ rotation)
``image.noise``               0        Gaussian pixel noise, std as a fraction of full scale
``image.blur``                0        Gaussian blur, sigma in pixels
``image.shift``               0        shift the whole episode's frames by up to ``value`` px
``image.cutout``              0        grey square of side ``value`` x image size, per frame
============================  =======  ==========================================================

Texture terms name a texture of the model (``texture.family[texplane]``) and rewrite its
pixels at reset, then upload them to the renderer (an edit of ``tex_data`` alone shows
nothing): ``texture.family`` picks the family, ``floor(value)`` of 0 the model's own
texture, 1 a checker, 2 a gradient, 3 smooth noise; ``texture.hue`` (turns) sets the
procedural families' two colours (complementary hues); ``texture.scale`` their cell count
(8 cells across at 1). Categorical choices are distributions like any other: ``range = [0,
4]`` draws the family uniformly.

The random parts (noise, the episode's shift, where a cut-out goes, the noise texture) come
from this layer's own seeded stream, so seeded episodes repeat frame for frame.
"""

from __future__ import annotations

import colorsys
import ctypes.util
import math
import os
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from rlsim2real.distributions import Distribution
from rlsim2real.params import Param, ParamSpace, SpecError, apply_mode
from rlsim2real.wrappers.base import RandomizationWrapper

IMAGE_NOMINAL = {
    "image.brightness": 0.0, "image.contrast": 1.0, "image.saturation": 1.0, "image.hue": 0.0,
    "image.noise": 0.0, "image.blur": 0.0, "image.shift": 0.0, "image.cutout": 0.0,
    "texture.family": 0.0, "texture.hue": 0.0, "texture.scale": 1.0,
}
TEXTURE_FAMILIES = ("own", "checker", "gradient", "noise")
_IMAGE_ONLY_NOMINAL = {k: v for k, v in IMAGE_NOMINAL.items() if k.startswith("image.")}
# Valid values of each term (the rest of the real line is refused).
_IMAGE_BOUNDS = {
    "image.brightness": (-1.0, 1.0), "image.contrast": (0.0, math.inf), "image.saturation": (0.0, math.inf),
    "image.hue": (-math.inf, math.inf), "image.noise": (0.0, math.inf), "image.blur": (0.0, 10.0),
    "image.shift": (0.0, 64.0), "image.cutout": (0.0, 1.0),
    "texture.family": (0.0, float(len(TEXTURE_FAMILIES))), "texture.hue": (-math.inf, math.inf),
    "texture.scale": (0.1, 10.0),
}
BACKENDS = ("egl", "osmesa")


def check_image_value(param: Param, value: float, where: str) -> None:
    """Raise :class:`SpecError` if ``value`` of image term ``param`` is not a valid setting."""
    field = param.parsed.field
    if field not in IMAGE_NOMINAL:
        raise SpecError(f"{where}: unknown image term {field!r}; expected one of {', '.join(IMAGE_NOMINAL)}")
    texture = field.startswith("texture.")
    if texture and param.parsed.element is None:
        raise SpecError(f"{where}: texture terms name a texture of the model: {field}[name]")
    if not texture and param.parsed.element is not None:
        raise SpecError(f"{where}: image terms act on the whole frame; {param.target!r} takes no [element]")
    new = float(apply_mode(param.mode, np.array([IMAGE_NOMINAL[field]]), value)[0])
    lo, hi = _IMAGE_BOUNDS[field]
    if not (np.isfinite(value) and lo <= new <= hi):
        raise SpecError(f"{where}: {param.mode} {value:g} makes {field} {new:g}; expected a value in [{lo:g}, {hi:g}]")


def gl_backend() -> str:
    """The headless OpenGL backend pixel envs use: ``MUJOCO_GL`` if it names one, else EGL if
    its library is installed, else OSMesa.

    Raises:
        SpecError: if none is available, saying which package to install.
    """
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if chosen:
        if chosen not in BACKENDS:
            raise SpecError(f"pixel observations render headless: MUJOCO_GL={chosen!r}; expected one of "
                            f"{', '.join(BACKENDS)} (unset it to choose automatically)")
        return chosen
    if ctypes.util.find_library("EGL"):
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    raise SpecError("pixel observations need a headless OpenGL library: install EGL (Debian/Ubuntu: "
                    "apt-get install libegl1) or OSMesa (apt-get install libosmesa6)")


def _gl_context(width: int, height: int) -> Any:
    backend = gl_backend()
    platform = os.environ.get("PYOPENGL_PLATFORM")
    if "OpenGL" not in sys.modules:
        os.environ["PYOPENGL_PLATFORM"] = backend
    elif platform not in (None, backend):
        raise SpecError(f"pixel observations: PyOpenGL was already loaded for {platform!r}, not {backend!r}; "
                        f"set MUJOCO_GL={platform} (or PYOPENGL_PLATFORM={backend}) before starting")
    try:
        if backend == "egl":
            from mujoco.egl import GLContext
        else:
            from mujoco.osmesa import GLContext
        context = GLContext(width, height)
    except Exception as exc:  # a missing driver surfaces here, deep inside PyOpenGL
        package = "libegl1" if backend == "egl" else "libosmesa6"
        raise SpecError(f"pixel observations: cannot create a headless {backend} OpenGL context "
                        f"({type(exc).__name__}: {exc}); install {package} or set MUJOCO_GL") from None
    return context


class PixelRenderer:
    """Offscreen frames of one MuJoCo model, with a GL context of its own.

    Args:
        model: The model (read at every frame: appearance terms show at once).
        width, height: Frame size in pixels.
        camera: A camera of the model (name or id), or ``None`` for a free camera placed by
            ``distance``, ``azimuth``, ``elevation`` and ``lookat`` (and following body
            ``track`` if given).
        fast: MuJoCo's speed settings for software rendering: no multisampling, shadows,
            reflections or skybox (measured on Hopper at 64x64: 6-7 frames/s with the
            defaults, 120-160 with these).
    """

    def __init__(
        self, model: mujoco.MjModel, width: int = 64, height: int = 64, camera: str | int | None = None,
        distance: float | None = None, azimuth: float | None = None, elevation: float | None = None,
        lookat: Sequence[float] | None = None, track: str | None = None, fast: bool = True,
    ) -> None:
        self.model, self.width, self.height = model, int(width), int(height)
        if fast:
            model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        self.camera = mujoco.MjvCamera()
        if camera is not None:
            cam_id = camera if isinstance(camera, int) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if not 0 <= cam_id < model.ncam:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise SpecError(f"pixels.camera: unknown camera {camera!r}; the model has {', '.join(names) or 'none'}")
            self.camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            self.camera.fixedcamid = cam_id
        else:
            mujoco.mjv_defaultFreeCamera(model, self.camera)
            if track is not None:
                body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, track)
                if body < 0:
                    raise SpecError(f"pixels.track: unknown body {track!r}")
                self.camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
                self.camera.trackbodyid = body
            for name, value in (("distance", distance), ("azimuth", azimuth), ("elevation", elevation)):
                if value is not None:
                    setattr(self.camera, name, float(value))
            if lookat is not None:
                self.camera.lookat[:] = lookat
        self._context = _gl_context(self.width, self.height)
        self._context.make_current()
        self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._mjr)
        self.scene = mujoco.MjvScene(model, maxgeom=max(1000, 2 * model.ngeom))
        if fast:
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                self.scene.flags[flag] = 0
        self.option = mujoco.MjvOption()
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._frame = np.empty((self.height, self.width, 3), dtype=np.uint8)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """The current frame, shape (height, width, 3), uint8, top row first (a new array)."""
        self._context.make_current()
        mujoco.mjv_updateScene(self.model, data, self.option, None, self.camera, mujoco.mjtCatBit.mjCAT_ALL, self.scene)
        mujoco.mjr_render(self._rect, self.scene, self._mjr)
        mujoco.mjr_readPixels(self._frame, None, self._rect, self._mjr)
        return self._frame[::-1].copy()

    def upload_texture(self, texid: int) -> None:
        """Send texture ``texid``'s current ``tex_data`` to the GL context (edits of
        ``tex_data`` show only after this)."""
        self._context.make_current()
        mujoco.mjr_uploadTexture(self.model, self._mjr, int(texid))

    def close(self) -> None:
        if getattr(self, "_context", None) is not None:
            self._mjr.free()
            self._context.free()
            self._context = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class PixelObservation(RandomizationWrapper):
    """Observations are rendered frames, with the image terms of the joint sample applied.

    Args:
        env: A MuJoCo env (possibly wrapped by the other randomization layers).
        space: Parameters with ``image.*`` targets.
        width, height, camera, distance, azimuth, elevation, lookat, track, fast: See
            :class:`PixelRenderer`.
        frame_stack: Frames per observation, stacked along the channel axis.
        state: Observe ``{"image": frames, "state": the env's observation}`` instead.
        distribution, seed, resample_every: As for every randomization layer.
    """

    kind = "image"
    noise_salt = 0x1A6E

    def __init__(
        self, env: gym.Env, space: ParamSpace | Iterable[Param] = (), width: int = 64, height: int = 64,
        camera: str | int | None = None, frame_stack: int = 1, state: bool = False,
        distance: float | None = None, azimuth: float | None = None, elevation: float | None = None,
        lookat: Sequence[float] | None = None, track: str | None = None, fast: bool = True,
        distribution: Distribution | None = None, seed: int | None = None, resample_every: int | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, space=space, width=width, height=height, camera=camera, frame_stack=frame_stack, state=state,
            distance=distance, azimuth=azimuth, elevation=elevation, lookat=lookat, track=track, fast=fast,
            distribution=distribution, seed=seed, resample_every=resample_every,
        )
        super().__init__(env, space, distribution, seed, resample_every)
        model = getattr(env.unwrapped, "model", None)
        if not isinstance(model, mujoco.MjModel):
            raise SpecError(f"PixelObservation needs a MuJoCo env; {env.unwrapped!r} has no MjModel")
        if int(frame_stack) < 1:
            raise SpecError(f"pixels.frame_stack: expected an integer >= 1, got {frame_stack}")
        for p in self.space:
            for value in (*p.range, *(p.limits or ())):
                check_image_value(p, value, f"param {p.name!r}")
        self.renderer = PixelRenderer(model, width, height, camera, distance, azimuth, elevation, lookat, track, fast)
        self.frame_stack, self.with_state = int(frame_stack), bool(state)
        image = gym.spaces.Box(0, 255, (self.renderer.height, self.renderer.width, 3 * self.frame_stack), np.uint8)
        self.observation_space = gym.spaces.Dict({"image": image, "state": env.observation_space}) if state else image
        self._frames: deque[np.ndarray] = deque(maxlen=self.frame_stack)
        self._fields = [p.parsed.field for p in self.space]
        self._values = dict(_IMAGE_ONLY_NOMINAL)
        # Texture terms, per texture: its id, where its pixels live, their nominal copy.
        self._textures: dict[int, dict[str, Any]] = {}
        self._texture_terms: list[tuple[int, int, str]] = []  # (position, texid, field)
        for k, p in enumerate(self.space):
            if not self._fields[k].startswith("texture."):
                continue
            texid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_TEXTURE, p.parsed.element)
            if texid < 0:
                names = [model.texture(i).name for i in range(model.ntex)]
                raise SpecError(f"param {p.name!r}: unknown texture {p.parsed.element!r}; the model has "
                                f"{', '.join(n for n in names if n) or 'no named textures'}")
            if texid not in self._textures:
                w, h, c = int(model.tex_width[texid]), int(model.tex_height[texid]), int(model.tex_nchannel[texid])
                start = int(model.tex_adr[texid])
                view = model.tex_data[start : start + w * h * c].reshape(h, w, c)
                self._textures[texid] = {"view": view, "nominal": view.copy(), "drawn": None}
            self._texture_terms.append((k, texid, self._fields[k]))
        self._noise = np.random.default_rng()
        self._offset = (0, 0)
        self._join()

    # -- the layer's slice --------------------------------------------------------------
    def nominal_value(self, name: str) -> float:
        p = self.space[name]
        nominal = IMAGE_NOMINAL.get(p.parsed.field, 0.0)
        return float(p.identity) if p.identity is not None else nominal

    def _check_value(self, name: str, value: float) -> None:
        check_image_value(self.space[name], value, f"param {name!r}")

    def _apply(self, values: np.ndarray) -> None:
        current = dict(_IMAGE_ONLY_NOMINAL)
        settings = {texid: {"texture.family": 0.0, "texture.hue": 0.0, "texture.scale": 1.0} for texid in self._textures}
        textures = {k: texid for k, texid, _ in self._texture_terms}
        for k, (p, field, value) in enumerate(zip(self.space, self._fields, values.tolist())):
            applied = float(apply_mode(p.mode, np.array([IMAGE_NOMINAL[field]]), value)[0])
            if k in textures:
                settings[textures[k]][field] = applied
            else:
                current[field] = applied
        self._values = current
        for texid, setting in settings.items():
            self._paint(texid, setting)

    def _paint(self, texid: int, setting: dict[str, float]) -> None:
        """Rewrite texture ``texid`` for ``setting`` and upload it (only when it changed)."""
        tex = self._textures[texid]
        family = TEXTURE_FAMILIES[min(len(TEXTURE_FAMILIES) - 1, max(0, int(math.floor(setting["texture.family"]))))]
        key = (family, setting["texture.hue"], setting["texture.scale"])
        if key == tex["drawn"] and family != "noise":
            return
        tex["view"][...] = tex["nominal"] if family == "own" else _procedural(
            family, tex["view"].shape, setting["texture.hue"], setting["texture.scale"], self._noise)
        tex["drawn"] = key
        self.renderer.upload_texture(texid)

    def _seed_streams(self, seed: int | None) -> None:
        self._noise = np.random.default_rng(None if seed is None else [int(seed) & 0xFFFFFFFF, self.noise_salt])

    def _stream_state(self) -> Any:
        return self._noise.bit_generator.state

    def _load_stream_state(self, state: Any) -> None:
        if state is not None:
            self._noise.bit_generator.state = state

    def _start_episode(self) -> None:
        shift = int(round(self._values["image.shift"]))
        self._offset = tuple(int(x) for x in self._noise.integers(-shift, shift + 1, size=2)) if shift else (0, 0)
        self._frames.clear()

    # -- frames -------------------------------------------------------------------------
    def frame(self) -> np.ndarray:
        """The current rendered frame with this episode's image terms applied."""
        return self._corrupt(self.renderer.render(self.unwrapped.data))

    def _corrupt(self, frame: np.ndarray) -> np.ndarray:
        v = self._values
        if v == _IMAGE_ONLY_NOMINAL:
            return frame
        x = frame.astype(np.float32) / 255.0
        if v["image.blur"] > 0:
            x = _gaussian_blur(x, v["image.blur"])
        if v["image.saturation"] != 1.0 or v["image.hue"] != 0.0:
            x = _hue_saturation(x, v["image.hue"], v["image.saturation"])
        if v["image.contrast"] != 1.0:
            mean = x.mean()
            x = (x - mean) * v["image.contrast"] + mean
        if v["image.brightness"] != 0.0:
            x = x + v["image.brightness"]
        if v["image.noise"] > 0:
            x = x + self._noise.normal(0.0, v["image.noise"], x.shape).astype(np.float32)
        if self._offset != (0, 0):
            x = _shift(x, *self._offset)
        if v["image.cutout"] > 0:
            h, w = x.shape[:2]
            side_h, side_w = max(1, int(round(v["image.cutout"] * h))), max(1, int(round(v["image.cutout"] * w)))
            top, left = int(self._noise.integers(0, h - side_h + 1)), int(self._noise.integers(0, w - side_w + 1))
            x[top : top + side_h, left : left + side_w] = 0.5
        return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _observe(self, obs: Any) -> Any:
        frame = self.frame()
        if not self._frames:
            for _ in range(self.frame_stack - 1):
                self._frames.append(frame)
        self._frames.append(frame)
        image = frame if self.frame_stack == 1 else np.concatenate(self._frames, axis=-1)
        return {"image": image, "state": obs} if self.with_state else image

    def _steps_work(self) -> bool:
        return True  # every step renders

    def close(self) -> None:
        self.renderer.close()
        super().close()


def _procedural(family: str, shape: tuple[int, ...], hue: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Pixels of a checker, gradient or smooth-noise texture in two complementary colours."""
    h, w, c = shape
    cells = max(2, int(round(8 * scale)))
    y, x = np.mgrid[0:h, 0:w]
    if family == "checker":
        mix = ((x * cells // w + y * cells // max(w, 1)) % 2).astype(np.float32)
    elif family == "gradient":
        mix = np.abs(((y / max(h, 1)) * scale) % 2.0 - 1.0).astype(np.float32)
    else:  # smooth noise: a coarse random grid, bilinearly upsampled
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        gy, gx = y / max(h - 1, 1) * cells, x / max(w - 1, 1) * cells
        y0, x0 = np.minimum(gy.astype(int), cells - 1), np.minimum(gx.astype(int), cells - 1)
        ty, tx = gy - y0, gx - x0
        mix = ((grid[y0, x0] * (1 - tx) + grid[y0, x0 + 1] * tx) * (1 - ty)
               + (grid[y0 + 1, x0] * (1 - tx) + grid[y0 + 1, x0 + 1] * tx) * ty)
    one = np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.6, 0.85), dtype=np.float32)
    two = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.35), dtype=np.float32)
    rgb = one * mix[..., None] + two * (1.0 - mix[..., None])
    out = np.full((h, w, c), 255, dtype=np.uint8)
    out[..., : min(3, c)] = (rgb[..., : min(3, c)] * 255.0 + 0.5).astype(np.uint8)
    return out


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    x = sum(kernel[i] * padded[i : i + x.shape[0]] for i in range(len(kernel)))
    padded = np.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(kernel[i] * padded[:, i : i + x.shape[1]] for i in range(len(kernel)))


# RGB <-> YIQ: hue is a rotation of the (I, Q) plane, saturation its length.
_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_FROM_YIQ = np.linalg.inv(_TO_YIQ).astype(np.float32)


def _hue_saturation(x: np.ndarray, turns: float, saturation: float) -> np.ndarray:
    angle = 2.0 * math.pi * turns
    c, s = math.cos(angle) * saturation, math.sin(angle) * saturation
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=np.float32)
    return x @ (_FROM_YIQ @ rotate @ _TO_YIQ).T


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``x`` moved by (dy, dx) pixels, edges repeated (a camera a little off its mount)."""
    h, w = x.shape[:2]
    pad = max(abs(dy), abs(dx))
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]
