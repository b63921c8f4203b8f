"""reporting/compare.py: the before/after check of a refactor that must change no output byte."""

from __future__ import annotations

import json
import subprocess
import sys

from dreamer4_libero.reporting.compare import compare_trees, report_lines

from conftest import REPO, venv_env


def _tree(root, rollout_step=7, extra=False):
    (root / "tables").mkdir(parents=True)
    (root / "tables" / "table1_probe.md").write_text("| a | b |\n")
    (root / "rollout" / "v").mkdir(parents=True)
    (root / "rollout" / "v" / "rollout.json").write_text(json.dumps({"step": rollout_step, "sets": {"x": [1, 2]}}))
    (root / "logs.txt").write_text("not compared")
    if extra:
        (root / "tables" / "power.md").write_text("new")


def test_identical_trees_and_a_json_difference_named_by_key(tmp_path):
    _tree(tmp_path / "a")
    _tree(tmp_path / "b")
    res = compare_trees(tmp_path / "a", tmp_path / "b")
    assert res["same"] == ["rollout/v/rollout.json", "tables/table1_probe.md"] and not res["differs"]
    _tree(tmp_path / "c", rollout_step=8, extra=True)
    res = compare_trees(tmp_path / "a", tmp_path / "c")
    assert res["differs"] == {"rollout/v/rollout.json": ["step: 7 -> 8"]} and res["only_b"] == ["tables/power.md"]
    assert report_lines(res)[0] == (
        "3 files: 1 byte-identical, 0 differ only in provenance, 1 differ, 0 only in A, 1 only in B"
    )


def test_a_different_code_version_alone_is_provenance_not_content(tmp_path):
    for name, code, step in (("a", "abc", 7), ("b", "def", 7), ("c", "def", 8)):
        d = tmp_path / name / "probe" / "v"
        d.mkdir(parents=True)
        (d / "r.json").write_text(json.dumps({"r2": 0.1, "step": step, "versions": {"code": code, "torch": "2"}}))
    res = compare_trees(tmp_path / "a", tmp_path / "b")
    assert res["provenance_only"] == {"probe/v/r.json": ["versions.code"]} and not res["differs"]
    assert report_lines(res)[1].startswith("what differs in those: versions.code")
    res = compare_trees(tmp_path / "a", tmp_path / "c")  # a content change is never hidden by a provenance change
    assert res["differs"] == {"probe/v/r.json": ["step: 7 -> 8", "versions.code: 'abc' -> 'def'"]}
    assert not res["provenance_only"]
    res = compare_trees(tmp_path / "a", tmp_path / "b", provenance=())
    assert res["differs"] == {"probe/v/r.json": ["versions.code: 'abc' -> 'def'"]}


def test_the_script_exits_1_on_a_difference(tmp_path):
    _tree(tmp_path / "a")
    _tree(tmp_path / "b")

    def run(x, y):
        return subprocess.run(
            [sys.executable, str(REPO / "workflow_scripts/compare_trees.py"), str(x), str(y)],
            capture_output=True,
            text=True,
            env=venv_env(),
        )

    assert run(tmp_path / "a", tmp_path / "b").returncode == 0
    (tmp_path / "b" / "tables" / "table1_probe.md").write_text("| a | c |\n")
    r = run(tmp_path / "a", tmp_path / "b")
    assert r.returncode == 1 and "DIFFERS tables/table1_probe.md" in r.stdout


def test_hashes_are_provenance_but_a_number_next_to_them_is_not(tmp_path):
    sha_a, sha_b = "a" * 64, "b" * 64

    def tree(name, sha, r2, ident):
        (tmp_path / name / "tables").mkdir(parents=True)
        (tmp_path / name / "tables" / "t.md").write_text(f"| r2 | {r2} |\n\n{sha}  results/probe/x.json\n")
        (tmp_path / name / "rollout" / "v").mkdir(parents=True)
        rec = {"checkpoint": f"/w/checkpoints/v/{ident}/step_0000010.pt", "checkpoint_sha256": sha, "psnr": 15.0}
        (tmp_path / name / "rollout" / "v" / "rollout.json").write_text(json.dumps(rec))

    tree("a", sha_a, "0.125", "0123456789abcdef")
    tree("b", sha_b, "0.125", "fedcba9876543210")
    tree("c", sha_b, "0.126", "0123456789abcdef")
    res = compare_trees(tmp_path / "a", tmp_path / "b")
    assert res["provenance_only"] == {
        "rollout/v/rollout.json": ["checkpoint", "checkpoint_sha256"],
        "tables/t.md": ["hashes in the text"],
    }
    assert not res["differs"] and not res["same"]
    res = compare_trees(tmp_path / "a", tmp_path / "c")
    assert list(res["differs"]) == ["tables/t.md"] and list(res["provenance_only"]) == ["rollout/v/rollout.json"]
    # the identity folder is only a placeholder inside a checkpoint path, not any 16-hex string
    (tmp_path / "c" / "rollout" / "v" / "rollout.json").write_text(
        json.dumps(
            {
                "checkpoint": "/w/checkpoints/v/0123456789abcdef/step_0000011.pt",
                "checkpoint_sha256": sha_a,
                "psnr": 15.0,
            }
        )
    )
    res = compare_trees(tmp_path / "a", tmp_path / "c")
    ck = "/w/checkpoints/v/0123456789abcdef/step_00000"
    assert res["differs"]["rollout/v/rollout.json"] == [f"checkpoint: '{ck}10.pt' -> '{ck}11.pt'"]
