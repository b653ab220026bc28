"""What many hosts add to the queue, on both stores: a lapsed lease puts a job back and its
old worker writes nothing more; uploads stream through the store in pieces; the text final
so far travels with progress, for a web host elsewhere to stream; an Idempotency-Key makes
one job; /metrics and a web-only /readyz read the shared store; people's corrections and
the loudness envelope are kept beside the model's transcript, across restarts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import time
import tracemalloc

import numpy as np
import pytest

from conftest import make_app, wait_until
from test_jobs import (FAST, WAIT, Blocker, FakeService, Recorder, backend,  # noqa: F401
                       fake_transcript, make_queue, root, submit_bytes, wait_finished)
from whisper_service.queue.jobs import PROGRESS_SECONDS, JobState
from whisper_service.progress import FinishedSegment, Progress
from whisper_service.queue.store.base import COPY_CHUNK, EDITED_FILE, ENVELOPE_FILE, Claimant
from whisper_service.errors import BadOption
from whisper_service.failures import explain
from whisper_service.loudness import MIN_BINS
from whisper_service.transcript import Segment, Speaker, Transcript
from whisper_service.transcript_edits import parse_edits

LEASE = 1.0  # seconds: short, so that a lapse is seen quickly
UPLOAD_MB = 12  # many pieces: the memory taken must not grow with the upload


class StoreAway:
    """A store that this worker cannot reach for heartbeats (its network is down), while
    everything else goes on: its lease lapses though the process is alive."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def heartbeat(self, *args, **kwargs):
        raise self._store.errors[0]("the database is unreachable from this host")


def test_a_lapsed_lease_runs_the_job_elsewhere_and_the_old_worker_writes_nothing(
        make_queue, backend, tmp_path):
    blocker = Blocker()
    first = make_queue(blocker, lease_seconds=LEASE)
    first.store = StoreAway(first.store)
    job = submit_bytes(first, "talk.mp3")
    first.start()
    assert blocker.running.wait(WAIT)
    assert first.get(job.id).state is JobState.RUNNING
    if backend.shared:  # another host: another local folder, same database
        backend.root = str(tmp_path / "second-host")
    recorder = Recorder(text="second host")
    second = make_queue(recorder, lease_seconds=LEASE)
    second.start()
    try:
        done = wait_finished(second, job.id)
        assert (done.state, done.attempts) == (JobState.DONE, 2)
        assert recorder.seen == [job.id]
    finally:
        blocker.release.set()
    # the first worker ends late: its claim was taken, so its result is dropped
    assert blocker.returned.wait(WAIT)
    first.stop(timeout=WAIT)
    assert second.transcript(job.id).text == "second host"
    assert second.get(job.id).state is JobState.DONE
    assert second.store.counters()["jobs_done"] == 1


def test_a_job_whose_leases_keep_lapsing_ends_failed_with_its_reason(make_queue):
    blockers = []
    try:
        for attempt in (1, 2):
            blocker = Blocker()
            blockers.append(blocker)
            queue = make_queue(blocker, lease_seconds=LEASE, max_attempts=2)
            queue.store = StoreAway(queue.store)
            if attempt == 1:
                job = submit_bytes(queue, "poison.mp3")
            queue.start()
            assert blocker.running.wait(WAIT)
            wait_until(lambda: queue.store.get(job.id)["lease_expired"], WAIT, what="a lapse")
        last = make_queue(Recorder(), lease_seconds=LEASE, max_attempts=2)
        assert last.recover() == 1
        failed = last.get(job.id)
        assert (failed.state, failed.attempts) == (JobState.FAILED, 2)
        assert failed.error == ("The server stopped while transcribing this file. "
                                "It was tried 2 times.")
        assert failed.error_detail == ("failed 2 times; the last time: "
                                       "the server stopped while transcribing it")
        assert last.store.counters()["jobs_failed"] == 1
    finally:
        for blocker in blockers:
            blocker.release.set()


