"""The production server, `gunicorn -c gunicorn.conf.py` (nginx in front), started on loopback
for a test and stopped after it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]  # the README's command


def server_env(checkpoint: str, folder: Path, **overrides: str) -> dict:
    """The settings of a test server: the test checkpoint, its own folders, 10 threads: 4
    waiting places for synchronous calls, 2 live sessions, 4 free; uploads of up to 50 MB."""
    return {
        "WHISPER_MODEL": checkpoint,
        "WHISPER_DATA_DIR": str(folder / "data"),
        "WHISPER_MODEL_DIR": str(folder / "models"),
        "WHISPER_DEVICES": "cpu",
        "WHISPER_THREADS": "10",
        "WHISPER_SYNC_WAITERS": "4",
        "WHISPER_LIVE_SESSIONS": "2",
        "WHISPER_MAX_UPLOAD_MB": "50",
        **overrides,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {**os.environ, **env, "WHISPER_HOST": "127.0.0.1", "WHISPER_PORT": str(self.port)}
        self.process = None

    def start(self) -> "Server":
        self.process = subprocess.Popen(
            GUNICORN, cwd=ROOT, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if requests.get(self.base + "/healthz", timeout=1).ok:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # workers still importing
                time.sleep(0.2)
        raise AssertionError("gunicorn did not answer in 60 s:\n" + self.log.read_text())

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
