"""Slow clients and many waiting callers against the production server (nginx in front of
gunicorn, as `make run` and the container start it): health checks, status polls and uploads
go on answering. And its logs stay one JSON object per line whatever a client sends."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from server import Server, server_env
from whisper_service.checkpoints import BUNDLED

SLOW_CLIENTS = 20  # each: twice as many as the worker has threads
TRICKLE_SECONDS = 2.0  # a header line (or a few body bytes) this often
HOLD_SECONDS = 8.0  # how long the slow clients keep at it while we measure
WAITERS = 18  # synchronous calls at once: more than the worker's threads
FAST = {"beam_size": "2", "language": "en", "temperature": "0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: starting one takes a while on a small machine. Its model
    is the bundled tiny.en, which ends its text where the speech ends: the random test
    checkpoint decodes every window to the token limit, and the waiting callers below
    would wait minutes for transcripts that are not what these tests are about."""
    tmp_path = tmp_path_factory.mktemp("slow-clients")
    # waiting callers answer 202 after WHISPER_SYNC_TIMEOUT: the test never waits for transcripts
    env = server_env(BUNDLED, tmp_path, WHISPER_SYNC_TIMEOUT="5")
    running = Server(env, tmp_path / "server.log").start()
    yield running
    running.stop()


def trickle(port: int, stop: threading.Event, body: bool, dropped: list) -> None:
    """A client that sends its request a line (or a few bytes) at a time, for ever; notes
    in `dropped` whether it sent a body when the server gave up on it (allowed: nginx ends a
    request whose headers take over HEADER_TIMEOUT_SECONDS, but then it holds nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/transcriptions HTTP/1.1\r\nHost: x\r\n")
        if body:
            sock.sendall(b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(TRICKLE_SECONDS):
            try:
                sock.sendall(b'{"a' if body else b"X-Slow: 1\r\n")
            except OSError:  # the server gave up on us: that is allowed
                dropped.append("body" if body else "headers")
                return


def timed_get(url: str) -> float:
    started = time.monotonic()
    assert requests.get(url, timeout=5).status_code == 200
    return time.monotonic() - started


def test_slow_clients_cannot_starve_health_status_or_uploads(server, media):
    stop, dropped = threading.Event(), []
    clients = [threading.Thread(target=trickle, args=(server.port, stop, i % 2 == 1, dropped),
                                daemon=True) for i in range(SLOW_CLIENTS)]
    for client in clients:
        client.start()
    try:
        time.sleep(TRICKLE_SECONDS + 0.5)  # every slow client has begun its request
        health = []
        deadline = time.monotonic() + HOLD_SECONDS - TRICKLE_SECONDS
        while time.monotonic() < deadline:
            health.append(timed_get(server.base + "/healthz"))
            time.sleep(0.5)
        # answered while the slow bodies still held their half-sent requests (nginx waits up
        # to BODY_TIMEOUT_SECONDS between their pieces): as many as the worker's threads,
        # which would all be stuck without nginx in front
        assert "body" not in dropped, dropped
        assert all(client.is_alive() for i, client in enumerate(clients) if i % 2 == 1)
        with media["speech.wav"].open("rb") as audio:
            upload = requests.post(server.base + "/api/v1/transcriptions", data=FAST,
                                   headers={"Prefer": "respond-async"},
                                   files={"file": ("speech.wav", audio)}, timeout=10)
        assert upload.status_code == 202, upload.text
        status = requests.get(server.base + upload.headers["Location"], timeout=5)
        assert status.status_code == 200 and status.json()["state"] in ("queued", "running", "done")
    finally:
        stop.set()
    # each answered (timed_get asserts 200 within its timeout) while they held: that is not
    # being starved; how many milliseconds it took is the machine's load, not the server's
    assert len(health) >= 5, health


def test_many_synchronous_callers_cannot_starve_health(server, media):
    audio = media["speech.wav"].read_bytes()

    def call(_) -> requests.Response:
        return requests.post(server.base + "/v1/audio/transcriptions", timeout=300,
                             data={"beam_size": "3", "temperature": "0"},
                             files={"file": ("lecture.wav", audio)})

    with ThreadPoolExecutor(WAITERS) as pool:
        answers = pool.map(call, range(WAITERS))
        time.sleep(0.3)  # the calls are in: the first ones wait for their transcripts
        health = [timed_get(server.base + "/healthz") for _ in range(5)]
        answers = list(answers)
    assert max(health) < 1.0, health
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 202, 503}, statuses
    assert 503 in statuses, statuses  # more callers than places: told at once, not held
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["Retry-After"] == "30"
            assert answer.json()["error"]["type"] == "server_error"
        else:  # a transcript, or the job when it outlasted WHISPER_SYNC_TIMEOUT
            assert "text" in answer.json() or "status_url" in answer.json()


def test_every_log_line_is_one_json_object(server):
    # a newline reaches the app (404); a NUL is refused by nginx itself (400): both logged
    for path in ("/x%0ay", '/jobs/%0d%0a{"forged":1}', "/x%00y", "/%22%5c"):
        requests.get(server.base + path, timeout=5)
    requests.get(server.base + "/healthz", timeout=5)
    time.sleep(0.5)  # the access log is written after the answer
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # any line that is not JSON fails here
    paths = [e.get("path") for e in entries]
    assert "/x\ny" in paths and '/jobs/\r\n{"forged":1}' in paths and "/healthz" in paths
    assert not any("forged" in e for e in entries)  # no field was forged by a path
    assert any(e.get("by") == "proxy" and e.get("status") == "400" for e in entries)
