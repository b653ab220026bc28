"""WHISPER_OBJECT_STORE on a real S3 server (SeaweedFS, tests/seaweed.py): a job's files are
objects and none is in PostgreSQL; deleting or expiring a job removes its objects, and the
objects of a job whose row never came (a crash between the two) are collected; the player
gets media with HTTP Range through the app on a host that never had it; a wrong key or
bucket is a startup error naming the setting; the object store stopped for 15 s answers
uploads with 503 and loses nothing, and a job whose result came during the outage is done
once when it returns."""

from __future__ import annotations

import io
import re
import threading
import time

import psycopg
import pytest

from conftest import make_app, real_server, wait_until
from seaweed import BUCKET
from test_outage import Gate, close_all  # the same stand-in: one held file, the rest at once
from test_jobs import FAST, WAIT, Backend, FakeService, Recorder, fake_transcript, wait_finished
from whisper_service.config import Settings
from whisper_service.errors import ConfigError
from whisper_service.queue.jobs import JobQueue
from whisper_service.queue.store import open_store
from whisper_service.queue.store.base import EDITED_FILE, MEDIA_FILE, TRANSCRIPT_FILE
from whisper_service.queue.store.objects import ObjectFiles

OUTAGE_SECONDS = 15.0  # how long the object store is stopped (issue 26)
SENTENCE = "the object store does not answer"


@pytest.fixture
def s3(postgres_url, object_store, tmp_path) -> Backend:
    return Backend("s3", postgres_url, str(tmp_path / "jobs"), object_store)


def _prefix(backend: Backend) -> str:
    return backend.object_store.split(f"s3://{BUCKET}/", 1)[1] + "/"


def _objects(seaweed, backend: Backend):
    """The keys under the test's prefix, without it."""
    prefix = _prefix(backend)
    return [key[len(prefix):] for key in seaweed.keys(prefix)]


def _done_job(queue: JobQueue, name: str = "talk.wav", data: bytes = b"audio"):
    job = queue.submit(io.BytesIO(data), name, FAST)
    return wait_finished(queue, job.id)


# --- files are objects -------------------------------------------------------------------


def test_files_are_objects_and_go_with_their_job(s3, seaweed):
    queue = JobQueue(s3.store(), Recorder(text="kept as an object"))
    queue.start()
    try:
        job = _done_job(queue, data=b"the upload's bytes")
        assert queue.transcript(job.id).text == "kept as an object"
        assert queue.store.put_side_file(job.id, EDITED_FILE, '{"edited": true}')
        assert queue.store.side_file(job.id, EDITED_FILE) == '{"edited": true}'
        assert _objects(seaweed, s3) == [f"{job.id}/{EDITED_FILE}", f"{job.id}/{MEDIA_FILE}",
                                         f"{job.id}/{TRANSCRIPT_FILE}"]
        body = seaweed.client().get_object(Bucket=BUCKET, Key=f"{_prefix(s3)}{job.id}/{MEDIA_FILE}")
        assert body["Body"].read() == b"the upload's bytes"
        # PostgreSQL keeps no file: there is no table for them
        with psycopg.connect(s3.url) as db:
            assert db.execute("SELECT to_regclass('job_files')").fetchone()[0] is None
        assert queue.delete(job.id)
        assert _objects(seaweed, s3) == []
    finally:
        queue.stop(timeout=5)
        queue.store.close()


def test_expired_jobs_and_objects_no_row_names_are_collected(s3, seaweed):
    queue = JobQueue(s3.store(), Recorder())
    queue.start()
    try:
        old, kept = _done_job(queue, "old.wav"), _done_job(queue, "kept.wav")
        s3.set_column(old.id, "finished_at", time.time() - 3 * 3600)
        # a crash between writing an upload's object and its row: no row names it
        files = ObjectFiles(s3.object_store)
        crashed = "C" * 22
        files.put_text(None, crashed, MEDIA_FILE, "half an upload")
        queue.retention_seconds = 3600
        assert queue.purge_expired() == 1
        # young debris may be an upload in progress: it stays until it is old
        assert f"{crashed}/{MEDIA_FILE}" in _objects(seaweed, s3)
        queue.store._files.stray_seconds = 0.0  # now it is old
        queue.purge_expired()
        assert _objects(seaweed, s3) == [f"{kept.id}/{MEDIA_FILE}", f"{kept.id}/{TRANSCRIPT_FILE}"]
    finally:
        queue.stop(timeout=5)
        queue.store.close()


