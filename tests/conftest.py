"""Shared fixtures: a synthetic LIBERO dataset at the test config's size, and its preprocessing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from dreamer4_libero.config import demo_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def test_cfg() -> dict:
    return demo_config(test=True)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory, test_cfg) -> Path:
    """12 tasks x 12 demos x 40-64 frames in the LIBERO layout (config/test.yaml)."""
    from dreamer4_libero.data.synthetic import demo_task_ids, generate

    s = test_cfg["synthetic"]
    root = tmp_path_factory.mktemp("libero")
    generate(root, demo_task_ids(per_suite=s["per_suite"]), n_demos=s["n_demos"],
             len_range=(s["len_min"], s["len_max"]), seed=s["seed"], progress=False)
    return root


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, synthetic_root, test_cfg) -> Path:
    """Output folder of the preprocessing stage run on `synthetic_root`, with splits."""
    from dreamer4_libero.data.preprocess import preprocess
    from dreamer4_libero.data.splits import build_and_write

    out = tmp_path_factory.mktemp("pre")
    preprocess(synthetic_root, out, workers=2, min_demo_len=test_cfg["data"]["min_demo_len"], progress=False)
    build_and_write(out / "manifest.json", out / "splits", split_cfg=test_cfg["split"], probe_cfg=test_cfg["probe"])
    return out


def write_libero_file(path: Path, demos: list[tuple[np.ndarray, np.ndarray]], convention: str = "opengl") -> Path:
    """A minimal file in the LIBERO layout: demos = [(upright frames (T,128,128,3) uint8, actions (T,7))]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        g.attrs["problem_info"] = json.dumps({"language_instruction": "do the thing"})
        g.attrs["env_args"] = json.dumps({"env_kwargs": {"camera_heights": 128}})
        g.attrs["macros_image_convention"] = convention
        g.attrs["num_demos"] = len(demos)
        g.attrs["total"] = sum(len(a) for _, a in demos)
        for i, (frames, actions) in enumerate(demos):
            d = g.create_group(f"demo_{i}")
            d.attrs["num_samples"] = len(actions)
            d.create_dataset("actions", data=actions.astype(np.float64))
            stored = frames[:, ::-1] if convention == "opengl" else frames
            d.create_dataset("obs/agentview_rgb", data=np.ascontiguousarray(stored))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_ckpt(tmp_path_factory) -> Path:
    """An upstream-format tokenizer checkpoint (random weights, 32x32, 4 latents x 8) for dynamics tests."""
    import torch

    from dreamer4_libero.models.tokenizer import Tokenizer, TokenizerConfig
    from dreamer4_libero.models.upstream import save_upstream_tokenizer_checkpoint

    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig(H=32, W=32, patch=8, d_model=32, n_heads=2, depth=1, n_latents=4,
                                    d_bottleneck=8, dropout=0.0))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.pt"
    save_upstream_tokenizer_checkpoint(path, tok)
    return path


def _repo_copy(dest: Path) -> Path:
    """The working tree (tracked and untracked, not ignored files) copied to `dest`: a clean checkout."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def snakemake_cmd(*args) -> list[str]:
    exe = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    return [exe, *args]


def venv_env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory) -> Path:
    """The whole demo DAG (`make demo`'s snakemake command) run once per test session in a copy of the repo.

    Every test that needs trained demo models, evaluation records, tables or the archive reads this run.
    """
    work = _repo_copy(tmp_path_factory.mktemp("demo_study"))
    log = work / "demo_snakemake.log"
    with open(log, "w") as fh:
        r = subprocess.run(snakemake_cmd("--profile", "profiles/local", "--cores", "2", "--configfile",
                                         "config/demo.yaml"), cwd=work, env=venv_env(), stdout=fh,
                           stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text()[-4000:]
        logs = sorted((work / "logs").rglob("*.log"))
        last = logs[-1].read_text()[-3000:] if logs else ""
        raise AssertionError(f"demo DAG failed (exit {r.returncode}):\n{tail}\n--- newest rule log ---\n{last}")
    return work
