"""The batched env's worlds on MuJoCo Warp (``mujoco-warp``): physics on a Warp device.

:class:`WarpBackend` implements :class:`~rlsim2real.batched.backend.SimBackend` on
``mujoco_warp``: one device ``Model`` whose randomized fields carry a leading world axis,
one ``Data`` of ``n_worlds`` worlds, ``mjw.step`` for the physics. Everything above the seam
(tasks, randomization, the VecEnv) stays in numpy on the host; per step the controls go to
the device in one copy and joint positions, velocities and a per-world status come back in
one copy. The physics is float32, so it matches ``mujoco.batch`` to tolerance, not bit for
bit (see docs/batched.md).

Install with ``pip install "rlsim2real[warp]"``. Warp is imported when a backend is built,
never at import time, so this module loads where ``mujoco_warp`` is absent.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

import mujoco
import numpy as np

from rlsim2real.batched.backend import SimBackend
from rlsim2real.mjfields import field_array

INSTALL_HINT = 'backend "warp" needs the mujoco_warp package, which is not installed: pip install "rlsim2real[warp]"'

# MuJoCo's mjMAXVAL: mj_checkPos/Vel/Acc reset a simulation whose state exceeds it.
MAXVAL = 1e10

# Fields mj_setConst derives from the fields terms write (mass, inertia, armature, gear,
# camera and light poses): per world once those are, so that set_const writes every world's.
_DERIVED = (
    "body_subtreemass", "dof_invweight0", "body_invweight0", "tendon_invweight0", "actuator_acc0",
    "cam_pos0", "cam_poscom0", "cam_mat0", "light_pos0", "light_poscom0", "light_dir0",
)
# Options whose nonzero values put_model reads once, to decide whether fluid forces run.
_FLUID_OPTIONS = ("opt.wind", "opt.density", "opt.viscosity")


def warp_available() -> bool:
    """Whether ``mujoco_warp`` (and Warp) can be imported, found without importing them."""
    import importlib.util
    import sys

    for name in ("warp", "mujoco_warp"):
        if name in sys.modules:
            if sys.modules[name] is None:  # an import blocked on purpose
                return False
        elif importlib.util.find_spec(name) is None:
            return False
    return True


def import_warp() -> tuple[Any, Any]:
    """``(warp, mujoco_warp)``, or an ImportError that says how to install them."""
    try:
        import warp as wp

        if wp.config.log_level == wp.LOG_INFO:
            # Warp's default logs its banner and one line per compiled or loaded kernel
            # module (hundreds for mjw.step); warnings and errors still show.
            wp.config.log_level = wp.LOG_WARNING
        import mujoco_warp as mjw
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    return wp, mjw


@functools.cache
def _kernels() -> Any:
    """The backend's own Warp kernels, built on first use (Warp is imported lazily)."""
    import warp as wp

    @wp.kernel(enable_backward=False)
    def check_state(
        qpos: wp.array2d(dtype=wp.float32),
        qvel: wp.array2d(dtype=wp.float32),
        qacc: wp.array2d(dtype=wp.float32),
        bad: wp.array(dtype=wp.int32),
    ):
        # As mj_checkPos/Vel/Acc: a NaN or a magnitude above mjMAXVAL marks the world.
        w = wp.tid()
        limit = wp.float32(1.0e10)
        for i in range(qpos.shape[1]):
            x = qpos[w, i]
            if wp.isnan(x) or wp.abs(x) > limit:
                bad[w] = 1
        for i in range(qvel.shape[1]):
            v = qvel[w, i]
            a = qacc[w, i]
            if wp.isnan(v) or wp.abs(v) > limit or wp.isnan(a) or wp.abs(a) > limit:
                bad[w] = 1

    @wp.kernel(enable_backward=False)
    def pack_state(
        qpos: wp.array2d(dtype=wp.float32),
        qvel: wp.array2d(dtype=wp.float32),
        bad: wp.array(dtype=wp.int32),
        overflow: wp.array(dtype=wp.int32),
        out: wp.array2d(dtype=wp.float32),
    ):
        # One row per world: qpos, qvel, the instability flag (then cleared), overflow bits.
        w = wp.tid()
        nq = qpos.shape[1]
        nv = qvel.shape[1]
        for i in range(nq):
            out[w, i] = qpos[w, i]
        for i in range(nv):
            out[w, nq + i] = qvel[w, i]
        out[w, nq + nv] = wp.float32(bad[w])
        out[w, nq + nv + 1] = wp.float32(overflow[w])
        bad[w] = 0

    @wp.kernel(enable_backward=False)
    def reset_mask(staged: wp.array2d(dtype=wp.float32), mask: wp.array(dtype=wp.bool)):
        # The last column of a staged reset row says whether the world resets.
        w = wp.tid()
        mask[w] = staged[w, staged.shape[1] - 1] != wp.float32(0.0)

    @wp.kernel(enable_backward=False)
    def reset_state(
        staged: wp.array2d(dtype=wp.float32),
        mask: wp.array(dtype=wp.bool),
        qpos: wp.array2d(dtype=wp.float32),
        qvel: wp.array2d(dtype=wp.float32),
    ):
        w = wp.tid()
        if mask[w]:
            nq = qpos.shape[1]
            for i in range(nq):
                qpos[w, i] = staged[w, i]
            for i in range(qvel.shape[1]):
                qvel[w, i] = staged[w, nq + i]

    names = ["check_state", "pack_state", "reset_mask", "reset_state"]
    return dataclasses.make_dataclass("Kernels", names)(check_state, pack_state, reset_mask, reset_state)