def test_an_upload_streams_through_the_store_in_pieces(make_queue, backend, tmp_path):
    # to S3 an upload streams in 8 MiB parts, one buffered at a time: larger, so that half
    # of it is more than a part
    upload_mb = UPLOAD_MB if backend.name != "s3" else 40
    data = os.urandom(upload_mb * COPY_CHUNK)
    source = tmp_path / "big.wav"
    source.write_bytes(data)
    queue = make_queue(Recorder())
    # another host, to read it there: fetched from the database or the object store (made
    # before the count starts: an S3 client loads its API's description once)
    other = backend.store(str(tmp_path / "other-host")) if backend.shared else None
    tracemalloc.start()
    try:
        with open(source, "rb") as upload:
            job = queue.submit(upload, "big.wav", FAST)
        submit_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        if other is not None:
            path = other.media_path(job.id)
            assert path.startswith(str(tmp_path / "other-host"))
        else:
            path = queue.store.media_path(job.id)
        fetch_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with open(path, "rb") as fetched:
        assert hashlib.sha256(fetched.read()).digest() == hashlib.sha256(data).digest()
    # never the whole upload in memory: a few pieces at most (measured: under 4 pieces from
    # files and the database; to S3 one 8 MiB part and 1.5 pieces beside it, 9.7 MB, whatever
    # the upload's size); half the upload is the bound
    bound = upload_mb // 2 * COPY_CHUNK
    assert submit_peak < bound, submit_peak
    assert fetch_peak < bound, fetch_peak


# --- the text final so far ---------------------------------------------------------------

HELLO, WORLD = FinishedSegment(0.0, 1.0, " Hello"), FinishedSegment(1.0, 2.0, " world.")


class Speaking(FakeService):
    """Reports the text of two segments, the second within the throttle of the first, then
    a report without segments (as diarization's are) after it; then waits to be released."""

    def __init__(self):
        self.reported = threading.Event()
        self.release = threading.Event()

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        progress(Progress(1.0, 10.0, (HELLO,)))
        progress(Progress(2.0, 10.0, (HELLO, WORLD)))  # throttled: not written now ...
        time.sleep(PROGRESS_SECONDS * 1.5)
        progress(Progress(3.0, 10.0))  # ... but with this one, which has no segments
        self.reported.set()
        self.release.wait(WAIT)
        return fake_transcript("Hello world.")


def test_the_text_final_so_far_is_written_with_progress_and_read_anywhere(make_queue, backend,
                                                                          tmp_path):
    speaking = Speaking()
    queue = make_queue(speaking)
    job = submit_bytes(queue, "talk.mp3")
    assert queue.get(job.id).partial_text == ""
    queue.start()
    try:
        assert speaking.reported.wait(WAIT)
        wait_until(lambda: queue.get(job.id).progress >= 0.3, WAIT, what="the third report")
        running = queue.get(job.id)
        assert running.state is JobState.RUNNING
        assert running.partial_text == " Hello world."
        if backend.shared:  # a web host elsewhere reads it from the database
            backend.root = str(tmp_path / "web-host")
        other = backend.store()
        try:
            assert other.get(job.id)["partial_text"] == " Hello world."
        finally:
            other.close()
    finally:
        speaking.release.set()
    done = wait_finished(queue, job.id)
    assert (done.state, done.partial_text) == (JobState.DONE, "")  # the transcript has it


def test_the_text_final_so_far_goes_with_the_attempt(make_queue):
    """None leaves the text as it is; a job put back in the queue, and a claim, clear it:
    a new attempt starts over."""
    queue = make_queue(Recorder())
    job = submit_bytes(queue, "talk.mp3")
    store = queue.store
    claimant = Claimant(host="here", pid=os.getpid(), token="first")
    [row] = store.claim(claimant, 60.0, 8, lambda rows: [rows[0]["id"]])
    assert row["partial_text"] is None
    assert store.progress(job.id, "first", 0.2, 5.0, " Hello")
    assert store.progress(job.id, "first", 0.3, 4.0)
    assert store.get(job.id)["partial_text"] == " Hello"
    assert not store.progress(job.id, "another claim", 0.4, 3.0, " Hijacked")
    assert store.get(job.id)["partial_text"] == " Hello"
    settled = store.settle(job.id, "first", lambda row: queue._end_attempt(row, explain(RuntimeError("it broke"))))
    assert settled.changes["state"] == JobState.QUEUED.value
    assert queue.get(job.id).partial_text == ""
    assert not store.progress(job.id, "first", 0.1, None, " Stale")  # its claim is gone
    row = store.get(job.id)
    assert row["partial_text"] is None and row["state"] == "queued"
    # a claim clears what another attempt may have left
    [row] = store.claim(Claimant(host="here", pid=os.getpid(), token="second"), 60.0, 8,
                        lambda rows: [rows[0]["id"]])
    assert row["partial_text"] is None


