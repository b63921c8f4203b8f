"""The paper config starts its DMControl variants from the released nicklashansen/dreamer4 files
(`dmcontrol_init.source: released`, data/dmcontrol_release.py): how the source resolves, what the
alternative (`source: pretrain`) costs under the config, and the paper DAG's dry run without the files
(a parse-time error naming both ways on) and with them (no DMControl collection or pretraining)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import planned_jobs, snakemake_cmd, venv_env
from dreamer4_libero.config import (
    DMCONTROL_PRETRAIN_DIR,
    ConfigError,
    deep_merge,
    demo_config,
    dmcontrol_pretrain_runs,
    dynamics_variants,
    load_config,
)
from dreamer4_libero.data import dmcontrol_release as rel

REPO = Path(__file__).resolve().parents[1]
DMC = ("dynamics_aux_dmcontrol_pretrained", "dynamics_dmcontrol_pretrained")


def test_the_paper_config_uses_the_released_files_and_the_demo_its_own_pretraining():
    paper = load_config()
    assert paper["dmcontrol_init"]["source"] == "released"
    runs = dynamics_variants(paper)
    for n in DMC:
        assert runs[n]["runnable"] and runs[n]["init_source"] == "released"
        assert runs[n]["init_paths"] == {
            "tokenizer": "assets/dmcontrol/tokenizer_ckpt.pt",
            "dynamics": "assets/dmcontrol/dynamics_ckpt.pt",
        }
        assert "released nicklashansen/dreamer4 checkpoints" in runs[n]["init_note"]
    # the demo, the test config and the Slurm CI study keep pretraining their tiny DMControl model
    for files in (["demo.yaml"], ["demo.yaml", "test.yaml"], ["demo.yaml", "ci_slurm.yaml"]):
        cfg = load_config([REPO / "config" / f for f in files])
        assert cfg["dmcontrol_init"]["source"] == "pretrain", files
        rel.check_dmcontrol_files(cfg)  # nothing to fetch
    demo = dynamics_variants(demo_config())
    assert demo[DMC[0]]["init_paths"]["dynamics"] == f"{DMCONTROL_PRETRAIN_DIR}/dynamics.pt"


def test_source_resolution():
    paper = load_config()
    moved = dynamics_variants(deep_merge(paper, {"dmcontrol_init": {"released_dir": "/site/d4"}}))
    assert moved[DMC[0]]["init_paths"] == {
        "tokenizer": "/site/d4/tokenizer_ckpt.pt",
        "dynamics": "/site/d4/dynamics_ckpt.pt",
    }
    # auto: the configured files when set, else the release - never a silent pretraining
    auto = dynamics_variants(deep_merge(paper, {"dmcontrol_init": {"source": "auto"}}))
    assert auto[DMC[0]]["init_source"] == "released"
    auto = dynamics_variants(
        deep_merge(paper, {"dmcontrol_init": {"source": "auto", "dynamics": "/x/dyn.pt", "tokenizer": "/x/tok.pt"}})
    )
    assert auto[DMC[0]]["init_source"] == "files" and auto[DMC[0]]["init_paths"]["dynamics"] == "/x/dyn.pt"
    pre = dynamics_variants(deep_merge(paper, {"dmcontrol_init": {"source": "pretrain"}}))
    assert pre[DMC[0]]["init_source"] == "pretrain"
    # a LIBERO fine-tune of the DMControl tokenizer starts from the released file
    ft = dmcontrol_pretrain_runs(deep_merge(paper, {"dmcontrol_init": {"tokenizer_choice": "finetune"}}))
    assert ft["finetune_tokenizer"]["init_from"] == "assets/dmcontrol/tokenizer_ckpt.pt"
    # the schema's default is the release too
    assert load_config(base=None)["dmcontrol_init"] == {
        "source": "released",
        "released_dir": "assets/dmcontrol",
        "tokenizer": None,
        "dynamics": None,
        "tokenizer_choice": "dmcontrol",
    }


def test_pretrain_cost_is_computed_from_the_config():
    c = rel.pretrain_cost(load_config())
    # 18 stock tasks x 240 episodes x 501 frames; 40.8 frames/s at 224 px; uint8 128x128x3 frames
    assert c["frames"] == 18 * 240 * 501 == 2_164_320
    assert c["collect_hours"] == pytest.approx(2_164_320 / 40.8 / 3600) and 14.7 < c["collect_hours"] < 14.8
    assert c["shard_bytes"] == 2_164_320 * 49152 and round(c["shard_bytes"] / 1e9) == 106
    assert c["train"]["tokenizer"] == {
        "run": "tokenizer_dmcontrol",
        "steps": 85000,
        "gpus": 4,
        "runtime_min": 1440,
        "gpu_hours": 96.0,
    }
    assert c["train"]["dynamics"] == {
        "run": "dynamics_dmcontrol",
        "steps": 30000,
        "gpus": 5,
        "runtime_min": 1440,
        "gpu_hours": 120.0,
    }
    assert c["gpu_hours"] == 216.0
    small = rel.pretrain_cost(
        deep_merge(
            load_config(),
            {
                "dmcontrol_pretrain": {
                    "collect": {"episodes_per_task": 10, "render_size": 128},
                    "tokenizer": {"gpus": 2, "runtime_min": 600},
                }
            },
        )
    )
    assert small["frames"] == 18 * 10 * 501 and small["collect_frames_per_s"] == 52.9
    assert small["gpu_hours"] == 2 * 10 + 120


def test_missing_files_are_an_error_naming_both_ways_on(tmp_path):
    paper = deep_merge(load_config(), {"dmcontrol_init": {"released_dir": str(tmp_path / "rel")}})
    with pytest.raises(ConfigError) as exc:
        rel.check_dmcontrol_files(paper)
    msg = str(exc.value)
    assert f"tokenizer: {tmp_path}/rel/tokenizer_ckpt.pt" in msg and f"dynamics: {tmp_path}/rel/dynamics_ckpt.pt" in msg
    assert "`make fetch-dmcontrol`" in msg and "`dmcontrol_init.source: pretrain`" in msg
    assert "2,164,320 frames" in msg and "106 GB" in msg and "216 GPU-hours" in msg
    assert all(n in msg for n in DMC)
    # only what is missing is named; with both present nothing is raised
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / rel.TOKENIZER_FILE).write_bytes(b"x")
    with pytest.raises(ConfigError, match="dynamics: .*dynamics_ckpt.pt") as exc:
        rel.check_dmcontrol_files(paper)
    assert "tokenizer:" not in str(exc.value).splitlines()[1]
    (tmp_path / "rel" / rel.DYNAMICS_FILE).write_bytes(b"x")
    rel.check_dmcontrol_files(paper)
    # tokenizer_choice study needs the dynamics file only
    (tmp_path / "rel" / rel.TOKENIZER_FILE).unlink()
    rel.check_dmcontrol_files(deep_merge(paper, {"dmcontrol_init": {"tokenizer_choice": "study"}}))
    # configured files: the same check, naming the path and the keys
    files = deep_merge(
        paper, {"dmcontrol_init": {"source": "files", "tokenizer": "/nope/t.pt", "dynamics": "/nope/d.pt"}}
    )
    with pytest.raises(
        ConfigError, match=r"source is files.*\n    tokenizer: /nope/t.pt\n    dynamics: /nope/d.pt"
    ) as exc:
        rel.check_dmcontrol_files(files)
    assert "dmcontrol_init.tokenizer / dmcontrol_init.dynamics" in str(exc.value) and "216 GPU-hours" in str(exc.value)
    # nothing to check: source none, or the DMControl variants disabled
    rel.check_dmcontrol_files(deep_merge(paper, {"dmcontrol_init": {"source": "none"}}))
    off = {"dynamics": {"variants": {n: {"enabled": False} for n in DMC}}}
    rel.check_dmcontrol_files(deep_merge(paper, off))


def _paper_dry_run(tmp_path, layer: dict) -> subprocess.CompletedProcess:
    """`snakemake -n` of the paper config (config.yaml) plus `layer`; data.libero_root is an empty folder (the
    dry run does not read it)."""
    (tmp_path / "libero").mkdir(exist_ok=True)
    f = tmp_path / "layer.yaml"
    f.write_text(yaml.safe_dump(deep_merge({"data": {"libero_root": str(tmp_path / "libero")}}, layer)))
    return subprocess.run(
        snakemake_cmd("-n", "--forceall", "--cores", "1", "--configfile", str(f)),
        cwd=REPO,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_paper_dry_run_stops_without_the_release_and_plans_no_pretraining_with_it(tmp_path):
    released = tmp_path / "released"
    r = _paper_dry_run(tmp_path, {"dmcontrol_init": {"released_dir": str(released)}})
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Job stats" not in out
    assert "ConfigError" in out and f"{released}/dynamics_ckpt.pt" in out
    assert "`make fetch-dmcontrol`" in out and "`dmcontrol_init.source: pretrain`" in out and "216 GPU-hours" in out

    # small stand-ins are enough for the plan: 34 jobs (33 + the fetch_lpips localrule), the DMControl variants
    # start from them
    released.mkdir()
    for name in (rel.TOKENIZER_FILE, rel.DYNAMICS_FILE):
        (released / name).write_bytes(b"stand-in")
    r = _paper_dry_run(tmp_path, {"dmcontrol_init": {"released_dir": str(released)}})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    jobs = planned_jobs(out)
    assert "collect_dmcontrol" not in jobs and "pretrain_dmcontrol" not in jobs
    assert jobs["train_tokenizer"] == 1 and jobs["train_dynamics"] == 7 and jobs["probe"] == 7
    assert sum(v for k, v in jobs.items() if k != "total") == jobs["total"] == 34
    inputs = [ln for ln in out.splitlines() if ln.strip().startswith("input:") and "dynamics_ckpt.pt" in ln]
    assert len(inputs) == 2 and all(f"{released}/tokenizer_ckpt.pt, {released}/dynamics_ckpt.pt" in ln for ln in inputs)

    # source: pretrain instead: the 4 jobs of the pretraining come back (38)
    r = _paper_dry_run(tmp_path, {"dmcontrol_init": {"source": "pretrain", "released_dir": str(released)}})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    jobs = planned_jobs(r.stdout + r.stderr)
    assert jobs["collect_dmcontrol"] == jobs["pretrain_dmcontrol"] == 1
    assert jobs["train_tokenizer"] == 2 and jobs["train_dynamics"] == 8 and jobs["total"] == 38
