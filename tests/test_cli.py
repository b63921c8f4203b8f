"""cli.run_main: bad input exits 2 with one line and no traceback; a bug keeps its traceback and exits 1."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dreamer4_libero.cli import USER_ERRORS, ConfigError, SetupError, run_main


def _run(tmp_path, body: str) -> subprocess.CompletedProcess:
    """A script file whose main() runs `body`, started through run_main as the workflow scripts are."""
    code = textwrap.dedent("""
        from dreamer4_libero.cli import ConfigError, run_main

        def main():
        {body}

        run_main(main, "toy")
    """).format(body=textwrap.indent(textwrap.dedent(body), "    "))
    script = tmp_path / "toy.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)


def test_user_errors_are_value_file_and_setup_errors_and_not_key_error():
    assert set(USER_ERRORS) == {ValueError, FileNotFoundError, SetupError}
    assert issubclass(ConfigError, ValueError) and not issubclass(ConfigError, KeyError)


@pytest.mark.parametrize(
    "raise_line, message",
    [
        (
            "raise ConfigError(\"tokenizer.init_scale names unknown parameters ['nope']\")",
            "tokenizer.init_scale names unknown parameters ['nope']",
        ),
        ("raise ValueError('manifest.json: key \\'files\\' missing')", "manifest.json: key 'files' missing"),
        (
            "raise FileNotFoundError('tokenizer checkpoint not found: /nowhere.pt')",
            "tokenizer checkpoint not found: /nowhere.pt",
        ),
    ],
)
def test_a_user_error_exits_2_with_one_line_and_no_traceback(tmp_path, raise_line, message):
    r = _run(tmp_path, raise_line)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "ERROR" in ln]
    assert errors == [f"[toy] ERROR: {message}"]
    assert "[toy] finished in" in r.stderr and "(exit 2)" in r.stderr


def test_a_key_error_is_a_bug_exits_1_with_its_traceback(tmp_path):
    r = _run(
        tmp_path,
        """
        record = {"step": 3}
        return record["steps"]
    """,
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback (most recent call last)" in r.stderr
    assert 'return record["steps"]' in r.stderr and r.stderr.rstrip().endswith("KeyError: 'steps'")
    assert "ERROR" not in r.stderr


def test_in_process_a_key_error_propagates_and_a_user_error_becomes_exit_2(capsys):
    with pytest.raises(KeyError, match="steps"):
        run_main(lambda: {}["steps"], "toy")

    def bad_config():
        raise ConfigError("rollout.n_strips must be >= 1, got 0")

    with pytest.raises(SystemExit) as e:
        run_main(bad_config, "toy")
    assert e.value.code == 2
    assert "[toy] ERROR: rollout.n_strips must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_main(lambda: None, "toy")
    assert e.value.code == 0
