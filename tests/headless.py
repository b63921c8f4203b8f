"""A real headless Chromium driven over the DevTools protocol on a pipe (no network, no extra packages).

`Browser` starts Debian's chromium-headless-shell (or chromium) with --remote-debugging-pipe: commands
are JSON messages on fd 3, replies and events come back on fd 4, each terminated by a NUL byte. It
records every console message with its level, uncaught exceptions and log entries, so a test can fail
on any console error (stderr logging prints every level as INFO, so it cannot tell them apart).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser")


def find_browser() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.timeout = timeout
        self.width, self.height = width, height
        cmd_r, self._cmd_w = os.pipe()  # we write commands -> chromium reads fd 3
        self._evt_r, evt_w = os.pipe()  # chromium writes fd 4 -> we read
        self.profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"cdp-profile-{os.getpid()}-{time.time_ns()}"

        def _fds():  # in the child: the pipe ends on fds 3 and 4, inheritable across exec
            a, b = os.dup(cmd_r), os.dup(evt_w)  # fresh numbers first: the originals may be 3 or 4
            os.dup2(a, 3)
            os.dup2(b, 4)
            for fd in (3, 4):
                os.set_inheritable(fd, True)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=_fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(cmd_r)
        os.close(evt_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    # -- protocol -------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict | None:
        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._evt_r], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._evt_r, 1 << 20)
            if not chunk:
                raise RuntimeError(
                    "chromium closed the DevTools pipe: "
                    + (self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else "")
                )
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                raise TimeoutError(f"no reply to {method} within {self.timeout} s")
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def pump(self, seconds: float) -> None:
        """Collect events for `seconds`."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            msg = self._read_message(deadline)
            if msg is not None:
                self.events.append(msg)

    def wait_event(self, method: str, seconds: float) -> bool:
        deadline = time.time() + seconds
        if any(e.get("method") == method for e in self.events):
            return True
        while time.time() < deadline:
            msg = self._read_message(deadline)
            if msg is None:
                break
            self.events.append(msg)
            if msg.get("method") == method:
                return True
        return False

    # -- page -----------------------------------------------------------------------------------
    def open(self, url: str, settle_s: float = 2.0) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        for m in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.send(m)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.navigate", {"url": url})
        if not self.wait_event("Page.loadEventFired", self.timeout):
            raise TimeoutError(f"{url} did not load within {self.timeout} s")
        self.pump(settle_s)

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate failed: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def screenshot(self, path: str | os.PathLike) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def console_messages(self) -> list[tuple[str, str]]:
        """(level, text) of every console call, uncaught exception and log entry so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                out.append((p.get("type", "log"), text))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(("error", (d.get("exception") or {}).get("description") or d.get("text", "exception")))
            elif m == "Log.entryAdded":
                entry = p.get("entry", {})
                out.append((entry.get("level", "info"), f"{entry.get('source')}: {entry.get('text')}"))
        return out

    def errors(self) -> list[str]:
        return [t for level, t in self.console_messages() if level in ("error", "assert")]

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._evt_r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
