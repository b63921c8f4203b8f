"""Run identity (training/identity.py): which checkpoint folder a training run resumes from."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import snakemake_cmd, trainer_cmd, venv_env

from dreamer4_libero.config import demo_config
from dreamer4_libero.data.loader import episode_list
from dreamer4_libero.training.identity import identity_dir, run_identity, training_data_fingerprint


def _ident(section, **kw):
    args = {
        "world_size": 1,
        "data_fingerprint": "d" * 64,
        "checkpoints": {"tokenizer": "t" * 64},
        "tokenizer_choice": "study tokenizer",
    }
    args.update(kw)
    return run_identity(section, **args)[0]


def test_identity_ignores_volatile_keys_and_tracks_what_is_learned():
    run = dict(demo_config()["tokenizer"])
    base = _ident(run)
    # extended or resubmitted runs resume: steps, checkpoint cadence, logging, resources, workers
    for k, v in (
        ("max_steps", 99999),
        ("save_every", 7),
        ("log_every", 3),
        ("gpus", 8),
        ("mem_mb", 123),
        ("runtime_min", 5),
        ("num_workers", 9),
        ("retries", 5),
        ("deadline_margin_s", 1),
    ):
        assert _ident({**run, k: v}) == base, k
    # a changed model, objective, optimizer, data, tokenizer or tag starts afresh
    assert _ident({**run, "model": {**run["model"], "d_model": 96}}) != base
    assert _ident({**run, "lr": 2e-3}) != base
    assert _ident({**run, "seq_len": 4}) != base
    assert _ident({**run, "fresh_tag": "again"}) != base
    assert _ident(run, world_size=2) != base  # global batch
    assert _ident(run, data_fingerprint="e" * 64) != base
    assert _ident(run, checkpoints={"tokenizer": "u" * 64}) != base


def test_identity_dir_writes_and_checks_identity_json(tmp_path):
    h, ident = run_identity({"batch_size": 2, "lr": 1.0}, world_size=1, data_fingerprint="x")
    d = identity_dir(tmp_path, "run", h, ident)
    assert d == tmp_path / "run" / h[:16]
    assert json.loads((d / "identity.json").read_text())["sha256"] == h
    assert identity_dir(tmp_path, "run", h, ident) == d  # reused
    (d / "identity.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ValueError, match="identity"):
        identity_dir(tmp_path, "run", h, ident)


def test_data_fingerprint_sees_regenerated_data(tmp_path, preprocessed):
    from dreamer4_libero.data.preprocess import preprocess
    from dreamer4_libero.data.synthetic import demo_task_ids, generate

    eps = episode_list(preprocessed / "splits" / "train.json")
    fp = training_data_fingerprint(preprocessed / "manifest.json", eps)
    assert fp == training_data_fingerprint(preprocessed / "manifest.json", list(reversed(eps)))  # order-free
    assert fp != training_data_fingerprint(preprocessed / "manifest.json", eps[:-1])
    # the same names (the first task of each suite, its first 2 demos), regenerated with another seed: new data
    s = demo_config(test=True)["synthetic"]
    root = tmp_path / "libero"
    generate(
        root,
        demo_task_ids(per_suite=1),
        n_demos=2,
        len_range=(s["len_min"], s["len_max"]),
        seed=s["seed"] + 1,
        progress=False,
    )
    out = tmp_path / "pre"
    preprocess(root, out, workers=1, min_demo_len=32, progress=False)
    same_names = [
        e
        for e in eps
        if e
        in {
            f"{f['task_id']}/{d['name']}"
            for f in json.loads((out / "manifest.json").read_text())["files"]
            for d in f["demos"]
        }
    ]
    assert same_names
    assert training_data_fingerprint(out / "manifest.json", same_names) != training_data_fingerprint(
        preprocessed / "manifest.json", same_names
    )
    with pytest.raises(ValueError, match="not in the manifest"):
        training_data_fingerprint(preprocessed / "manifest.json", ["libero_10/nope/demo_0"])


def _train(trainer_cli, pre, t, root, out):
    cmd = trainer_cmd(
        "train_tokenizer.py",
        "--tokenizer",
        t,
        pre,
        "--resolution",
        "32",
        "--ckpt-root",
        str(root),
        "--out-dir",
        str(out),
    )
    r = trainer_cli.run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


def test_trainer_resumes_inside_its_identity_folder(trainer_cli, preprocessed, tmp_path):
    t = demo_config()["tokenizer"]
    t.update(
        model={**t["model"], "d_model": 32, "depth": 1, "n_latents": 4, "d_bottleneck": 8},
        seq_len=2,
        batch_size=2,
        max_steps=2,
        save_every=2,
        log_every=1,
        num_workers=0,
        lpips_weight=0.0,
    )
    root = tmp_path / "ck"
    out1 = _train(trainer_cli, preprocessed, t, root, tmp_path / "o1")
    dirs = sorted((root / t["run_name"]).iterdir())
    assert len(dirs) == 1 and (dirs[0] / "identity.json").exists() and "fresh start" in out1
    out2 = _train(trainer_cli, preprocessed, {**t, "max_steps": 4}, root, tmp_path / "o2")  # extended: resumes
    assert "RESUMED" in out2 and "at step 2" in out2
    assert sorted((root / t["run_name"]).iterdir()) == dirs
    before = sorted(p.name for p in dirs[0].iterdir())
    out3 = _train(trainer_cli, preprocessed, {**t, "max_steps": 4, "fresh_tag": "x"}, root, tmp_path / "o3")  # fresh
    assert "fresh start" in out3
    new = [d for d in (root / t["run_name"]).iterdir() if d not in dirs]
    assert len(new) == 1 and sorted(p.name for p in dirs[0].iterdir()) == before  # old folder untouched
    attempts = [json.loads(x) for x in (dirs[0] / "attempts.jsonl").read_text().splitlines()]
    assert [a["start_step"] for a in attempts if a.get("event") == "start"] == [0, 2]


# -- the workflow: which training jobs rerun, and which checkpoint folder each one resumes from -------------

_RUNS = ("dynamics_phase3", "dynamics_aux_phase6")
_TINY = {
    "tokenizer": {"gpus": 0, "max_steps": 4, "save_every": 2, "log_every": 1, "runtime_min": 30},
    "dynamics": {
        "defaults": {
            "gpus": 0,
            "max_steps": 4,
            "save_every": 2,
            "log_every": 1,
            "runtime_min": 30,
            "model": {"d_model": 32, "depth": 1, "n_heads": 2},
        },
        "variants": {n: {"enabled": True, "max_steps": 4} for n in _RUNS},
    },
}


def _snap(folder):
    """name -> (size, mtime_ns) of every file in one checkpoint folder."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


