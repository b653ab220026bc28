"""Floods of uploads against the production server (nginx in front of gunicorn): the excess
is refused at once with a JSON 503 and Retry-After, nginx keeps a bounded number of bodies
on disk, health checks and status polls go on answering within a second, and a request
the app refuses without reading its large body still gets the app's answer, never 502."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import tempfile
import threading
import time
import wave
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from server import Server, server_env
from whisper_service.checkpoints import BUNDLED

KEY = "flood-test-key"
MAX_UPLOADS = 4  # WHISPER_MAX_UPLOADS of the server under test
FLOOD = 16  # uploads sent at once: four times the places
PIECE = 64 * 1024  # a flood client sends its body in pieces this large ...
PAUSE = 0.02  # ... this far apart, so that the uploads overlap (about 1.5 s each)
WRONG_KEY_POSTS = 300  # large POSTs with a wrong key; 1 in 40 got nginx's 502 before


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A web-only server (no consumer: uploads stay queued, nothing is transcribed on this
    shared machine) with API keys and four upload places."""
    tmp_path = tmp_path_factory.mktemp("floods")
    env = server_env(BUNDLED, tmp_path, WHISPER_ROLE="web", WHISPER_API_KEYS=KEY,
                     WHISPER_KEY_FAILURES="100000", WHISPER_MAX_UPLOADS=str(MAX_UPLOADS))
    running = Server(env, tmp_path / "server.log").start()
    yield running
    running.stop()


def wav_bytes(seconds: float) -> bytes:
    """A WAV of a quiet tone, 16 kHz mono: 32 kB a second."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        frame = (1000).to_bytes(2, "little", signed=True) + (-1000).to_bytes(2, "little", signed=True)
        wav.writeframes(frame * int(seconds * 8000))
    return out.getvalue()


def multipart(filename: str, content: bytes) -> tuple:
    boundary = "floodboundary7d3a"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def slow_upload(port: int, body: bytes, content_type: str) -> dict:
    """An asynchronous upload whose body goes out in pieces; stops sending as soon as an
    answer comes. The answer's status, headers and body, and how long after the request's
    headers it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall((f"POST /api/v1/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                      f"Bearer {KEY}\r\nPrefer: respond-async\r\nContent-Type: {content_type}"
                      f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
        sent = 0
        while sent < len(body) and not select.select([sock], [], [], 0)[0]:
            sent += sock.send(body[sent:sent + PIECE])
            time.sleep(PAUSE)
        raw = b""
        while b"\r\n\r\n" not in raw:
            piece = sock.recv(65536)
            assert piece, raw
            raw += piece
        seconds = time.monotonic() - started
        while True:  # Connection: close: the answer ends with the connection
            piece = sock.recv(65536)
            if not piece:
                break
            raw += piece
    head, _, answer = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return {"status": int(lines[0].split()[1]), "headers": headers, "body": answer.decode(),
            "seconds": seconds, "sent": sent}


def nginx_workers(folder: Path) -> list:
    """The pids of the nginx workers whose master's pid file is in folder."""
    master = (folder / "nginx.pid").read_text().strip()
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        if fields[1] == master:  # the parent's pid
            workers.append(stat.parent.name)
    return workers


def spooled_bytes(folder: Path, workers: list) -> int:
    """Bytes of request bodies nginx holds on disk now: its temporary files are unlinked as
    soon as they are made, so they are found among its workers' open files."""
    total = 0
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                if os.readlink(fd).startswith(str(folder / "body")):
                    total += fd.stat().st_size
            except OSError:  # closed meanwhile
                pass
    return total


def test_a_flood_of_uploads_is_bounded_and_health_and_polls_answer(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    content_type, body = multipart("flood.wav", wav_bytes(90))  # about 2.9 MB
    first = requests.post(server.base + "/api/v1/transcriptions", headers={**auth, "Prefer": "respond-async"},
                          files={"file": ("first.wav", wav_bytes(2))}, timeout=30)
    assert first.status_code == 202, first.text
    status_url = server.base + first.headers["Location"]
    proxy_folder = Path(tempfile.gettempdir()) / f"whisper-proxy-{server.process.pid}"
    workers = nginx_workers(proxy_folder)
    assert workers

    stop, probes, spools = threading.Event(), [], []

    def watch():
        while not stop.is_set():
            for url, headers in ((server.base + "/healthz", {}), (status_url, auth)):
                started = time.monotonic()
                answer = requests.get(url, headers=headers, timeout=10)
                probes.append((url, answer.status_code, time.monotonic() - started))
            spools.append(spooled_bytes(proxy_folder, workers))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(FLOOD) as pool:
            answers = list(pool.map(lambda _: slow_upload(server.port, body, content_type),
                                    range(FLOOD)))
    finally:
        stop.set()
        watcher.join(15)

    statuses = Counter(a["status"] for a in answers)
    assert set(statuses) <= {202, 503}, statuses
    refused = [a for a in answers if a["status"] == 503]
    # the places: at most four bodies at once, the other uploads of the burst refused
    assert len(refused) >= FLOOD - 2 * MAX_UPLOADS, statuses
    assert statuses[202] >= 1, statuses
    for answer in refused:
        assert answer["headers"]["content-type"] == "application/json", answer
        assert int(answer["headers"]["retry-after"]) > 0, answer
        error = json.loads(answer["body"])["error"]
        assert error["code"] == "too_many_uploads" and "try again in" in error["message"]
        assert answer["seconds"] < 1.0, answer["seconds"]  # at once, not after the body
        assert answer["sent"] < len(body)  # most of the body was never sent
    # what nginx held on disk at any moment: the bodies of the uploads it took in
    assert 0 < max(spools) <= MAX_UPLOADS * len(body), (max(spools), len(body))
    # health checks and status polls answered within a second all through
    assert len(probes) >= 10, probes
    assert all(status == 200 for _, status, _ in probes), probes
    assert max(seconds for _, _, seconds in probes) < 1.0, sorted(s for _, _, s in probes)[-5:]
    # the uploads taken in are jobs
    for answer in answers:
        if answer["status"] == 202:
            job = json.loads(answer["body"])
            poll = requests.get(server.base + f"/api/v1/jobs/{job['id']}", headers=auth, timeout=10)
            assert poll.status_code == 200 and poll.json()["state"] == "queued"


def test_a_large_body_refused_early_gets_the_apps_answer(server):
    """The app answers a wrong key before reading the body; nginx, still sending it, met a
    closed connection and answered 502 to about 1 POST in 40. Now the body is drained."""
    body = os.urandom(2_000_000)
    paths = ("/api/v1/transcriptions", "/v1/audio/transcriptions", "/invocations")

    def post(i: int) -> requests.Response:
        return requests.post(server.base + paths[i % len(paths)], data=body, timeout=60,
                             headers={"Authorization": "Bearer wrong",
                                      "Content-Type": "application/octet-stream"})

    with ThreadPoolExecutor(MAX_UPLOADS - 1) as pool:
        answers = list(pool.map(post, range(WRONG_KEY_POSTS)))
    statuses = Counter(a.status_code for a in answers)
    assert 502 not in statuses, statuses
    # 401 each; a place not yet given back by the answer before may rarely say 503
    assert statuses[401] >= WRONG_KEY_POSTS - 5 and set(statuses) <= {401, 503}, statuses
    for answer in answers:
        if answer.status_code == 401:
            assert answer.json()["error"]["code"] == "api_key_required"
