"""The production invocation, `gunicorn -c gunicorn.conf.py`, on loopback: two CPU workers
serve the browser flow and the API; SIGTERM in the middle of a job loses nothing."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import wait_finished
from server import Server, server_env

FAST = {"beam_size": "2", "language": "en", "temperature": "0"}


@pytest.fixture(name="server_env")
def two_cpu_workers_env(checkpoint, tmp_path):
    return server_env(checkpoint, tmp_path, WHISPER_DEVICES="cpu,cpu")


@pytest.fixture
def two_workers(server_env, tmp_path):
    server = Server(server_env, tmp_path / "gunicorn.log").start()
    yield server
    server.stop()


def browser_upload(session: requests.Session, base: str, path: Path, **form) -> str:
    """What the upload page's form does: fetch the page for its CSRF token, post the file."""
    page = session.get(base + "/").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    with path.open("rb") as media:
        response = session.post(base + "/jobs", data={"csrf_token": token, **form},
                                files={"file": (path.name, media)}, allow_redirects=False)
    assert response.status_code == 303, response.text
    return base + response.headers["Location"]


def wait_done(session: requests.Session, job_url: str, seconds: float = 120) -> dict:
    return wait_finished(lambda: session.get(job_url + "/status").json(), job_url, seconds)


def test_two_workers_serve_the_page_and_the_api(two_workers, media):
    base = two_workers.base
    # the second worker may still be importing torch when the first answers: ask in bursts
    # of parallel connections until both have answered (the kernel hands each connection
    # to whichever worker accepts first)
    pids, deadline = set(), time.monotonic() + 60
    with ThreadPoolExecutor(8) as pool:
        while len(pids) < 2 and time.monotonic() < deadline:
            answers = pool.map(lambda _: requests.get(
                base + "/healthz", headers={"Connection": "close"}, timeout=10).json()["pid"], range(16))
            pids.update(answers)
    assert len(pids) == 2, "both worker processes answer"

    session = requests.Session()
    job_url = browser_upload(session, base, media["speech.mp3"], **FAST)
    assert wait_done(session, job_url)["state"] == "done"
    page = session.get(job_url).text
    srt_link = re.search(r'href="([^"]+\.srt)" download', page).group(1)
    srt = session.get(base + srt_link)
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:")

    with media["speech.wav"].open("rb") as audio:
        api = requests.post(base + "/api/v1/transcriptions", data=FAST,
                            files={"file": ("speech.wav", audio)}, timeout=120)
    assert api.status_code == 200, api.text
    assert api.json()["language"] == "en" and api.json()["segments"]


def test_sigterm_mid_job_loses_nothing(server_env, tmp_path, long_speech):
    # a grace period a busy 2-core machine can keep: with 2 s the master sometimes killed the
    # worker before its exit hook ran (the worker's own loop takes up to a second to notice)
    env = {**server_env, "WHISPER_DEVICES": "cpu", "WHISPER_GRACEFUL_TIMEOUT": "10"}
    log = tmp_path / "gunicorn.log"
    first = Server(env, log).start()
    try:
        session = requests.Session()
        # about a minute of audio keeps the job busy for a few seconds
        job_url = browser_upload(session, first.base, long_speech, beam_size="3", temperature="0")
        deadline = time.monotonic() + 60
        while session.get(job_url + "/status").json()["state"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert first.terminate(timeout=30) == 0  # a graceful stop, within the grace period
    finally:
        first.stop()

    second = Server(env, log)
    second.port, second.base = first.port, first.base
    second.env = first.env
    second.start()
    try:
        status = wait_done(session, job_url)
        assert status["state"] == "done", status
        text = log.read_text()
        assert "stopped" in text
        # it was interrupted and run again, or it had finished before the signal
        assert "was orphaned" in text or text.count(" done\"") == 1
    finally:
        second.stop()