class WarpBackend(SimBackend):
    """:class:`SimBackend` on MuJoCo Warp: ``n_worlds`` simulations on one Warp device.

    Physics runs on the device in float32; the worlds' state and model fields also live
    there. The host keeps what the seam hands out: ``qpos``/``qvel`` (copied back once per
    :meth:`step`, float64 arrays holding the device's values) and the per-world model fields
    (float64, the values written; :meth:`commit` uploads them). A world whose state turns
    non-finite or exceeds ``mjMAXVAL`` at any physics step, or whose controls do, is reset to
    the model's defaults and reported by :meth:`unstable_since_last_call`, as MuJoCo's
    ``mj_check*`` would (MuJoCo resets at the step it finds it; this backend after the
    ``nstep`` steps of the call).

    The physics steps of one :meth:`step` are captured once as a Warp graph (on a CUDA
    device and on Warp's CPU device alike) and replayed, so a step costs a graph launch and
    two copies, not a Python call per kernel.

    Args:
        model: The nominal model (copied to the device; this one is not written).
        n_worlds: Number of simulations.
        threads: Accepted for the seam's signature; Warp's CPU device runs its kernels on
            one thread and a GPU needs none, so the backend reports 1.
        device: A Warp device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); default ``"cuda"`` where
            Warp sees one, else ``"cpu"``.
        nconmax: Contacts per world to allocate (default: mujoco_warp's estimate for the model).
        njmax: Constraint rows per world to allocate (default: mujoco_warp's estimate).
        deterministic: mujoco_warp's deterministic execution (stable contact order, canonical
            constraint rows, order-invariant atomic sums): on a GPU the same seed then gives
            the same run; slower. Warp's CPU device is deterministic either way.

    Raises:
        ImportError: where ``mujoco_warp`` is not installed (the message says how to install it).
        ValueError: for a device Warp does not have, or a model mujoco_warp does not support.

    Example:
        >>> import pytest; _ = pytest.importorskip("mujoco_warp")  # pip install "rlsim2real[warp]"
        >>> import gymnasium as gym
        >>> model = gym.make("Hopper-v5").unwrapped.model
        >>> backend = WarpBackend(model, n_worlds=2, device="cpu")
        >>> backend.model_field("body_mass")[1] *= 2.0  # world 1 twice as heavy
        >>> backend.commit(["body_mass"], np.array([1]))
        >>> backend.set_const(np.array([1]))  # subtree masses, invweights, ... of world 1
        >>> backend.reset(np.arange(2), np.tile(model.qpos0, (2, 1)), np.zeros((2, model.nv)))
        >>> backend.step(np.zeros((2, model.nu)), nstep=4)
        >>> backend.qpos.shape, bool((backend.qpos[:, 1] < model.qpos0[1]).all())  # both fall
        ((2, 6), True)
    """

    def __init__(
        self, model: mujoco.MjModel, n_worlds: int, threads: int = 1, device: str | None = None,
        nconmax: int | None = None, njmax: int | None = None, deterministic: bool = False,
    ) -> None:
        wp, mjw = import_warp()
        self._wp, self._mjw = wp, mjw
        self._kernels = _kernels()
        self.model = model
        self.n_worlds = int(n_worlds)
        if self.n_worlds < 1:
            raise ValueError(f"WarpBackend: n_worlds must be >= 1, got {n_worlds}")
        self.threads = 1
        self.device = _device(wp, device)
        # Capturing mjw's steps allocates scratch arrays inside the graph: on a CUDA device
        # that needs its memory pool (on by default where the driver has one).
        self._use_graphs = self.device.is_cpu or wp.is_mempool_enabled(self.device)
        with wp.ScopedDevice(self.device):
            try:
                self._m = mjw.put_model(model)
            except (NotImplementedError, ValueError) as exc:
                raise ValueError(f"WarpBackend: mujoco_warp cannot run this model: {exc}") from None
            if deterministic:  # read when the steps are built (and captured), so set first
                self._m.opt.deterministic = int(mjw.DeterminismType.ALL)
            data = mujoco.MjData(model)
            mujoco.mj_forward(model, data)
            self._d = mjw.put_data(model, data, nworld=self.n_worlds, nconmax=nconmax, njmax=njmax)
            self._bad = wp.zeros(self.n_worlds, dtype=wp.int32)
            self._mask = wp.zeros(self.n_worlds, dtype=wp.bool)
            self._packed = wp.zeros((self.n_worlds, model.nq + model.nv + 2), dtype=wp.float32)
            self._staged = wp.zeros((self.n_worlds, model.nq + model.nv + 1), dtype=wp.float32)
        # A reset's rows, uploaded in one copy: qpos, qvel, 1 where the world resets.
        self._staged_host = np.zeros((self.n_worlds, model.nq + model.nv + 1), dtype=np.float32)
        self._qpos0 = np.asarray(model.qpos0, dtype=np.float32)
        # The host's copies of the state: the device's float32 values, as float64.
        self._qpos = np.tile(np.asarray(data.qpos, dtype=np.float32).astype(np.float64), (self.n_worlds, 1))
        self._qvel = np.tile(np.asarray(data.qvel, dtype=np.float32).astype(np.float64), (self.n_worlds, 1))
        self._ctrl = np.zeros((self.n_worlds, model.nu), dtype=np.float32)
        self._unstable = np.zeros(self.n_worlds, dtype=bool)
        self._fields: dict[str, np.ndarray] = {}  # field -> host values (n_worlds, *field shape)
        self._graphs: dict[Any, Any] = {}  # what runs on the device, captured: nstep, "reset", "set_const"
        self._specs = {f.name: f.type for f in dataclasses.fields(mjw.Model)}
        self._option_specs = {f.name: f.type for f in dataclasses.fields(mjw.Option)}
        self._derived_expanded = False

    # -- state -----------------------------------------------------------------------------
    def reset(self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        # mjw.reset_data is mj_resetData for the masked worlds (state, warmstart, controls,
        # applied forces, time), then their joint state is written. The mj_forward of
        # Gymnasium's set_state computes only derived quantities, which mjw.step recomputes
        # from the state.
        ids = np.asarray(ids, dtype=np.intp)
        if ids.size:
            self._reset(ids, qpos, qvel)

    def _reset(self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        nq, nv = self.model.nq, self.model.nv
        staged = self._staged_host
        staged[:, -1] = 0.0
        staged[ids, :nq] = qpos
        staged[ids, nq : nq + nv] = qvel
        staged[ids, -1] = 1.0
        self._staged.assign(staged)
        self._run("reset", self._reset_on_device)
        self._qpos[ids] = staged[ids, :nq]
        self._qvel[ids] = staged[ids, nq : nq + nv]

    def _reset_on_device(self) -> None:
        wp, k, d = self._wp, self._kernels, self._d
        wp.launch(k.reset_mask, dim=self.n_worlds, inputs=[self._staged], outputs=[self._mask])
        self._mjw.reset_data(self._m, d, reset=self._mask)
        wp.launch(k.reset_state, dim=self.n_worlds, inputs=[self._staged, self._mask], outputs=[d.qpos, d.qvel])

    def step(self, ctrl: np.ndarray, nstep: int) -> None:
        ctrl = np.asarray(ctrl)
        # As MuJoCo's actuation: a world with a bad control gets all its controls zeroed and
        # counts as unstable.
        good = np.logical_and.reduce(np.abs(ctrl) <= MAXVAL, axis=1)
        self._ctrl[...] = ctrl
        if not good.all():
            self._ctrl[~good] = 0.0
            self._unstable |= ~good
        self._d.ctrl.assign(self._ctrl)
        self._run(nstep, lambda: self._advance(nstep))
        packed = self._packed.numpy()  # one copy to the host (and a wait for the device)
        nq, nv = self.model.nq, self.model.nv
        self._qpos[...] = packed[:, :nq]
        self._qvel[...] = packed[:, nq : nq + nv]
        bad = packed[:, nq + nv] != 0
        overflow = (packed[:, nq + nv + 1] != 0) & ~bad
        if overflow.any():
            w = int(np.flatnonzero(overflow)[0])
            raise RuntimeError(
                f"WarpBackend: world {w} overflowed mujoco_warp's buffers (flags {int(packed[w, nq + nv + 1])}: more "
                f"than njmax={self._d.njmax} constraint rows or naconmax={self._d.naconmax} contacts), so constraints "
                f"were dropped; give larger ones: backend_options = {{ nconmax = ..., njmax = ... }} in the experiment, "
                f"BatchedVecEnv(..., backend_options=dict(nconmax=..., njmax=...)) or WarpBackend(..., nconmax=..., njmax=...)")
        if bad.any():
            ids = np.flatnonzero(bad)
            self._reset(ids, np.broadcast_to(self._qpos0, (ids.size, nq)), np.zeros((ids.size, nv)))
            self._unstable[ids] = True

    def _advance(self, nstep: int) -> None:
        """``nstep`` physics steps, each checked per world, then the state packed for the host."""
        wp, m, d, k = self._wp, self._m, self._d, self._kernels
        for _ in range(nstep):
            self._mjw.step(m, d)
            wp.launch(k.check_state, dim=self.n_worlds, inputs=[d.qpos, d.qvel, d.qacc], outputs=[self._bad])
        wp.launch(k.pack_state, dim=self.n_worlds, inputs=[d.qpos, d.qvel, self._bad, d.overflow], outputs=[self._packed])

    def _run(self, key: Any, work) -> None:
        """Run ``work`` (device launches only) as a graph: captured at its first call, replayed after."""
        wp = self._wp
        if not self._use_graphs:
            with wp.ScopedDevice(self.device):
                work()
            return
        graph = self._graphs.get(key)
        if graph is None:
            with wp.ScopedDevice(self.device), wp.ScopedCapture(self.device) as capture:
                work()
            graph = self._graphs[key] = capture.graph
        wp.capture_launch(graph)

    @property
    def qpos(self) -> np.ndarray:
        return self._qpos

    @property
    def qvel(self) -> np.ndarray:
        return self._qvel

    def unstable_since_last_call(self) -> np.ndarray:
        unstable = self._unstable
        self._unstable = np.zeros(self.n_worlds, dtype=bool)
        return unstable

    # -- model fields ----------------------------------------------------------------------
    def model_field(self, field: str) -> np.ndarray:
        values = self._fields.get(field)
        if values is None:
            self._expand(field)
            nominal = np.asarray(field_array(self.model, field), dtype=np.float64)
            values = self._fields[field] = np.tile(nominal[None], (self.n_worlds,) + (1,) * nominal.ndim)
        return values

    def device_values(self, field: str) -> np.ndarray:
        """What the device holds for a model field (``body_mass``, ``opt.gravity``, or a
        derived one such as ``body_subtreemass``): a float64 copy, shape (n_worlds, *field
        shape) for a per-world field, (1, *field shape) for one all worlds share."""
        owner, name, _ = self._locate(field)
        array = getattr(owner, name)
        values = array.numpy().astype(np.float64)
        shape = np.shape(field_array(self.model, field)) if field.startswith("opt.") else np.shape(getattr(self.model, field))
        return values.reshape((array.shape[0], *shape))

    def commit(self, fields: Iterable[str], ids: np.ndarray) -> None:
        # Whole fields go up: one copy each, and the device's rows of other worlds are
        # rewritten with the values they already hold.
        for field in fields:
            device = self._device_array(field)
            device.assign(self._fields[field].reshape(device.shape + _vector_shape(device)).astype(np.float32))

    def set_const(self, ids: np.ndarray) -> None:
        # mjw.set_const recomputes every world at once (it has no world mask); the worlds
        # whose fields did not change get the values they had.
        if not self._derived_expanded:
            for name in _DERIVED:
                self._expand_device(self._m, name)
            self._derived_expanded = True
        self._run("set_const", lambda: self._mjw.set_const(self._m, self._d))

    def _expand(self, field: str) -> None:
        """Give ``field`` a leading world axis on the device (its values copied to every world)."""
        owner, name, spec = self._locate(field)
        shape = getattr(spec, "shape", ())
        if not shape or shape[0] != "*":
            raise ValueError(f"WarpBackend: model field {field!r} has no per-world values in mujoco_warp")
        dtype = getattr(owner, name).dtype
        if getattr(dtype, "_wp_scalar_type_", dtype) is not self._wp.float32:  # a vector's or a scalar's
            raise ValueError(f"WarpBackend: model field {field!r} is not a float field in mujoco_warp")
        array = self._expand_device(owner, name)
        host = int(np.prod(np.shape(field_array(self.model, field)), dtype=np.int64))
        per_world = int(np.prod(array.shape[1:] + _vector_shape(array), dtype=np.int64))
        if host != per_world:
            raise ValueError(f"WarpBackend: model field {field!r} has {per_world} values per world in mujoco_warp, {host} in MuJoCo")
        if field in _FLUID_OPTIONS:
            # put_model enables fluid forces only when the nominal options ask for them.
            self._m.has_fluid = True
            self._graphs.clear()

    def _expand_device(self, owner: Any, name: str) -> Any:
        """``owner.name`` with one row per world on the device (world 0's values in each)."""
        array = getattr(owner, name)
        if array.shape[0] == self.n_worlds:
            return array
        values = array.numpy()
        tiled = np.repeat(values[:1], self.n_worlds, axis=0)
        expanded = self._wp.array(tiled, dtype=array.dtype, device=self.device)
        expanded._is_batched = True  # as mjw's put_model marks its per-world arrays
        setattr(owner, name, expanded)
        self._graphs.clear()  # the captured steps point at the old array
        return expanded

    def _locate(self, field: str) -> tuple[Any, str, Any]:
        if field.startswith("opt."):
            name = field[4:]
            if name in self._option_specs:
                return self._m.opt, name, self._option_specs[name]
        elif field in self._specs and not field.startswith(("vis.", "stat.")):
            return self._m, field, self._specs[field]
        raise ValueError(f"WarpBackend: model field {field!r} has no per-world values in mujoco_warp")

    def _device_array(self, field: str) -> Any:
        owner, name, _ = self._locate(field)
        return getattr(owner, name)

    def close(self) -> None:
        self._graphs.clear()
        self._m = self._d = None


def _vector_shape(array: Any) -> tuple[int, ...]:
    """The element shape of a Warp array's dtype (``(3,)`` for ``vec3``, ``()`` for a scalar)."""
    return tuple(getattr(array.dtype, "_shape_", ()))


def _device(wp: Any, device: str | None) -> Any:
    """The Warp device for ``device`` (default: CUDA where Warp sees it, else the CPU)."""
    if device is None:
        return wp.get_device("cuda" if wp.is_cuda_available() else "cpu")
    if str(device).startswith("cuda") and not wp.is_cuda_available():
        raise ValueError(f"WarpBackend: device {device!r} requested but Warp sees no CUDA device (use device=\"cpu\")")
    try:
        return wp.get_device(device)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"WarpBackend: unknown Warp device {device!r}: {exc}") from None