def test_a_database_made_before_the_column_gets_it(make_queue, backend):
    queue = make_queue(Recorder())
    job = submit_bytes(queue, "talk.mp3")
    queue.store.close()
    _drop_column(backend, "partial_text")
    store = backend.store()
    try:
        row = store.get(job.id)
        assert "partial_text" in row and row["partial_text"] is None
        store.claim(Claimant(host="here", pid=os.getpid(), token="t"), 60.0, 8,
                    lambda rows: [rows[0]["id"]])
        assert store.progress(job.id, "t", 0.5, 1.0, " Kept")
        assert store.get(job.id)["partial_text"] == " Kept"
    finally:
        store.close()


def _drop_column(backend, column: str) -> None:
    if backend.name == "sqlite":
        import sqlite3

        with sqlite3.connect(os.path.join(backend.root, "jobs.sqlite3")) as db:
            db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
            assert column not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    else:
        import psycopg

        with psycopg.connect(backend.url, autocommit=True) as db:
            db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")


def test_a_claim_holds_only_the_jobs_it_takes(postgres_url, tmp_path):
    """PostgreSQL: another host that claims while a claim is choosing gets the oldest job
    this one leaves queued, never one behind it; otherwise that host runs a newer job
    before an older one (a worker was seen starting seq 14 before 13). A companion chosen
    to share the run that the other host took meanwhile stays the other host's."""
    from whisper_service.queue.jobs import JobQueue
    from whisper_service.queue.store import open_store

    here = JobQueue(open_store(postgres_url, str(tmp_path / "here")), Recorder())
    there = open_store(postgres_url, str(tmp_path / "there"))
    elsewhere = Claimant(host="there", pid=2, token="there")

    def claim_elsewhere() -> list:
        return [row["id"] for row in there.claim(elsewhere, 60, 64, lambda rows: [rows[0]["id"]])]

    try:
        ids = [submit_bytes(here, f"{n}.mp3").id for n in range(5)]
        meanwhile = []

        def choose(rows):
            assert [row["id"] for row in rows] == ids
            meanwhile.extend(claim_elsewhere())
            return [ids[0], ids[2]]  # the oldest, and one to share its run

        taken = here.store.claim(Claimant(host="here", pid=1, token="here"), 60, 64, choose)
        assert meanwhile == [ids[1]]
        assert [row["id"] for row in taken] == [ids[0], ids[2]]

        def choose_the_next_two(rows):
            assert [row["id"] for row in rows] == ids[3:]
            meanwhile.extend(claim_elsewhere())
            return [ids[3], ids[4]]

        taken = here.store.claim(Claimant(host="here", pid=1, token="here"), 60, 64,
                                 choose_the_next_two)
        assert meanwhile == [ids[1], ids[4]]
        assert [row["id"] for row in taken] == [ids[3]]
        assert [(job.state, job.attempts) for job in map(here.get, ids)] == \
            [(JobState.RUNNING, 1)] * 5
    finally:
        here.store.close()
        there.close()


# --- through the web app -----------------------------------------------------------------

ASYNC = {"async": "1"}
FIELDS = {"temperature": "0", "beam_size": "greedy", "language": "en"}


@pytest.fixture
def web_app(backend, checkpoint, tmp_path):
    """An app whose consumer does not run (WHISPER_ROLE=web): jobs stay queued."""
    app = make_app(checkpoint, tmp_path, **backend.settings(), WHISPER_ROLE="web")
    yield app
    app.extensions["whisper_jobs"].store.close()


def _post(client, media, key, name="talk.wav", url="/api/v1/transcriptions", **fields):
    data = {"file": (io.BytesIO(media.read_bytes()), name), **FIELDS, **fields}
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(url, data=data, headers=headers, query_string=ASYNC)


class Dictating(FakeService):
    """A worker on another host that says its text a segment at a time, reporting as an
    engine does while it decodes, and goes on only once the caller has heard it."""

    def __init__(self):
        self.heard = threading.Semaphore(0)

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        said = ()
        for segment in (HELLO, WORLD):
            said += (segment,)
            deadline = time.monotonic() + WAIT
            while not self.heard.acquire(timeout=0.1):
                assert time.monotonic() < deadline, "the caller never heard " + segment.text
                progress(Progress(len(said), 3.0, said))
        return fake_transcript(" Hello world.")


