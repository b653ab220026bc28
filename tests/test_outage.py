"""The job database away: every API answers 503 with Retry-After and a sentence (not 500),
/readyz says why, the consumer waits it out and nothing is lost or done twice; and a worker
busy with a long job stays listed as alive (its registry heartbeat runs beside the job)."""

from __future__ import annotations

import io
import re
import sqlite3
import threading
import time

import pytest

from conftest import make_app, real_server, wait_until
from test_openapi import documented
from test_jobs import (WAIT, Blocker, FakeService, Recorder, backend,  # noqa: F401
                       fake_transcript, make_queue, root, submit_bytes, wait_finished)
from whisper_service.errors import StoreUnavailable
from whisper_service.queue.jobs import JobQueue
from whisper_service.queue.store import open_store
from whisper_service.queue.store import sqlite as sqlite_store

SENTENCE = "the job database is unreachable"
FIELDS = {"temperature": "0", "beam_size": "greedy", "language": "en"}
LEASE = 1.0  # seconds: a job runs for several of them in the busy-worker test
LOCK_TIMEOUT = 0.5  # seconds an SQLite statement waits for a lock in these tests


def _upload(client, media, url="/api/v1/transcriptions", **fields):
    data = {"file": (io.BytesIO(media["speech.wav"].read_bytes()), "talk.wav"), **fields}
    return client.post(url, data=data, query_string={"async": "1"})


def _assert_unavailable(response, shape: str = "native") -> None:
    """503, a Retry-After in whole seconds, and the sentence in the API's error shape."""
    assert response.status_code == 503, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    if shape == "page":
        assert SENTENCE in response.get_data(as_text=True)
        return
    error = response.get_json()["error"]
    assert SENTENCE in error["message"]
    if shape == "openai":
        assert error["type"] == "server_error" and error["code"] == "store_unavailable"
        assert response.headers.get("x-should-retry") != "false"  # a retry later can help
    else:
        assert error["code"] == "store_unavailable"


# --- PostgreSQL stopped and started ---------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A cluster of this module's own: stopping it must not disturb other tests."""
    from postgres import Cluster, MissingPostgres

    yield from real_server(Cluster, MissingPostgres)


class Gate(FakeService):
    """Transcribes 'held.wav' only once released (so it can end while the database is
    away); every other file at once. Counts the runs of each name."""

    def __init__(self):
        self.running = threading.Event()
        self.release = threading.Event()
        self.runs: dict = {}

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        self.runs[display_name] = self.runs.get(display_name, 0) + 1
        if display_name == "held.wav":
            self.running.set()
            self.release.wait(WAIT)
        return fake_transcript(f"text of {display_name}")


def close_all(gate: "Gate", consumers, app) -> None:
    """An outage test's end: the held job released, the consumers stopped and every store
    closed."""
    gate.release.set()
    for consumer in consumers:
        consumer.stop(timeout=5)
        consumer.store.close()
    app.extensions["whisper_jobs"].store.close()


def test_postgres_away_answers_503_everywhere_and_nothing_is_lost(cluster, checkpoint, media,
                                                                   tmp_path, caplog):
    url = cluster.url()
    app = make_app(checkpoint, tmp_path / "web", WHISPER_DATABASE_URL=url, WHISPER_ROLE="web")
    client = app.test_client()
    gate = Gate()
    # one consumer busy with a job through the outage, one idle (its loop meets the outage)
    consumers = [JobQueue(open_store(url, str(tmp_path / name)), gate) for name in ("a", "b")]
    for consumer in consumers:
        consumer.start()
    try:
        def state(job_id: str) -> str:
            return client.get(f"/api/v1/jobs/{job_id}").get_json()["state"]

        held = client.post("/api/v1/transcriptions", query_string={"async": "1"}, data={
            "file": (io.BytesIO(media["speech.wav"].read_bytes()), "held.wav")}).get_json()["id"]
        wait_until(gate.running.is_set, WAIT, what="the held job to start")
        first = _upload(client, media).get_json()["id"]  # queued behind the held one

        cluster.stop()
        try:
            _assert_unavailable(client.get(f"/api/v1/jobs/{first}"))
            _assert_unavailable(_upload(client, media))
            _assert_unavailable(_upload(client, media, url="/v1/audio/transcriptions",
                                        model="whisper-1"), shape="openai")
            _assert_unavailable(client.get(f"/jobs/{first}"), shape="page")
            for probe in ("/readyz", "/ping"):  # SageMaker's health check is /readyz's answer
                ready = client.get(probe)
                assert ready.status_code == 503 and int(ready.headers["Retry-After"]) > 0
                assert ready.get_json()["status"] == "unavailable"
                assert SENTENCE in ready.get_json()["error"]
            gate.release.set()  # the held job ends while its result cannot be stored
            time.sleep(2.0)  # a few of the consumers' tries meet the closed database
        finally:
            cluster.start()

        assert client.get("/readyz").status_code == 200
        after = _upload(client, media)
        assert after.status_code == 202, after.get_data(as_text=True)
        ids = [held, first, after.get_json()["id"]]
        wait_until(lambda: all(state(i) == "done" for i in ids), WAIT, interval=0.2,
                   what="every job after the outage")
        statuses = [client.get(f"/api/v1/jobs/{i}").get_json() for i in ids]
        assert [s.get("attempts", 1) for s in statuses] == [1, 1, 1]
        assert gate.runs == {"held.wav": 1, "talk.wav": 2}  # none run twice, none lost
        metrics = client.get("/metrics").get_data(as_text=True)
        assert re.search(r"^whisper_jobs_done_total 3\.0$", metrics, re.M)
        assert re.search(r'^whisper_jobs\{state="done"\} 3$', metrics, re.M)
        # the consumers' threads lived through it; each store logged the outage once, at
        # most: the web app's job store and its fine-tune store (each its own connections),
        # and the two consumers' job stores
        assert all(thread.is_alive() for consumer in consumers for thread in consumer._threads)
        away = [r for r in caplog.records if "job database (PostgreSQL) is unreachable" in r.message]
        assert 1 <= len(away) <= 4, [r.message for r in away]
    finally:
        close_all(gate, consumers, app)


