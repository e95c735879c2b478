"""Debian's Firefox ESR for the browser tests, driven over WebDriver BiDi by puppeteer-core
(tests/firefox/driver.mjs, a Node process; Playwright cannot drive Debian's Firefox).

:class:`Firefox` is one browser; :meth:`Firefox.open` gives a :class:`FirefoxPage` (its own
browser context) whose ``evaluate(fn_source, arg)`` takes the same function sources as
Playwright's, so the probes of browser_support.py work on both browsers. Every call and every
wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .browser_support import ARTIFACTS, REPO

FIREFOX = os.environ.get("PARLEY_FIREFOX", "/usr/bin/firefox-esr")
DRIVER_DIR = REPO / "tests" / "firefox"
DRIVER = DRIVER_DIR / "driver.mjs"


def firefox_missing() -> str:
    """Why the Firefox tests cannot run here ("" when they can)."""
    if not Path(FIREFOX).exists():
        return f"{FIREFOX} is not installed (scripts/setup.sh test)"
    if shutil.which("node") is None:
        return "node is not installed (scripts/setup.sh test)"
    if not (DRIVER_DIR / "node_modules" / "puppeteer-core").is_dir():
        return "puppeteer-core is not installed: npm ci in tests/firefox (scripts/setup.sh test)"
    return ""


class DriverError(AssertionError):
    pass


class VirtualDisplay:
    """An Xvfb of our own (no TCP listener), for what headless Firefox cannot do: its
    getDisplayMedia() needs a screen to capture."""

    def __init__(self) -> None:
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
            pass_fds=(write,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write)
        number = b""
        deadline = time.monotonic() + 15
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read, 16)
            if not chunk:
                break
            number += chunk
        os.close(read)
        if not number.strip():
            self.close()
            raise RuntimeError("Xvfb did not start")
        self.display = f":{number.decode().strip()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Firefox:
    """One Firefox ESR and the Node process that drives it: headless, or on ``display``."""

    def __init__(self, display: str = "") -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"firefox-driver-{os.getpid()}-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            ["node", str(DRIVER)],
            cwd=DRIVER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PARLEY_FIREFOX": FIREFOX, "DISPLAY": display},
        )
        log.close()
        self._next = 0
        self._buffer = b""
        self.version = str(self._reply(0, timeout=60))

    def call(self, op: str, timeout: float = 40, **args: Any) -> Any:  # noqa: ASYNC109
        self._next += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": self._next, "op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()
        return self._reply(self._next, timeout)

    def _reply(self, want: int, timeout: float) -> Any:  # noqa: ASYNC109
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                reply = json.loads(line)
                if reply.get("id") == want:
                    if not reply["ok"]:
                        raise DriverError(reply["error"])
                    return reply["value"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise DriverError(f"the Firefox driver did not answer in {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise DriverError(f"the Firefox driver exited: {self.log_tail()}")
                self._buffer += chunk

    def open(self, url: str, init: str = "") -> FirefoxPage:
        """A new page; ``init`` runs in it before the page's own scripts."""
        return FirefoxPage(self, int(self.call("open", url=url, init=init)))

    def script_errors(self) -> list[str]:
        return list(self.call("errors"))

    def console(self) -> list[str]:
        """The pages' console messages since the previous call."""
        return list(self.call("logs"))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=15)
            except (DriverError, OSError):
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class FirefoxPage:
    def __init__(self, browser: Firefox, number: int) -> None:
        self.browser = browser
        self.number = number

    def evaluate(self, fn: str, arg: Any = None) -> Any:
        return self.browser.call("eval", page=self.number, fn=fn, arg=arg)

    def click(self, selector: str) -> None:
        self.browser.call("click", page=self.number, selector=selector)

    def fill(self, selector: str, text: str) -> None:
        self.browser.call("fill", page=self.number, selector=selector, text=text)

    def close(self) -> None:
        self.browser.call("close_page", page=self.number)

    def wait_for_timeout(self, ms: float) -> None:
        """Playwright's name for a pause between two polls (the page runs meanwhile)."""
        time.sleep(ms / 1000)

    def wait_for_function(self, fn: str, arg: Any = None, timeout: float = 30) -> Any:  # noqa: ASYNC109
        """Poll ``fn(arg)`` until it is truthy (every 50 ms, at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(fn, arg)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {fn} ({arg!r}): {value!r}")