def test_a_stream_on_the_web_host_sends_what_a_worker_elsewhere_finished(web_app, make_queue,
                                                                         backend, media, tmp_path):
    """stream=true on a web-only host: each delta is read from the store while the job runs
    on another host's worker, and the deltas make the done event's text."""
    if backend.shared:
        backend.root = str(tmp_path / "gpu-host")
    dictating = Dictating()
    worker = make_queue(dictating)
    worker.start()
    with open(media["speech.wav"], "rb") as f:
        response = web_app.test_client().post(
            "/v1/audio/transcriptions", buffered=False,
            data={"file": (f, "talk.wav"), "model": "whisper-1", "stream": "true", **FIELDS})
    assert response.status_code == 200
    job_id = response.headers["X-Job-Id"]
    deltas, done = [], None
    for chunk in response.response:
        for line in chunk.decode("utf-8").splitlines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: "):])
            if event["type"] == "transcript.text.delta":
                assert worker.get(job_id).state is JobState.RUNNING
                deltas.append(event["delta"])
                dictating.heard.release()
            else:
                done = event
    response.close()
    assert deltas == ["Hello", " world."]
    assert done == {"type": "transcript.text.done", "text": "Hello world."}


def test_the_same_idempotency_key_makes_one_job(web_app, media):
    client = web_app.test_client()
    wav = media["speech.wav"]
    first = _post(client, wav, "retry-1")
    again = _post(client, wav, "retry-1")
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.headers["Location"] == again.headers["Location"]
    assert web_app.extensions["whisper_jobs"].queued_count() == 1
    # the same key with another file, or other options: the key meant something else
    other_file = _post(client, media["speech.mp3"], "retry-1")
    other_options = _post(client, wav, "retry-1", language="de")
    assert (other_file.status_code, other_options.status_code) == (409, 409)
    assert other_file.get_json()["error"]["code"] == "key_reused"
    # another key, or none, is another job
    assert _post(client, wav, "retry-2").headers["Location"] != first.headers["Location"]
    assert _post(client, wav, None).status_code == 202
    assert web_app.extensions["whisper_jobs"].queued_count() == 3
    too_long = _post(client, wav, "k" * 256)
    assert too_long.status_code == 400 and "Idempotency-Key" in too_long.get_json()["error"]["message"]
    assert web_app.extensions["whisper_jobs"].queued_count() == 3


def test_metrics_and_a_web_only_readyz_read_the_shared_store(web_app, media):
    client = web_app.test_client()
    for key in ("a", "b"):
        assert _post(client, media["speech.wav"], key).status_code == 202
    ready = client.get("/readyz")
    body = ready.get_json()
    assert ready.status_code == 200, body
    assert (body["status"], body["role"], body["queued"], body["workers"]) == ("ready", "web", 2, [])
    assert "no worker" in body["notice"]

    # a worker elsewhere beats into the same store
    web_app.extensions["whisper_jobs"].store.beat_worker(
        "gpu-host:1:abc", {"host": "gpu-host", "device": "cuda:0", "running": 1,
                           "gpu_utilization": 0.75})
    assert [w["device"] for w in client.get("/readyz").get_json()["workers"]] == ["cuda:0"]
    text = client.get("/metrics").get_data(as_text=True)
    assert client.get("/metrics").content_type.startswith("text/plain; version=0.0.4")
    assert re.search(r'^whisper_jobs\{state="queued"\} 2$', text, re.M)
    assert re.search(r'^whisper_jobs\{state="done"\} 0$', text, re.M)
    assert re.search(r"^whisper_jobs_done_total 0\.0$", text, re.M)
    assert re.search(r"^whisper_workers 1$", text, re.M)
    assert re.search(r'^whisper_gpu_utilization_ratio\{worker="gpu-host:1:abc",host="gpu-host",'
                     r'device="cuda:0"\} 0\.75$', text, re.M)
    assert "# TYPE whisper_audio_seconds_total counter" in text


def test_metrics_need_the_api_key_when_there_are_keys(checkpoint, tmp_path):
    app = make_app(checkpoint, tmp_path, WHISPER_API_KEYS="k1", WHISPER_ROLE="web")
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer k1"})
    assert response.status_code == 200 and "whisper_jobs{" in response.get_data(as_text=True)


