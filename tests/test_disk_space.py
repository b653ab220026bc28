"""Disk space for uploads, in the app: a data folder's disk below WHISPER_MIN_FREE_MB refuses
uploads with 507 and a sentence on every upload path (before a large body is read), and
/readyz and /metrics say so; a disk that fills up while an upload is written (ENOSPC, made
to happen at the file-writing seam here; tests/e2e/test_full_disk.py fills a real tmpfs)
is 507 too, with nothing of the upload kept and the jobs before it untouched."""

from __future__ import annotations

import errno
import html
import io
import os
import shutil
import sqlite3

import pytest

from conftest import make_app
from test_app import csrf
from test_openapi import documented
from whisper_service.queue import jobs as jobs_module
from whisper_service.queue.store.files import valid_id
from whisper_service.queue.store.space import MB

HUGE_FLOOR_MB = str(1 << 40)  # more than any disk has free: every upload is below the floor
SENTENCE = "the server's disk is"


def wav(media) -> bytes:
    return media["speech.wav"].read_bytes()


def job_folders(tmp_path) -> list:
    """The data folder's job folders (not its fine-tunes/ or sign-outs/)."""
    return sorted(p.name for p in (tmp_path / "jobs").iterdir() if p.is_dir() and valid_id(p.name))


def assert_507(response, shape: str = "native") -> str:
    assert response.status_code == 507, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    if shape == "page":
        text = html.unescape(response.get_data(as_text=True))
        assert SENTENCE in text
        return text
    error = response.get_json()["error"]
    assert SENTENCE in error["message"] and error["code"] == "disk_full"
    if shape == "openai":
        assert error["type"] == "server_error"
    return error["message"]


@pytest.fixture
def low_disk(checkpoint, tmp_path):
    app = make_app(checkpoint, tmp_path, WHISPER_ROLE="web", WHISPER_MIN_FREE_MB=HUGE_FLOOR_MB)
    yield app
    app.extensions["whisper_jobs"].stop()


def test_below_the_floor_every_upload_path_answers_507(low_disk, media, tmp_path):
    client = low_disk.test_client()
    audio = wav(media)
    message = assert_507(client.post("/api/v1/transcriptions", query_string={"async": "1"},
                                     data={"file": (io.BytesIO(audio), "talk.wav")}))
    assert "nearly full" in message and "MB free" in message
    assert_507(client.post("/v1/audio/transcriptions",
                           data={"file": (io.BytesIO(audio), "talk.wav"), "model": "whisper-1"}),
               "openai")
    assert_507(client.post("/invocations", data=audio, content_type="audio/wav"))
    page = client.post("/jobs", data={"file": (io.BytesIO(audio), "talk.wav"),
                                      "csrf_token": csrf(client)})
    assert_507(page, "page")
    assert job_folders(tmp_path) == []  # nothing was written


def test_a_large_upload_below_the_floor_is_refused_before_its_body_is_read(low_disk):
    # the headers announce 1.5 MB and no byte follows: a view reading the body would find
    # no file in it (400); the answer comes from the headers alone
    response = low_disk.test_client().post(
        "/api/v1/transcriptions", input_stream=io.BytesIO(b""),
        content_type="multipart/form-data; boundary=x",
        environ_overrides={"CONTENT_LENGTH": str(int(1.5 * MB))})  # under the 2 MB limit
    assert_507(response)


def test_readyz_and_metrics_report_the_disk(low_disk, checkpoint, tmp_path):
    client = low_disk.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and int(ready.headers["Retry-After"]) > 0
    body = ready.get_json()
    assert body["status"] == "low_on_disk" and "nearly full" in body["error"]
    assert body["disk"]["min_free_mb"] == int(HUGE_FLOOR_MB)
    assert 0 <= body["disk"]["free_mb"] < int(HUGE_FLOOR_MB)
    documented("/readyz", "get", 503).validate(body)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f"whisper_disk_min_free_bytes {int(HUGE_FLOOR_MB) * MB}" in metrics
    free = int(next(line.split()[1] for line in metrics.splitlines()
                    if line.startswith("whisper_disk_free_bytes ")))
    assert free == shutil.disk_usage(tmp_path / "jobs").free or free > 0

    roomy = make_app(checkpoint, tmp_path / "roomy", WHISPER_ROLE="web", WHISPER_MIN_FREE_MB="1")
    try:
        ready = roomy.test_client().get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["disk"]["min_free_mb"] == 1
        documented("/readyz", "get", 200).validate(ready.get_json())
    finally:
        roomy.extensions["whisper_jobs"].stop()


