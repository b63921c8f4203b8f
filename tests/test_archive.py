"""Model-card archive (evaluation.md §5): folder contents, README, upstream-format weights that load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamer4_libero.fileio import sha256_file, write_json
from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig, InverseDynamicsHead
from dreamer4_libero.models.tokenizer import Tokenizer, TokenizerConfig
from dreamer4_libero.models.upstream import load_dynamics_checkpoint, load_tokenizer_checkpoint
from dreamer4_libero.reporting import archive as A
from dreamer4_libero.reporting import tables as T
from test_tables import VARIANTS, write_synthetic_results

REPO = Path(__file__).resolve().parents[1]
ARCH_VARIANTS = VARIANTS[:3]  # phase3, aux_phase6 (aux head), dmcontrol (not run)


def _engine_dynamics_ckpt(path: Path, name: str, aux: bool, seed: int) -> Dynamics:
    torch.manual_seed(seed)
    cfg = DynamicsConfig(d_model=32, depth=1, n_heads=2, n_spatial=2, d_spatial=8, n_register=1, n_agent=1, k_max=4)
    dyn = Dynamics(cfg)
    head = InverseDynamicsHead(cfg.d_model, cfg.action_dim) if aux else None
    params = list(dyn.parameters()) + (list(head.parameters()) if head else [])
    opt = torch.optim.AdamW(params, lr=1e-3)
    args = {
        "seq_len": 8,
        "batch_size": 2,
        "tokenizer_ckpt": "/x/tokenizer.pt",
        "tokenizer_sha256": "t" * 64,
        "scale_pos_embeds": False,
        "d_model_dyn": 32,
        "dyn_depth": 1,
        "n_heads": 2,
        "dropout": 0.0,
        "mlp_ratio": 4.0,
        "time_every": 1,
        "packing_factor": 2,
        "n_register": 1,
        "n_spatial": 2,
        "n_agent": 1,
        "space_mode": "wm_agent_isolated",
        "k_max": 4,
        "max_steps": 400,
        "seed": 0,
        "aux_weight": 0.05 if aux else 0.0,
        "aux_input": "leaky" if aux else None,
        "init_from": None,
        "variant": name,
    }
    ck = {
        "step": 400,
        "epoch": 0,
        "dynamics": dyn.state_dict(),
        "opt": opt.state_dict(),
        "scaler": {},
        "args": args,
        "scale_pos_embeds": False,
        "rng": {"torch": torch.get_rng_state()},
        "data": {"next_step": 400},
        "world_size": 1,
        "format": "dreamer4_libero.checkpoint/1",
        "metrics_tail": [],
    }
    if head is not None:
        ck["aux_head"] = head.state_dict()
    torch.save(ck, path)
    return dyn


def _engine_tokenizer_ckpt(path: Path) -> Tokenizer:
    torch.manual_seed(0)
    cfg = TokenizerConfig(H=32, W=32, patch=8, d_model=32, n_heads=2, depth=1, n_latents=4, d_bottleneck=8, dropout=0.0)
    tok = Tokenizer(cfg)
    args = {**cfg.to_dict(), "seq_len": 8, "batch_size": 8, "max_steps": 600, "seed": 0, "lpips_weight": 0.2}
    torch.save(
        {
            "step": 600,
            "epoch": 0,
            "model": tok.state_dict(),
            "opt": {"state": {}, "param_groups": []},
            "scaler": {},
            "args": args,
            "scale_pos_embeds": cfg.scale_pos_embeds,
            "rng": {},
            "format": "dreamer4_libero.checkpoint/1",
        },
        path,
    )
    return tok


@pytest.fixture(scope="module")
def arch(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("arch")
    res = write_synthetic_results(root, variants=ARCH_VARIANTS)
    models = {}
    for d in res["train_dirs"]:
        if (d / "not_run.json").exists():
            continue
        ck = d / "engine.pt"
        if d.name == "tokenizer_demo":
            models[d.name] = _engine_tokenizer_ckpt(ck)
            key = "model"
        else:
            models[d.name] = _engine_dynamics_ckpt(ck, d.name, aux=d.name == "dynamics_aux_phase6", seed=len(models))
            key = "dynamics"
        write_json(
            d / "checkpoint.json",
            {
                "run_name": d.name,
                "path": str(ck),
                "sha256": sha256_file(ck),
                "step": 400,
                "model_key": key,
                "extra": {},
            },
        )
    # rollout strips for one variant only (the other is skipped gracefully)
    rdir = root / "rollout" / "dynamics_aux_phase6"
    (rdir / "strips.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (rdir / "rollout.gif").write_bytes(b"GIF89afake")
    # split files
    splits = root / "splits"
    for name, eps in (
        ("train.json", ["s/taskA/demo_0", "s/taskA/demo_1", "s/taskB/demo_0"]),
        ("test_ood.json", ["s/taskC/demo_0"]),
        ("probe/seed0/probe_train.json", ["s/taskA/demo_0"]),
    ):
        write_json(splits / name, {"episodes": eps})
    manifest = root / "manifest.json"
    write_json(
        manifest,
        {
            "files": [
                {"task_id": "s/taskA", "demos": [{"name": "demo_0", "T": 50}, {"name": "demo_1", "T": 60}]},
                {"task_id": "s/taskB", "demos": [{"name": "demo_0", "T": 40}]},
            ]
        },
    )
    tables_dir = root / "tables"
    T.make_tables(
        res["config"],
        tables_dir,
        res["probe_summaries"],
        res["rollout"],
        res["tokenizer_eval"],
        res["train_dirs"],
        root=root,
    )
    out = root / "archive"
    paths = A.make_archive(
        res["config"],
        out,
        res["probe_summaries"],
        res["rollout"],
        res["tokenizer_eval"],
        res["train_dirs"],
        tables_dir=tables_dir,
        rollout_dirs=[root / "rollout" / v for v in ("dynamics_phase3", "dynamics_aux_phase6")],
        splits_dir=splits,
        manifest=manifest,
        root=root,
    )
    return {
        "res": res,
        "out": out,
        "paths": paths,
        "models": models,
        "root": root,
        "splits": splits,
        "manifest": manifest,
        "tables_dir": tables_dir,
    }


def test_folders_and_files(arch):
    out = arch["out"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "dynamics_aux_phase6",
        "dynamics_phase3",
        "plots",
        "tokenizer_demo",
    ]
    aux = out / "dynamics_aux_phase6"
    for f in (
        "dynamics.pt",
        "aux_head.pt",
        "config.json",
        "metrics.json",
        "README.md",
        "curve_loss.png",
        "curve_aux_mse.png",
        "rollout_strips.png",
        "rollout.gif",
    ):
        assert (aux / f).is_file(), f
    p3 = out / "dynamics_phase3"
    assert (p3 / "dynamics.pt").is_file() and not (p3 / "aux_head.pt").exists()
    assert not list(p3.glob("*.gif"))  # no strips given: skipped, no error
    assert (out / "tokenizer_demo" / "tokenizer.pt").is_file()
    assert not (out / "dynamics_aux_dmcontrol_pretrained").exists()
    assert not list(out.glob(".*"))  # no temp folders left behind


def test_checkpoint_is_upstream_format_and_loads(arch):
    out = arch["out"]
    ck = torch.load(out / "dynamics_aux_phase6" / "dynamics.pt", map_location="cpu", weights_only=True)
    assert set(ck) == {"step", "epoch", "dynamics", "opt", "scaler", "args", "scale_pos_embeds"}
    assert ck["opt"] == {"state": {}, "param_groups": []} and ck["step"] == 400
    assert not any(k.startswith(("_orig_mod.", "module.", "aux")) for k in ck["dynamics"])
    model, report = load_dynamics_checkpoint(str(out / "dynamics_aux_phase6" / "dynamics.pt"))
    ref = arch["models"]["dynamics_aux_phase6"].state_dict()
    got = model.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert report["n_params"] == sum(v.numel() for v in ref.values())
    aux = torch.load(out / "dynamics_aux_phase6" / "aux_head.pt", map_location="cpu", weights_only=True)
    head = InverseDynamicsHead(aux["d_model"])
    head.load_state_dict(aux["aux_head"])
    assert aux["aux_input"] == "leaky" and aux["aux_weight"] == 0.05
    tok, _ = load_tokenizer_checkpoint(str(out / "tokenizer_demo" / "tokenizer.pt"))
    ref = arch["models"]["tokenizer_demo"].state_dict()
    assert all(torch.equal(tok.state_dict()[k], ref[k]) for k in ref)
    cfg = json.loads((out / "dynamics_aux_phase6" / "config.json").read_text())
    assert cfg["d_model_dyn"] == 32 and cfg["variant"] == "dynamics_aux_phase6"


def test_readme_contents(arch):
    d = arch["out"] / "dynamics_aux_phase6"
    text = (d / "README.md").read_text()
    for needle in (
        "load_dynamics_checkpoint",
        "_orig_mod.",
        "eval-protocol-v1",
        "CC BY 4.0",
        "see nicklashansen/dreamer4",
        "Agent-token isolation",
        "Single training seed",
        "Probe convention",
        "InverseDynamicsHead",
        "λ = 0.05",
        "leaky",
        "| Model | Features | Held-out-task R² (H=1) |",
        "Quality bars",
        "Controls",
        "Degeneracy",
    ):
        assert needle in text, needle
    # file list with sha256 of every other file
    for f in sorted(d.iterdir()):
        if f.name != "README.md":
            assert f"| {f.name} | {f.stat().st_size} | `{sha256_file(f)}` |" in text, f.name
    # split files with their sha256 and frame counts from the manifest
    assert f"| train.json | `{sha256_file(arch['splits'] / 'train.json')}` | 3 | 2 | 150 |" in text
    # only this run's rows (plus references) in its result tables
    assert "dynamics_phase3 | wm_agent" not in text and "dynamics_aux_phase6 | wm_agent" in text
    assert "−0.039" in text
    # issue 27: the method-power rows and case sentence of this run only
    assert "#### Method power" in text and "dynamics_aux_phase6: " in text and "dynamics_phase3: " not in text
    tok = (arch["out"] / "tokenizer_demo" / "README.md").read_text()
    assert "load_tokenizer_checkpoint" in tok and "26.10" in tok and "25.18" in tok


def test_metrics_json_gathers_this_runs_records(arch):
    m = json.loads((arch["out"] / "dynamics_phase3" / "metrics.json").read_text())
    assert m["protocol"] == "eval-protocol-v1" and m["run"] == "dynamics_phase3"
    assert m["probe"] and all(r["variant"] == "dynamics_phase3" for r in m["probe"].values())
    assert m["rollout"]["variant"] == "dynamics_phase3"
    t = json.loads((arch["out"] / "tokenizer_demo" / "metrics.json").read_text())
    assert t["tokenizer_eval"]["run"] == "tokenizer_demo"


def test_index_readme_has_tables_and_plots(arch):
    text = (arch["out"] / "README.md").read_text()
    assert "| Model | Features | Held-out-task R² (H=1)" in text and "![" in text and "plots/probe_r2.png" in text
    assert "not run: " in text and "[dynamics_phase3/README.md](dynamics_phase3/README.md)" in text
    for n in T.PLOT_NAMES:
        got = (arch["out"] / "plots" / f"{n}.png").read_bytes()
        assert got == (arch["tables_dir"] / "plots" / f"{n}.png").read_bytes()


def test_wrong_checkpoint_hash_is_refused(arch, tmp_path):
    res = arch["res"]
    d = [x for x in res["train_dirs"] if x.name == "dynamics_phase3"][0]
    ckj = json.loads((d / "checkpoint.json").read_text())
    bad = tmp_path / "train" / "dynamics_phase3"
    bad.mkdir(parents=True)
    (bad / "metrics.jsonl").write_text((d / "metrics.jsonl").read_text())
    write_json(bad / "checkpoint.json", {**ckj, "sha256": "0" * 64})
    dirs = [bad if x.name == "dynamics_phase3" else x for x in res["train_dirs"]]
    with pytest.raises(ValueError, match="sha256 differs"):
        A.make_archive(
            res["config"], tmp_path / "out", res["probe_summaries"], res["rollout"], res["tokenizer_eval"], dirs
        )


def test_cli(arch, tmp_path):
    res = arch["res"]
    out = tmp_path / "archive"
    cmd = [
        sys.executable,
        str(REPO / "workflow_scripts" / "make_archive.py"),
        "--tables-config",
        json.dumps(res["config"]),
        "--probe-summaries",
        *map(str, res["probe_summaries"]),
        "--rollout",
        *map(str, res["rollout"]),
        "--tokenizer-eval",
        *map(str, res["tokenizer_eval"]),
        "--train-dirs",
        *map(str, res["train_dirs"]),
        "--tables-dir",
        str(arch["tables_dir"]),
        "--rollout-dirs",
        str(arch["root"] / "rollout" / "dynamics_aux_phase6"),
        "--splits-dir",
        str(arch["splits"]),
        "--out-dir",
        str(out),
    ]
    p = subprocess.run(cmd, cwd=arch["root"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (out / "dynamics_aux_phase6" / "rollout.gif").exists() and (out / "README.md").exists()
    card = (out / "dynamics_phase3" / "README.md").read_text()
    assert "load_dynamics_checkpoint" in card and "| train.json |" in card
    cmd_bad = cmd[:-1] + [str(tmp_path / "out2")]
    i = cmd_bad.index("--train-dirs")
    cmd_bad[i + 1] = str(tmp_path / "nowhere")
    p = subprocess.run(cmd_bad, cwd=arch["root"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "nowhere" in p.stderr
