"""Headless OpenGL for dm_control: choose the backend, and prove it works before any rendering work.

dm_control renders through an OpenGL context chosen by ``MUJOCO_GL`` (``egl``, ``osmesa`` or ``glfw``),
read once when dm_control is first imported; PyOpenGL follows ``PYOPENGL_PLATFORM``. Unset, both become
``egl`` (dmcontrol_env.md: EGL works on the CPU here, through Mesa). A node without a usable EGL
(no GPU driver's libEGL and no Mesa EGL vendor) fails only at the first render, with
``ImportError: Cannot initialize a headless EGL display`` from deep inside dm_control; ``osmesa``
without an OSMesa library fails with ``'NoneType' object has no attribute 'glGetError'``.

:func:`check_headless_rendering` renders one 16x16 frame of a one-sphere model (well under a second
where it works) and, where it fails, raises :class:`HeadlessRenderingError` naming the backend
variables, what was tried, the error, and the documented alternatives (docs/variants.md, "DMControl pretraining");
a ``cli.SetupError``, so a workflow script exits 2 with that message and no traceback.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from typing import Callable

import numpy as np

from ..cli import SetupError

DEFAULT_BACKEND = "egl"
PROBE_SIZE = 16
_PROBE_XML = (
    "<mujoco><worldbody><light pos='0 0 1'/><geom type='sphere' size='0.1' rgba='1 0 0 1'/></worldbody></mujoco>"
)
ALTERNATIVES = (
    "Alternatives (docs/variants.md, \"DMControl pretraining\"):\n"
    "  - run collect_dmcontrol where EGL works: a GPU node (the NVIDIA driver ships libEGL) or a node with "
    "Mesa's EGL (Debian/Ubuntu packages libegl1 and libegl-mesa0; CPU rendering, about 18-34 steps/s at "
    "128x128): on Slurm, a partition whose nodes have it;\n"
    "  - software rendering: install an OSMesa library (Debian/Ubuntu: libosmesa6) and set "
    "MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa in the environment Snakemake runs in (jobs inherit it);\n"
    "  - no collection at all: start the DMControl variants from the released DMControl checkpoints "
    "(`make fetch-dmcontrol`, dmcontrol_init.tokenizer / .dynamics) instead of `dmcontrol_init.source: pretrain`."
)

_verified: dict | None = None  # the passed check of this process (dm_control reads MUJOCO_GL once)


class HeadlessRenderingError(SetupError):
    """No working headless OpenGL backend for dm_control on this node (a setup problem)."""


def configure_backend() -> tuple[str, str]:
    """Set ``MUJOCO_GL`` (default egl) and, for egl / osmesa, ``PYOPENGL_PLATFORM`` where unset;
    return both as they now are (``PYOPENGL_PLATFORM`` may be '')."""
    backend = os.environ.setdefault("MUJOCO_GL", DEFAULT_BACKEND)
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend, os.environ.get("PYOPENGL_PLATFORM", "")


def _probe_render() -> np.ndarray:
    """One (PROBE_SIZE, PROBE_SIZE, 3) uint8 frame of a tiny model through dm_control's renderer."""
    from dm_control import mujoco

    physics = mujoco.Physics.from_xml_string(_PROBE_XML)
    try:
        return physics.render(PROBE_SIZE, PROBE_SIZE)
    finally:
        physics.free()


def check_headless_rendering(probe: Callable[[], np.ndarray] | None = None, *, force: bool = False) -> dict:
    """Render one small frame with the configured backend; raise :class:`HeadlessRenderingError` if that fails.

    Once passed, later calls in the process return the same record at once (``force`` re-probes).
    ``probe`` replaces the real render (tests inject failures with it).
    Returns {"MUJOCO_GL", "PYOPENGL_PLATFORM", "probe_s"}.
    """
    global _verified
    if _verified is not None and not force and probe is None:
        return _verified
    backend, platform = configure_backend()
    if probe is None and importlib.util.find_spec("dm_control") is None:
        raise HeadlessRenderingError(
            "dm_control is not importable; install requirements.txt (dm-control==1.0.50, mujoco==3.17.0)"
        )
    t0 = time.perf_counter()
    try:
        frame = (probe or _probe_render)()
    except Exception as exc:  # ImportError (EGL), AttributeError (OSMesa), RuntimeError, mujoco.FatalError ...
        raise HeadlessRenderingError(_message(backend, platform, f"{type(exc).__name__}: {exc}")) from exc
    frame = np.asarray(frame)
    if frame.shape != (PROBE_SIZE, PROBE_SIZE, 3) or frame.dtype != np.uint8:
        raise HeadlessRenderingError(
            _message(
                backend,
                platform,
                f"the probe returned {frame.dtype} {frame.shape}, expected uint8 {(PROBE_SIZE, PROBE_SIZE, 3)}",
            )
        )
    rec = {"MUJOCO_GL": backend, "PYOPENGL_PLATFORM": platform, "probe_s": round(time.perf_counter() - t0, 3)}
    if probe is None:
        _verified = rec
    return rec


def _message(backend: str, platform: str, error: str) -> str:
    extra = ""
    if backend == "egl":
        extra = (
            " (libEGL found no usable device: no GPU driver's EGL and no Mesa EGL vendor under "
            f"{os.environ.get('__EGL_VENDOR_LIBRARY_DIRS') or '/usr/share/glvnd/egl_vendor.d'})"
        )
    elif backend == "osmesa":
        extra = " (no OSMesa library found: install libosmesa6)"
    return (
        f"headless rendering does not work on {socket.gethostname()}: tried MUJOCO_GL={backend} "
        f"(PYOPENGL_PLATFORM={platform or 'unset'}), rendering one {PROBE_SIZE}x{PROBE_SIZE} frame of a "
        f"one-sphere MuJoCo model through dm_control, and it failed{extra}: {error.rstrip('.')}. DMControl collection "
        f"renders every frame, so it stopped before rendering any episode.\n{ALTERNATIVES}"
    )