def test_the_player_gets_ranges_of_media_a_host_never_had(s3, checkpoint, media, tmp_path):
    web = make_app(checkpoint, tmp_path / "web", **s3.settings(), WHISPER_ROLE="web")
    worker = JobQueue(s3.store(str(tmp_path / "gpu-host")), Recorder())
    worker.start()
    try:
        client = web.test_client()
        data = media["speech.wav"].read_bytes()
        posted = client.post("/api/v1/transcriptions", query_string={"async": "1"},
                             data={"file": (io.BytesIO(data), "talk.wav")})
        assert posted.status_code == 202, posted.get_data(as_text=True)
        job_id = posted.get_json()["id"]
        wait_finished(worker, job_id)
        web.extensions["whisper_jobs"].store.discard_local(job_id)  # not on this host now
        part = client.get(f"/jobs/{job_id}/media", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert part.get_data() == data[100:200]
    finally:
        worker.stop(timeout=5)
        worker.store.close()
        web.extensions["whisper_jobs"].store.close()


# --- settings ------------------------------------------------------------------------------


def test_a_wrong_key_or_bucket_is_a_startup_error_naming_the_setting(postgres_url, object_store,
                                                                    monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-the-key")
    with pytest.raises(ConfigError, match=r"^WHISPER_OBJECT_STORE: .*refused the key"):
        open_store(postgres_url, str(tmp_path), object_store)


def test_a_missing_bucket_and_a_bad_url_are_startup_errors(postgres_url, object_store, tmp_path):
    with pytest.raises(ConfigError, match=r"^WHISPER_OBJECT_STORE: the bucket 'no-such-bucket'"):
        open_store(postgres_url, str(tmp_path), "s3://no-such-bucket/jobs")
    with pytest.raises(ConfigError, match=r"^WHISPER_OBJECT_STORE must be an S3 URL"):
        Settings.from_env({"WHISPER_DATABASE_URL": postgres_url,
                           "WHISPER_OBJECT_STORE": "http://example/bucket"})
    with pytest.raises(ConfigError, match=r"^WHISPER_OBJECT_STORE needs WHISPER_DATABASE_URL"):
        Settings.from_env({"WHISPER_OBJECT_STORE": object_store})


# --- the object store stopped ----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_seaweed():
    """An S3 server of this module's own: stopping it must not disturb other tests."""
    from seaweed import MissingSeaweed, Seaweed

    yield from real_server(Seaweed, MissingSeaweed)


def _upload(client, media, name="talk.wav", url="/api/v1/transcriptions", **fields):
    data = {"file": (io.BytesIO(media["speech.wav"].read_bytes()), name), **fields}
    return client.post(url, data=data, query_string={"async": "1"})


def _assert_unavailable(response, shape="native") -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    error = response.get_json()["error"]
    assert SENTENCE in error["message"]
    assert error["code"] == "store_unavailable"
    if shape == "openai":
        assert error["type"] == "server_error"


def test_the_object_store_stopped_answers_503_and_loses_nothing(own_seaweed, postgres_url,
                                                                checkpoint, media, tmp_path,
                                                                monkeypatch):
    for name, value in own_seaweed.environment().items():
        monkeypatch.setenv(name, value)
    s3 = Backend("s3", postgres_url, str(tmp_path / "jobs"), f"s3://{BUCKET}/outage")
    app = make_app(checkpoint, tmp_path / "web", **s3.settings(), WHISPER_ROLE="web")
    client = app.test_client()
    gate = Gate()
    # one consumer busy with a job through the outage, one idle (its loop meets the outage)
    consumers = [JobQueue(s3.store(str(tmp_path / name)), gate) for name in ("a", "b")]
    for consumer in consumers:
        consumer.start()
    try:
        def state(job_id: str) -> str:
            return client.get(f"/api/v1/jobs/{job_id}").get_json()["state"]

        held = _upload(client, media, "held.wav").get_json()["id"]
        wait_until(gate.running.is_set, WAIT, what="the held job to start")

        own_seaweed.stop()
        stopped = time.monotonic()
        try:
            _assert_unavailable(_upload(client, media))
            _assert_unavailable(_upload(client, media, url="/v1/audio/transcriptions",
                                        model="whisper-1"), shape="openai")
            assert state(held) == "running"  # the job's state is in PostgreSQL, still there
            gate.release.set()  # the held job ends while its transcript cannot be stored
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
            assert state(held) == "running"
        finally:
            own_seaweed.start()

        after = _upload(client, media)
        assert after.status_code == 202, after.get_data(as_text=True)
        ids = [held, after.get_json()["id"]]
        wait_until(lambda: all(state(i) == "done" for i in ids), WAIT, interval=0.2,
                   what="every job after the outage")
        statuses = [client.get(f"/api/v1/jobs/{i}").get_json() for i in ids]
        assert [s.get("attempts", 1) for s in statuses] == [1, 1]
        assert gate.runs == {"held.wav": 1, "talk.wav": 1}  # none run twice, none lost
        transcript = client.get(f"/api/v1/jobs/{held}/transcript.json")
        assert transcript.status_code == 200 and transcript.get_json()["text"] == "text of held.wav"
        metrics = client.get("/metrics").get_data(as_text=True)
        assert re.search(r"^whisper_jobs_done_total 2\.0$", metrics, re.M)
        # the refused uploads left no object: only the two jobs' files are there
        prefix = "outage/"
        assert sorted(k[len(prefix):].split("/")[0] for k in own_seaweed.keys(prefix)) == \
            sorted([held, held, ids[1], ids[1]])
    finally:
        close_all(gate, consumers, app)