def full_disk_after(limit: int):
    """A copyfileobj that writes `limit` bytes and then meets a full disk, as a small file
    system does."""
    def copy(source, target, length=0):
        target.write(source.read(limit))
        target.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return copy


def test_a_disk_that_fills_up_mid_upload_is_507_and_keeps_nothing(checkpoint, media, tmp_path,
                                                                monkeypatch):
    app = make_app(checkpoint, tmp_path, WHISPER_ROLE="web", WHISPER_MIN_FREE_MB="0")
    client = app.test_client()
    try:
        before = client.post("/api/v1/transcriptions", query_string={"async": "1"},
                             data={"file": (io.BytesIO(wav(media)), "first.wav")})
        assert before.status_code == 202
        kept = job_folders(tmp_path)
        monkeypatch.setattr(jobs_module.shutil, "copyfileobj", full_disk_after(10_000))
        message = assert_507(client.post("/api/v1/transcriptions", query_string={"async": "1"},
                                         data={"file": (io.BytesIO(wav(media)), "second.wav")}))
        assert "full" in message and "nothing of it was kept" in message
        assert_507(client.post("/v1/audio/transcriptions", data={
            "file": (io.BytesIO(wav(media)), "third.wav"), "model": "whisper-1"}), "openai")
        assert job_folders(tmp_path) == kept  # the partial files are gone
        monkeypatch.undo()
        # the store is as it was: the first job queued, the refused ones nowhere
        ready = client.get("/readyz").get_json()
        assert ready["queued"] == 1
        first = client.get(f"/api/v1/jobs/{before.get_json()['id']}")
        assert first.status_code == 200 and first.get_json()["state"] == "queued"
        # and once there is room, uploads are taken again
        again = client.post("/api/v1/transcriptions", query_string={"async": "1"},
                            data={"file": (io.BytesIO(wav(media)), "again.wav")})
        assert again.status_code == 202
        assert client.get("/readyz").get_json()["queued"] == 2
    finally:
        app.extensions["whisper_jobs"].stop()


def test_sqlite_full_while_queueing_is_507_and_keeps_nothing(checkpoint, media, tmp_path,
                                                           monkeypatch):
    app = make_app(checkpoint, tmp_path, WHISPER_ROLE="web", WHISPER_MIN_FREE_MB="0")
    client = app.test_client()
    store = app.extensions["whisper_jobs"].store

    def full(row, max_queued):
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = 13  # SQLITE_FULL
        raise error

    try:
        monkeypatch.setattr(store, "add", full)
        assert_507(client.post("/api/v1/transcriptions", query_string={"async": "1"},
                               data={"file": (io.BytesIO(wav(media)), "talk.wav")}))
        assert job_folders(tmp_path) == []
    finally:
        app.extensions["whisper_jobs"].stop()


def test_what_counts_as_a_full_disk():
    from whisper_service.errors import DiskFull
    from whisper_service.queue.store.space import full_disk_as_error, is_full

    class PostgresDiskFull(Exception):
        sqlstate = "53100"

    sqlite_full = sqlite3.OperationalError("database or disk is full")
    sqlite_full.sqlite_errorcode = 13
    for error in (OSError(errno.ENOSPC, "full"), OSError(errno.EDQUOT, "quota"), sqlite_full,
                  PostgresDiskFull()):
        assert is_full(error), error
        with pytest.raises(DiskFull, match="the server's disk is full"):
            with full_disk_as_error():
                raise error
    for error in (OSError(errno.EACCES, "denied"), sqlite3.OperationalError("syntax"),
                  ValueError("no")):
        assert not is_full(error)
        with pytest.raises(type(error)):
            with full_disk_as_error():
                raise error
