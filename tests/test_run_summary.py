"""The demo's closing console summary (reporting/run_summary.py, printed by workflow_scripts/stage_times.py)."""

from __future__ import annotations

import subprocess
import sys

from dreamer4_libero.fileio import write_json
from dreamer4_libero.reporting.run_summary import output_lines, stage_time_lines

from conftest import REPO, venv_env


def _bench(root, rule, job, s):
    (root / rule).mkdir(parents=True, exist_ok=True)
    (root / rule / f"{job}.tsv").write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{s}\t0:00:01\t100.0\t{s / 2}\n")


def test_stage_times_sum_jobs_per_stage_in_dag_order(tmp_path):
    _bench(tmp_path, "probe", "dyn_a", 10.0)
    _bench(tmp_path, "rollout_eval", "dyn_a", 5.5)
    _bench(tmp_path, "preprocess", "preprocess", 2.0)
    lines = stage_time_lines(tmp_path)
    stages = lines[lines.index("time per stage (s):") + 1 :]
    assert [ln.split()[0] for ln in stages] == ["data", "evaluation", "total"]
    assert stages[1].split()[-1] == "15.5" and stages[2].split()[-1] == "17.5"


def test_outputs_give_the_rollout_ceiling_of_the_encoding_the_run_uses(tmp_path):
    rows = {
        k: {"psnr_frame_mean": v, "psnr_pooled": v - 1}
        for k, v in (
            ("model", 20.0),
            ("copy_last_context", 18.0),
            ("tokenizer_ceiling", 19.0),
            ("tokenizer_ceiling_chunked", 22.5),
            ("action_shuffled", 19.5),
        )
    }
    write_json(
        tmp_path / "rollout" / "dyn_a" / "rollout.json",
        {"sets": {"test_ood": {"rows": rows, "tokenizer_chunk": 2, "ceiling_chunk": 2}}},
    )
    write_json(tmp_path / "train" / "dyn_b" / "not_run.json", {"reason": "disabled"})
    lines = output_lines(tmp_path)
    roll = [ln for ln in lines if ln.startswith("  rollout:")]
    assert len(roll) == 1 and "ceiling (2-frame chunks) 22.50" in roll[0] and "copy-last 18.00" in roll[0]
    assert "  NOT RUN: dyn_b: disabled" in lines


def test_the_script_prints_both_parts(tmp_path):
    _bench(tmp_path / "b", "tables", "tables", 1.0)
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts/stage_times.py"),
            "--benchmarks",
            str(tmp_path / "b"),
            "--results",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=venv_env(),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("time per rule (s):\n  tables/tables") and "\noutputs:\n" in r.stdout
