"""Headless rendering for DMControl collection (data/headless_gl.py): a node without EGL stops collection at
once, before rendering or writing anything, with MUJOCO_GL, what was tried and the documented alternatives.

A node without EGL is simulated for real: libglvnd's libEGL finds its vendor drivers (Mesa here, NVIDIA on GPU
nodes) through the JSON files in /usr/share/glvnd/egl_vendor.d, and `__EGL_VENDOR_LIBRARY_DIRS` pointed at an
empty folder leaves it with none - what a compute node without a GPU driver's or Mesa's EGL looks like. dm_control
then fails inside its import with "Cannot initialize a headless EGL display"."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dreamer4_libero.data import dmcontrol, headless_gl
from dreamer4_libero.data.headless_gl import HeadlessRenderingError, check_headless_rendering

REPO = Path(__file__).resolve().parents[1]
COLLECT = {
    "tasks": ["reacher-easy"],
    "episodes_per_task": 1,
    "steps": 3,
    "seed": 0,
    "policy": "random",
    "policy_per_task": {},
    "render_size": 224,
}
ALTERNATIVES = (
    "a GPU node",
    "libegl-mesa0",
    "MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa",
    "libosmesa6",
    "make fetch-dmcontrol",
    "dmcontrol_init.source: pretrain",
    'docs/variants.md, "DMControl pretraining"',
)


@pytest.mark.fault(
    fault="collect_dmcontrol on a node whose libEGL has no vendor driver (no usable EGL)",
    guarantee="exit 2 before rendering or writing anything, naming MUJOCO_GL=egl, the probe that was "
    "tried, dm_control's error and the alternatives (osmesa, a GPU/EGL node, released files)",
)
def test_collection_without_egl_stops_before_rendering(tmp_path):
    no_vendors = tmp_path / "egl_vendor.d"
    no_vendors.mkdir()
    out = tmp_path / "collect"
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env["__EGL_VENDOR_LIBRARY_DIRS"] = str(no_vendors)
    t0 = time.time()
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts" / "collect_dmcontrol.py"),
            "--collect",
            json.dumps(COLLECT),
            "--out",
            str(out),
            "--progress",
            "false",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert time.time() - t0 < 60
    err = r.stderr
    assert "ERROR: headless rendering does not work" in err and "Traceback" not in err, err
    assert "tried MUJOCO_GL=egl (PYOPENGL_PLATFORM=egl), rendering one 16x16 frame" in err, err  # unset -> egl
    assert "Cannot initialize a headless EGL display" in err and str(no_vendors) in err, err
    assert all(a in err for a in ALTERNATIVES), err
    assert "headless rendering: MUJOCO_GL" not in r.stdout and not out.exists()  # nothing rendered, nothing written


def test_egl_works_here_and_the_check_passes():
    rec = check_headless_rendering(force=True)
    assert rec["MUJOCO_GL"] == "egl" and rec["PYOPENGL_PLATFORM"] == "egl" and 0 < rec["probe_s"] < 30
    assert check_headless_rendering() == rec  # once per process


def test_osmesa_without_the_library_names_it_and_the_alternatives(monkeypatch):
    """MUJOCO_GL=osmesa without libOSMesa (dmcontrol_env.md): PyOpenGL's platform has no GL; injected here, as
    dm_control reads MUJOCO_GL once per process."""
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setenv("PYOPENGL_PLATFORM", "osmesa")

    def osmesa_probe():
        raise AttributeError("'NoneType' object has no attribute 'glGetError'")

    with pytest.raises(HeadlessRenderingError) as e:
        check_headless_rendering(osmesa_probe)
    msg = str(e.value)
    assert "tried MUJOCO_GL=osmesa (PYOPENGL_PLATFORM=osmesa)" in msg and "install libosmesa6" in msg
    assert "AttributeError: 'NoneType' object has no attribute 'glGetError'" in msg
    assert all(a in msg for a in ALTERNATIVES), msg
    with pytest.raises(HeadlessRenderingError, match=r"the probe returned float64 \(16, 16\)"):
        check_headless_rendering(lambda: np.zeros((16, 16)))  # a broken context that returns garbage


def test_collect_writes_nothing_when_rendering_fails(tmp_path, monkeypatch):
    def no_gl():
        raise HeadlessRenderingError("headless rendering does not work on this node (injected)")

    monkeypatch.setattr(dmcontrol, "check_headless_rendering", no_gl)
    with pytest.raises(HeadlessRenderingError, match="injected"):
        dmcontrol.collect(tmp_path / "out", ["reacher-easy"], episodes=1, steps=3)
    assert not (tmp_path / "out").exists()
    with pytest.raises(HeadlessRenderingError, match="injected"):
        dmcontrol.load_env("reacher-easy", 0)
    assert headless_gl.DEFAULT_BACKEND == "egl"