class _Study:
    """A copy of the repository running the ci_slurm-sized study through profiles/local, one config layer
    per step on top of config/demo.yaml + config/ci_slurm.yaml."""

    def __init__(self, work):
        self.work = work
        self.layers = [_TINY]
        self.targets = [f"results/train/{n}/checkpoint.json" for n in _RUNS]

    def run(self, *extra, dry=False):
        files = ["config/demo.yaml", "config/ci_slurm.yaml"]
        for i, layer in enumerate(self.layers):
            (self.work / f"layer{i}.yaml").write_text(yaml.safe_dump(layer))
            files.append(f"layer{i}.yaml")
        cmd = snakemake_cmd(
            *self.targets,
            "--profile",
            "profiles/local",
            "--cores",
            "2",
            *(["-n"] if dry else []),
            *extra,
            "--configfile",
            *files,
        )
        r = subprocess.run(cmd, cwd=self.work, env=venv_env(), capture_output=True, text=True)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        return r.stdout + r.stderr

    def folders(self, run):
        d = self.work / "checkpoints" / run
        return sorted(p for p in d.iterdir() if p.is_dir()) if d.exists() else []

    def log(self, run):
        name = "train_tokenizer" if run.startswith("tokenizer") else "train_dynamics"
        return (self.work / "logs" / name / f"{run}.log").read_text()

    def current(self, run):
        return Path(json.loads((self.work / "results" / "train" / run / "checkpoint.json").read_text())["path"]).parent


