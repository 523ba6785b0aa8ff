"""Fixtures that start the real sidecar (node dist/src/cli.js serve --json).

`npm test` builds dist/ and installs the hook into .venv before pytest runs.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "dist" / "src" / "cli.js"


class Sidecar:
    """A running `noisescope serve --json` process and the NDJSON it printed."""

    def __init__(self, *args: str) -> None:
        if not CLI.exists():
            raise RuntimeError(f"{CLI} is missing: run `npm run build` (npm test does)")
        self.proc = subprocess.Popen(
            # No run log unless a test asks for one: tests never write to the user's data directory.
            ["node", str(CLI), "serve", "--host", "127.0.0.1", "--port", "0", "--json",
             *(() if "--log-dir" in args else ("--no-log",)), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        listening = self.wait_for(lambda e: e["type"] == "listening", timeout=30)
        self.address: str = listening["address"]

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            event = json.loads(line)  # every stdout line must be valid JSON
            with self._new:
                self.events.append(event)
                self._new.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["type"] == kind]

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new:
            while True:
                for event in self.events[seen:]:
                    if pred(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(
                        f"sidecar printed no matching event in {timeout}s "
                        f"(exit={self.proc.poll()}, stderr={self.stderr[-2000:]!r})"
                    )
                self._new.wait(min(left, 0.2))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sidecar() -> Iterator[Sidecar]:
    s = Sidecar()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def free_address() -> str:
    """An address where nothing listens (for the no-sidecar tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
