"""The production server, `gunicorn -c gunicorn.conf.py` (nginx in front), started on loopback
for a test and stopped after it."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]  # the README's command


def server_env(checkpoint: str, folder: Path, **overrides: str) -> dict:
    """The settings of a test server: the test checkpoint, its own folders, 10 threads: 4
    waiting places for synchronous calls, 2 live sessions, 4 free; uploads of up to 50 MB;
    torch on one thread (beside the tests and perhaps another test worker on a small
    machine, more threads only wait for each other: a job took 12 s on two, 4 s on one)."""
    return {
        "OMP_NUM_THREADS": "1",
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


# Servers' ports come from below the kernel's ephemeral range, so that no client connection
# (which takes an ephemeral port) can be holding one between the probe and the server's
# bind; a lock file per port, held until this process exits, keeps parallel test workers
# and two test runs at once from handing out the same port (nginx listens with reuseport,
# so a second server on a port would bind it silently and answer half the requests).
PORTS = range(20000, 32000)
PORT_LOCKS = Path(tempfile.gettempdir()) / "whisper-test-ports"
_held: list = []  # the open lock files of the ports this process handed out


def free_port() -> int:
    """A loopback port nothing listens on, never handed out twice at once on this machine."""
    PORT_LOCKS.mkdir(exist_ok=True)
    # each process starts looking at its own place, so workers rarely try the same lock
    first = (os.getpid() * 7919) % len(PORTS)
    for offset in range(len(PORTS)):
        port = PORTS[(first + offset) % len(PORTS)]
        lock = open(PORT_LOCKS / f"{port}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process of the tests holds it
            lock.close()
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # something else listens there
                lock.close()
                continue
        _held.append(lock)
        return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


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