class UploadAway:
    """The queue's store, whose first fetch of an upload meets the database away: the job
    was claimed a moment before the outage began."""

    def __init__(self, store):
        self._store = store
        self.refused = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def media_path(self, job_id):
        if not self.refused:
            self.refused += 1
            raise StoreUnavailable("PostgreSQL does not answer")
        return self._store.media_path(job_id)


def test_a_job_claimed_as_the_database_went_away_runs_once_uncounted(make_queue):  # noqa: F811
    recorder = Recorder()
    queue = make_queue(recorder)
    queue.store = UploadAway(queue.store)
    job = submit_bytes(queue, "talk.wav")
    queue.start()
    done = wait_finished(queue, job.id)
    # back in the queue as it was, not failed for good, and its attempt not spent
    assert (done.state.value, done.attempts, queue.store.refused) == ("done", 1, 1)
    assert recorder.seen == [job.id]


# --- SQLite locked past its timeout ---------------------------------------------------------


def test_sqlite_locked_past_its_timeout_answers_503_then_works(checkpoint, media, tmp_path,
                                                              monkeypatch):
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", LOCK_TIMEOUT)
    app = make_app(checkpoint, tmp_path, WHISPER_ROLE="web")
    client = app.test_client()
    before = _upload(client, media).get_json()["id"]
    # another process holds the database in exclusive mode: readers and writers both wait
    holder = sqlite3.connect(str(tmp_path / "jobs" / sqlite_store.DB_FILE), isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE counters SET value = value WHERE 0")
        _assert_unavailable(_upload(client, media))
        _assert_unavailable(client.get(f"/api/v1/jobs/{before}"))
        ready = client.get("/readyz")
        assert ready.status_code == 503 and SENTENCE in ready.get_json()["error"]
        documented("/readyz", "get", 503).validate(ready.get_json())  # as the document says
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert client.get(f"/api/v1/jobs/{before}").get_json()["state"] == "queued"
    assert _upload(client, media).status_code == 202
    assert client.get("/readyz").get_json()["queued"] == 2  # the refused ones left nothing


# --- a busy worker stays in the fleet -------------------------------------------------------


@pytest.fixture
def busy_web(backend, checkpoint, tmp_path):  # noqa: F811
    """A web-only app on the store the test's consumer uses, counting workers as alive for
    two short leases."""
    app = make_app(checkpoint, tmp_path, WHISPER_DATABASE_URL=backend.url, WHISPER_ROLE="web",
                   WHISPER_LEASE_SECONDS=str(LEASE))
    yield app.test_client()
    app.extensions["whisper_jobs"].store.close()


def test_a_worker_busy_longer_than_two_leases_stays_listed(make_queue, busy_web):  # noqa: F811
    blocker = Blocker()
    queue = make_queue(blocker, lease_seconds=LEASE)
    job = submit_bytes(queue, "long.wav")
    queue.start()
    try:
        wait_until(blocker.running.is_set, WAIT, what="the long job to start")
        seen = []
        until = time.monotonic() + 3 * LEASE  # past two leases, the window /readyz looks in
        while time.monotonic() < until:
            workers = busy_web.get("/readyz").get_json()["workers"]
            metrics = busy_web.get("/metrics").get_data(as_text=True)
            count = int(re.search(r"^whisper_workers (\d+)$", metrics, re.M).group(1))
            seen.append((len(workers), count))
            time.sleep(0.1)
        assert all(listed >= 1 and count >= 1 for listed, count in seen), seen
        assert queue.get(job.id).state.value == "running"
        # the registry says the job is running while it runs
        assert busy_web.get("/readyz").get_json()["workers"][0]["running"] == 1
    finally:
        blocker.release.set()
