"""Fetching files (data/fetch.py, `make fetch-dmcontrol`) from a real HTTP server on 127.0.0.1: files land
with their sha256 and a record; HTTP errors, checksum mismatches and broken-off downloads are clear errors
that leave no file; a second run downloads nothing."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import venv_env
from dreamer4_libero.data import dmcontrol_release as rel
from dreamer4_libero.data.fetch import FetchError, RemoteFile, fetch_files

REPO = Path(__file__).resolve().parents[1]


class _Server:
    """http.server in a thread: `files` name -> bytes served at /<name>; `truncate` names are announced
    with their full Content-Length but cut off half-way; every GET path is logged in `requests`."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/").split("/")[-1]
                srv.requests.append(self.path)
                if name not in srv.files:
                    self.send_error(404, "File not found")
                    return
                data = srv.files[name]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if name in srv.truncate else data)
                if name in srv.truncate:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with _Server() as s:
        # two small stand-ins for the release files (3 MiB + 1 byte, 1 MiB - 1: several read chunks)
        s.files = {rel.TOKENIZER_FILE: os.urandom(3 * 2**20 + 1), rel.DYNAMICS_FILE: os.urandom(2**20 - 1)}
        yield s


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _make_fetch(dest: Path, *args: str, env_url: str | None = None) -> subprocess.CompletedProcess:
    env = venv_env()
    if env_url:
        env[rel.BASE_URL_ENV] = env_url
    fetch_args = " ".join(["--dest", str(dest), "--progress", "false", *args])
    return subprocess.run(
        ["make", "-s", "fetch-dmcontrol", f"PY={sys.executable}", f"FETCH_ARGS={fetch_args}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_fetch_dmcontrol_writes_the_files_with_their_sha256_and_a_second_run_downloads_nothing(tmp_path, server):
    dest = tmp_path / "assets" / "dmcontrol"
    r = _make_fetch(dest, env_url=server.url)  # the base URL from $D4L_DMCONTROL_URL
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(server.requests) == sorted(f"/{n}" for n in server.files)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*server.files, rel.RECORD_FILE])  # no temp files
    rec = json.loads((dest / rel.RECORD_FILE).read_text())
    assert rec["format"] == "d4l-fetch-record-v1" and rel.HF_REPO in rec["source"]
    for name, data in server.files.items():
        assert (dest / name).read_bytes() == data
        e = rec["files"][name]
        assert e["sha256"] == _sha(data) and e["size"] == len(data) and e["url"] == f"{server.url}/{name}"
        assert e["fetched_at"].endswith("Z") and "recorded" in e["verified_against"]
    out = json.loads(r.stdout)
    assert out["files"][rel.TOKENIZER_FILE]["sha256"] == _sha(server.files[rel.TOKENIZER_FILE])
    assert "(recorded)" in r.stderr

    # again: both verified against the record, nothing requested, the record unchanged
    before = (dest / rel.RECORD_FILE).read_text()
    server.requests.clear()
    r = _make_fetch(dest, "--base-url", server.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert server.requests == [] and r.stderr.count("skipped") == 2
    assert (dest / rel.RECORD_FILE).read_text() == before

    # a damaged file is fetched again (once), and verified against the recorded sha256
    (dest / rel.DYNAMICS_FILE).write_bytes(b"damaged")
    r = _make_fetch(dest, "--base-url", server.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert server.requests == [f"/{rel.DYNAMICS_FILE}"]
    assert (dest / rel.DYNAMICS_FILE).read_bytes() == server.files[rel.DYNAMICS_FILE]
    assert "verified against the sha256 recorded by the first fetch" in r.stderr


def test_http_404_is_a_clear_error_naming_the_url_and_leaves_no_file(tmp_path, server):
    dest = tmp_path / "d"
    del server.files[rel.DYNAMICS_FILE]
    r = _make_fetch(dest, "--base-url", server.url + "/sub")
    assert r.returncode == 2
    url = f"{server.url}/sub/{rel.DYNAMICS_FILE}"
    assert f"ERROR: {rel.DYNAMICS_FILE}: HTTP error 404 (File not found) for {url}" in r.stderr
    assert "Traceback" not in r.stderr
    # the tokenizer arrived (and is recorded); of the dynamics file nothing, not even a temp file
    assert sorted(p.name for p in dest.iterdir()) == [rel.RECORD_FILE, rel.TOKENIZER_FILE]
    assert list(json.loads((dest / rel.RECORD_FILE).read_text())["files"]) == [rel.TOKENIZER_FILE]


def test_unreachable_server_says_so(tmp_path):
    with _Server() as s:
        url = s.url
    with pytest.raises(FetchError, match=r"cannot reach http://127\.0\.0\.1:\d+/a\.pt: .*--from DIR"):
        fetch_files([RemoteFile("a.pt", "a.pt")], tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_names_file_expected_and_got_and_leaves_no_file(tmp_path, server):
    data = server.files[rel.TOKENIZER_FILE]
    wrong = "0" * 64
    with pytest.raises(FetchError) as exc:
        fetch_files(
            [RemoteFile(rel.TOKENIZER_FILE, rel.TOKENIZER_FILE, wrong)], tmp_path, base_url=server.url, progress=False
        )
    msg = str(exc.value)
    assert msg.startswith(f"{rel.TOKENIZER_FILE}: sha256 mismatch") and f"expected {wrong}" in msg
    assert f"got {_sha(data)}" in msg and f"{server.url}/{rel.TOKENIZER_FILE}" in msg
    assert list(tmp_path.iterdir()) == []
    # the known sha256 right: fetched and recorded as verified against it
    rec = fetch_files(
        [RemoteFile(rel.TOKENIZER_FILE, rel.TOKENIZER_FILE, _sha(data))], tmp_path, base_url=server.url, progress=False
    )
    assert rec["files"][rel.TOKENIZER_FILE]["verified_against"] == "known sha256"


def test_a_file_that_changed_upstream_is_refused_against_the_record(tmp_path, server):
    files = [RemoteFile(rel.DYNAMICS_FILE, rel.DYNAMICS_FILE)]
    first = fetch_files(files, tmp_path, base_url=server.url, progress=False)["files"][rel.DYNAMICS_FILE]["sha256"]
    (tmp_path / rel.DYNAMICS_FILE).unlink()
    server.files[rel.DYNAMICS_FILE] = b"a different release"
    with pytest.raises(
        FetchError, match=f"{rel.DYNAMICS_FILE}: sha256 mismatch .*expected {first}, got {_sha(b'a different release')}"
    ):
        fetch_files(files, tmp_path, base_url=server.url, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fetch_record.json"]


def test_a_download_that_breaks_off_leaves_no_file(tmp_path, server):
    server.truncate.add(rel.TOKENIZER_FILE)
    with pytest.raises(
        FetchError,
        match=f"{rel.TOKENIZER_FILE}: download from {server.url}/{rel.TOKENIZER_FILE} (broke off|ended) after",
    ):
        fetch_files([RemoteFile(rel.TOKENIZER_FILE, rel.TOKENIZER_FILE)], tmp_path, base_url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_local_copy_with_from_dir(tmp_path, server):
    src = tmp_path / "copied_in"
    src.mkdir()
    for name, data in server.files.items():
        (src / name).write_bytes(data)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f".{rel.TOKENIZER_FILE}.abc123.tmp.part").write_bytes(b"left by a killed fetch")
    r = _make_fetch(tmp_path / "d", "--from", str(src))
    assert r.returncode == 0, r.stdout + r.stderr
    assert server.requests == [] and "removing the temp file of an interrupted fetch" in r.stderr
    rec = json.loads((tmp_path / "d" / rel.RECORD_FILE).read_text())
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted([*server.files, rel.RECORD_FILE])
    for name, data in server.files.items():
        assert rec["files"][name]["sha256"] == _sha(data) and rec["files"][name]["copied_from"] == str(src / name)
    (src / rel.DYNAMICS_FILE).unlink()
    missing = src / rel.DYNAMICS_FILE
    with pytest.raises(FetchError, match=f"{rel.DYNAMICS_FILE}: not found in the local copy: {missing}"):
        fetch_files(rel.release_files(), tmp_path / "e", from_dir=src, progress=False)
    assert not (tmp_path / "e" / rel.DYNAMICS_FILE).exists()