# --- corrections and the picture of the audio: kept beside the model's transcript ---------


class Lines(Recorder):
    """Answers a transcript of two lines by two speakers."""

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        progress(Progress(1.0, 1.0))
        segments = tuple(Segment(id=i, seek=0, start=float(i), end=i + 0.8, text=text, tokens=(),
                                 temperature=0.0, avg_logprob=-0.2, compression_ratio=1.2,
                                 no_speech_prob=0.0, speaker=f"S{i + 1}")
                         for i, text in enumerate((" First line.", " Second line.")))
        return Transcript(task="transcribe", language="en", language_probability=1.0,
                          duration=2.0, model="fake-model", text=" First line. Second line.",
                          segments=segments,
                          speakers=(Speaker("S1", "Speaker 1"), Speaker("S2", "Speaker 2")))


def test_side_files_are_kept_only_beside_a_transcript_and_go_with_the_job(make_queue, backend):
    queue = make_queue(Blocker())
    job = submit_bytes(queue, "talk.mp3")
    assert queue.store.put_side_file(job.id, EDITED_FILE, "{}") is False  # not done
    assert queue.store.side_file(job.id, EDITED_FILE) is None
    done = make_queue(Lines())
    done.start()
    job = submit_bytes(done, "talk.mp3")
    wait_finished(done, job.id)
    store = done.store
    assert store.put_side_file(job.id, ENVELOPE_FILE, '{"levels": "AAE="}') is True
    assert store.side_file(job.id, ENVELOPE_FILE) == '{"levels": "AAE="}'
    assert store.put_side_file(job.id, ENVELOPE_FILE, None) is True
    assert store.put_side_file(job.id, ENVELOPE_FILE, None) is True  # gone already: fine
    assert store.side_file(job.id, ENVELOPE_FILE) is None
    with pytest.raises(ValueError):
        store.side_file(job.id, "../media")
    store.put_side_file(job.id, EDITED_FILE, "{}")
    assert done.delete(job.id)
    assert store.side_file(job.id, EDITED_FILE) is None
    assert store.put_side_file(job.id, EDITED_FILE, "{}") is False


def test_corrections_are_kept_beside_the_model_output_across_restarts(make_queue, backend):
    queue = make_queue(Lines())
    queue.start()
    job = submit_bytes(queue, "talk.mp3")
    wait_finished(queue, job.id)
    assert not queue.is_edited(job.id)  # a job from before corrections existed reads the same
    edited = queue.edit_transcript(job.id, parse_edits({"edits": [
        {"op": "text", "segment": 0, "text": "The first line."},
        {"op": "speaker", "segment": 1, "speaker": "S1"}]}))
    assert [s.text for s in edited.segments] == [" The first line.", " Second line."]
    queue.stop(timeout=5)
    again = make_queue(Recorder())  # a restart: a new process opens the same store
    assert again.is_edited(job.id)
    assert again.transcript(job.id) == edited
    assert again.original_transcript(job.id).segments[0].text == " First line."
    assert again.rename_speakers(job.id, {"S1": "Ana"})
    assert again.transcript(job.id).speakers[0].name == "Ana"
    assert again.original_transcript(job.id).speakers[0].name == "Ana"
    assert again.transcript(job.id).segments[0].text == " The first line."
    assert again.restore_transcript(job.id)
    assert not again.is_edited(job.id)
    assert again.transcript(job.id).segments[1].speaker == "S2"
    with pytest.raises(BadOption, match=r"edits\[0\].segment: line 5 does not exist"):
        again.edit_transcript(job.id, parse_edits({"edits": [{"op": "merge", "segment": 5}]}))
    assert not again.is_edited(job.id)  # nothing was kept of a refused edit


def test_the_loudness_picture_is_computed_once_and_kept(make_queue, backend):
    queue = make_queue(Lines())
    queue.start()
    job = submit_bytes(queue, "talk.mp3")
    wait_finished(queue, job.id)
    decoded = []

    def decode(path):
        decoded.append(path)
        return np.full(16000 * 2, 0.1, dtype=np.float32)

    first = queue.envelope(job.id, decode)
    assert (first["duration"], first["bins"]) == (2.0, MIN_BINS)
    assert queue.envelope(job.id, decode) == first
    assert len(decoded) == 1
    assert queue.envelope("A" * 22, decode) is None