def test_workflow_checkpoint_identity(dag_repo):
    s = _Study(dag_repo)
    tok = "tokenizer_ci"
    s.run()
    a0, b0 = s.current(_RUNS[0]), s.current(_RUNS[1])
    assert all("fresh start at step 0" in s.log(n) for n in _RUNS)
    assert "Nothing to be done" in s.run(dry=True)

    # an extended run (more max_steps) resumes in its folder; the other run is not touched
    snap_a = _snap(a0)
    s.layers.append({"dynamics": {"variants": {_RUNS[1]: {"max_steps": 6}}}})
    s.run()
    assert s.current(_RUNS[1]) == b0 and re.search(r"RESUMED from \S+ at step 4", s.log(_RUNS[1]))
    assert _snap(a0) == snap_a

    # a changed model width starts at step 0 in a new folder; the other run's folder is untouched
    snap_b = _snap(b0)
    s.layers.append({"dynamics": {"variants": {_RUNS[0]: {"model": {"d_model": 48}}}}})
    s.run()
    a1 = s.current(_RUNS[0])
    assert a1 != a0 and s.folders(_RUNS[0]) == sorted([a0, a1]) and "fresh start at step 0" in s.log(_RUNS[0])
    assert _snap(b0) == snap_b and _snap(a0) == snap_a

    # a new fresh_tag for one run: step 0 in a new folder, only that run retrained ...
    snap_a1 = _snap(a1)
    s.layers.append({"dynamics": {"variants": {_RUNS[1]: {"fresh_tag": "again"}}}})
    out = s.run()
    assert "train_dynamics" in out and out.count("rule train_dynamics:") == 1
    b1 = s.current(_RUNS[1])
    assert b1 != b0 and s.folders(_RUNS[1]) == sorted([b0, b1]) and "fresh start at step 0" in s.log(_RUNS[1])
    assert _snap(a1) == snap_a1 and _snap(b0) == snap_b
    # ... a forced retry of the tagged run resumes inside its new folder, and then nothing is planned
    s.run("--forcerun", f"results/train/{_RUNS[1]}/checkpoint.json")
    assert s.current(_RUNS[1]) == b1 and re.search(r"RESUMED from \S+ at step 6", s.log(_RUNS[1]))
    assert "Nothing to be done" in s.run(dry=True)

    # a retrained tokenizer (its own fresh_tag): a new tokenizer folder, and both world models start afresh
    t0 = s.current(tok)
    s.layers.append({"tokenizer": {"fresh_tag": "again"}})
    s.run()
    assert s.current(tok) != t0 and "fresh start at step 0" in s.log(tok)
    for run, old in zip(_RUNS, (a1, b1)):
        assert s.current(run) != old and len(s.folders(run)) == 3 and "fresh start at step 0" in s.log(run)

    # synthetic data regenerated with another seed (same episode names): new folders for every run
    before = {run: s.current(run) for run in (tok, *_RUNS)}
    s.layers.append({"synthetic": {"seed": 1}})
    s.run()
    for run, old in before.items():
        assert s.current(run) != old and "fresh start at step 0" in s.log(run), run
    assert "Nothing to be done" in s.run(dry=True)


def test_tokenizer_chunk_default_keeps_the_identity_of_existing_variants():
    from dreamer4_libero.config import dynamics_variants, load_config

    variants = dynamics_variants(load_config())
    assert variants and all(v["tokenizer_chunk"] is None for v in variants.values())  # the published default
    for name, v in variants.items():
        before = {k: x for k, x in v.items() if k != "tokenizer_chunk"}  # the section before the key
        assert _ident(v) == _ident(before), name
    v = next(iter(variants.values()))
    chunked = {_ident({**v, "tokenizer_chunk": c}) for c in (2, 16, "train")}
    assert len(chunked) == 3 and _ident(v) not in chunked  # set: a new run


def test_tokenizer_chunk_config_key_is_validated():
    from dreamer4_libero.config import ConfigError, dynamics_variants, load_config

    def variant(value):
        cfg = load_config(overrides={"dynamics": {"variants": {"dynamics_phase3": {"tokenizer_chunk": value}}}})
        return dynamics_variants(cfg)["dynamics_phase3"]["tokenizer_chunk"]

    assert variant(16) == 16 and variant("train") == "train"
    for bad in ("whole", 0):
        with pytest.raises(ConfigError, match="dynamics_phase3.tokenizer_chunk"):
            variant(bad)


def test_lr_schedule_constant_keeps_a_dynamics_runs_folder_but_not_a_tokenizers():
    """lr_schedule came to the dynamics runs after they existed: at `constant` it is left out of their identity
    (the DynamicsTask's neutral_defaults), so finished runs keep their checkpoint folder; cosine is a new run.
    The tokenizer had it from the start, so its identity keeps it."""
    from dreamer4_libero.config import dynamics_variants

    run = {k: v for k, v in dynamics_variants(demo_config())["dynamics_phase3"].items() if k != "lr_schedule"}
    neutral = {"neutral_defaults": {"lr_schedule": "constant"}}
    before = _ident(run, **neutral)  # a variant as it was before the key existed
    assert _ident({**run, "lr_schedule": "constant"}, **neutral) == before
    assert _ident({**run, "lr_schedule": "cosine"}, **neutral) != before
    tok = dict(demo_config()["tokenizer"], lr_schedule="constant")
    assert _ident(tok) != _ident({k: v for k, v in tok.items() if k != "lr_schedule"})
