"""The job queue: uploads become jobs that consumers run in order, survive restarts,
can be cancelled and deleted, and never run twice at once. Every test runs against both
stores (SQLite and folders; a real PostgreSQL), so the two cannot drift apart."""

from __future__ import annotations

import io
import multiprocessing
import os
import secrets
import signal
import threading
import time
from collections import Counter
from dataclasses import replace
from typing import List

import pytest

from conftest import wait_until
from whisper_service.errors import ServiceError, NotMedia
from whisper_service.queue.jobs import Job, JobQueue, JobState, QueueFull
from whisper_service.options import SubtitleLayout, TranscribeOptions
from whisper_service.progress import Progress
from whisper_service.queue.store import open_store
from whisper_service.transcript import Transcript

FAST = TranscribeOptions(temperature=(0.0,), beam_size=2)  # one short beam: a fast real run
WAIT = 20.0  # generous: a slow CI machine must not fail a correct queue


def wait_finished(queue: JobQueue, job_id: str) -> Job:
    wait_until(lambda: queue.get(job_id).finished, WAIT, what=f"job {job_id}")
    return queue.get(job_id)


def job_id_of(path: str) -> str:
    return os.path.basename(os.path.dirname(path))


def fake_transcript(text: str) -> Transcript:
    return Transcript(task="transcribe", language="en", language_probability=1.0,
                      duration=1.0, model="fake-model", text=text)


class FakeService:
    """Accepts any bytes as media; subclasses say what transcribing does."""

    def check_upload(self, path, options, display_name=None):
        return None

    def prefetch(self, path, display_name=None):
        return None

    def share_key(self, options):
        return None  # every job runs alone


class Recorder(FakeService):
    """Answers at once (or after `delay`), noting the order of the jobs it ran."""

    def __init__(self, text: str = "fake", delay: float = 0.0, seen: List[str] = None):
        self.text = text
        self.delay = delay
        self.seen = [] if seen is None else seen
        self.prefetched: List[str] = []

    def prefetch(self, path, display_name=None):
        self.prefetched.append(job_id_of(path))

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        self.seen.append(job_id_of(path))
        time.sleep(self.delay)
        progress(Progress(1.0, 1.0))
        return fake_transcript(self.text)


class Blocker(FakeService):
    """Blocks inside the model until released: a job caught mid-run by a stop or a crash."""

    def __init__(self, running=None, release=None):
        self.running = running or threading.Event()
        self.release = release or threading.Event()
        self.returned = threading.Event()

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        self.running.set()
        self.release.wait(WAIT)
        self.returned.set()
        return fake_transcript("stale")


class Endless(FakeService):
    """Reports progress until the queue stops it; names other than 'endless' finish."""

    def __init__(self):
        self.started = threading.Event()
        self.aborted = threading.Event()

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        if display_name != "endless":
            return fake_transcript("quick")
        self.started.set()
        try:
            for step in range(int(WAIT / 0.01)):
                progress(Progress(step, 1000.0))
                time.sleep(0.01)
        except Exception:
            self.aborted.set()
            raise
        return fake_transcript("never stopped")


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path / "jobs")


class Backend:
    """One of the stores, and what a test needs to know of it: sqlite, postgres (files in
    the database) or s3 (PostgreSQL for state, files as objects in a real S3 server)."""

    def __init__(self, name: str, url: str, root: str, object_store: str = ""):
        self.name, self.url, self.root = name, url, root
        self.object_store = object_store  # WHISPER_OBJECT_STORE, for s3

    @property
    def keeps_uploads(self) -> bool:
        """Whether the host an upload came in on keeps a copy (with an object store, only
        the object stays: the web host's disk holds uploads on their way in)."""
        return self.name != "s3"

    @property
    def shared(self) -> bool:
        """Whether hosts share it (each with a local folder of its own)."""
        return self.name != "sqlite"

    def store(self, root: str = ""):
        """The store as a host whose local folder is root (the test's own by default)."""
        return open_store(self.url, root or self.root, self.object_store)

    def settings(self) -> dict:
        """The WHISPER_* settings of a server on this store."""
        found = {"WHISPER_DATABASE_URL": self.url}
        if self.object_store:
            found["WHISPER_OBJECT_STORE"] = self.object_store
        return found

    def set_column(self, job_id: str, column: str, value) -> None:
        """Change a row behind the queue's back (a test's stand-in for history)."""
        if self.name == "sqlite":
            import sqlite3

            with sqlite3.connect(os.path.join(self.root, "jobs.sqlite3")) as db:
                db.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, job_id))
        else:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as db:
                db.execute(f"UPDATE jobs SET {column} = %s WHERE id = %s", (value, job_id))

    def local_files(self, job_id: str) -> List[str]:
        """What a done job leaves in the local folder: SQLite keeps everything there; the
        PostgreSQL store keeps the transcript in the database and the upload there too."""
        if self.name == "sqlite":
            return [f"{job_id}/media", f"{job_id}/transcript.json"]
        return [f"{job_id}/media"]


@pytest.fixture(params=["sqlite", "postgres", "s3"])
def backend(request, root) -> Backend:
    url = request.getfixturevalue("postgres_url") if request.param != "sqlite" else ""
    objects = request.getfixturevalue("object_store") if request.param == "s3" else ""
    return Backend(request.param, url, root, objects)


@pytest.fixture
def make_queue(backend):
    queues = []

    def make(service, **kwargs) -> JobQueue:
        queue = JobQueue(backend.store(), service, **kwargs)
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.stop(timeout=5)
        queue.store.close()


def submit_bytes(queue: JobQueue, name: str, data: bytes = b"audio") -> Job:
    return queue.submit(io.BytesIO(data), name, FAST)


def files_under(root: str) -> List[str]:
    found = []
    for folder, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return sorted(f for f in found if not f.startswith("jobs.sqlite3"))


class ProgressSpy:
    """The real service, noting every progress fraction it reports."""

    def __init__(self, service):
        self.service = service
        self.fractions: List[float] = []
        self.check_upload = service.check_upload
        self.prefetch = service.prefetch
        self.share_key = service.share_key

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        def spy(report: Progress) -> None:
            self.fractions.append(report.fraction)
            progress(report)

        return self.service.transcribe_file(path, options, display_name=display_name,
                                            progress=spy)


def test_a_job_gives_the_same_transcript_as_the_service(service, media, make_queue, root,
                                                        backend):
    direct = service.transcribe_file(str(media["speech.wav"]), FAST)
    spy = ProgressSpy(service)
    queue = make_queue(spy)
    client_name = "../talks/My talk?.wav"
    with open(media["speech.wav"], "rb") as upload:
        job = queue.submit(upload, client_name, FAST)
    assert (job.state, job.position, job.progress, job.attempts) == (JobState.QUEUED, 1, 0.0, 0)
    assert job.filename == client_name and not job.finished

    queue.start()
    done = wait_finished(queue, job.id)

    assert done.state is JobState.DONE, done.error
    assert (done.progress, done.position, done.error, done.attempts) == (1.0, None, None, 1)
    assert done.model == direct.model
    assert done.created_at <= done.started_at <= done.finished_at
    assert queue.transcript(job.id) == direct
    assert spy.fractions[-1] == 1.0 and spy.fractions == sorted(spy.fractions)
    # the client's name is data only: the files are the id's folder and nothing else
    assert files_under(root) == backend.local_files(job.id)
    assert done.media_path == os.path.join(root, job.id, "media")
    assert open(done.media_path, "rb").read() == media["speech.wav"].read_bytes()


def test_options_survive_the_database(make_queue):
    options = TranscribeOptions(
        language="ko", beam_size=None, temperature=(0.0, 0.4), word_timestamps=True,
        layout=SubtitleLayout(max_line_width=30, max_line_count=2),
    )
    queue = make_queue(Recorder())
    job = queue.submit(io.BytesIO(b"x"), "a.mp3", options)
    assert queue.get(job.id).options == options


def test_jobs_run_oldest_first(make_queue):
    recorder = Recorder()
    queue = make_queue(recorder)
    jobs = [submit_bytes(queue, f"part {n}.mp3") for n in range(4)]
    ids = [job.id for job in jobs]
    assert [job.position for job in jobs] == [1, 2, 3, 4]
    # a browser's list: newest first, unknown and malformed ids skipped, duplicates once
    listed = queue.list([ids[0], "../etc", secrets.token_urlsafe(16), *ids, ""])
    assert [job.id for job in listed] == ids[::-1]

    queue.start()
    finished = [wait_finished(queue, job_id) for job_id in ids]

    assert recorder.seen == ids
    # each job, as it starts, has the next one's audio decoded ahead
    assert recorder.prefetched == ids[1:]
    assert [job.state for job in finished] == [JobState.DONE] * 4
    assert [queue.transcript(job_id).text for job_id in ids] == ["fake"] * 4


class Sharer(FakeService):
    """Jobs whose language is set share runs; the file named 'bad' fails on its own."""

    def __init__(self):
        self.runs: List[List[str]] = []

    def share_key(self, options):
        return options.language

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        self.runs.append([display_name])
        progress(Progress(1.0, 1.0))
        return fake_transcript(f"alone {display_name}")

    def transcribe_together(self, files):
        self.runs.append([name for _, _, name, _ in files])
        outcomes = []
        for _, _, name, progress in files:
            progress(Progress(1.0, 1.0))
            outcomes.append(NotMedia(f"'{name}' is not media") if name == "bad"
                            else fake_transcript(f"together {name}"))
        return outcomes


def test_queued_jobs_that_can_share_batches_run_together(make_queue):
    sharer = Sharer()
    queue = make_queue(sharer)
    english = TranscribeOptions(language="en", temperature=(0.0,))
    jobs = {
        "first": queue.submit(io.BytesIO(b"a"), "first", english),
        "alone": queue.submit(io.BytesIO(b"b"), "alone", FAST),  # language auto: no key
        "bad": queue.submit(io.BytesIO(b"c"), "bad", english),
        "korean": queue.submit(io.BytesIO(b"d"), "korean", replace(english, language="ko")),
        "last": queue.submit(io.BytesIO(b"e"), "last", english),
    }
    queue.start()
    done = {name: wait_finished(queue, job.id) for name, job in jobs.items()}

    # the oldest job takes the later ones with its key along; the others keep their order
    assert sharer.runs == [["first", "bad", "last"], ["alone"], ["korean"]]
    assert queue.transcript(jobs["first"].id).text == "together first"
    assert queue.transcript(jobs["last"].id).text == "together last"
    assert queue.transcript(jobs["alone"].id).text == "alone alone"
    assert done["bad"].state is JobState.FAILED and "'bad' is not media" in done["bad"].error
    assert done["bad"].error_kind == "NotMedia"
    assert all(done[n].state is JobState.DONE for n in ("first", "last", "alone", "korean"))


def test_a_job_tried_before_runs_alone(make_queue, backend):
    """A job that crashed the server once must not take the jobs beside it down again."""
    sharer = Sharer()
    queue = make_queue(sharer)
    english = TranscribeOptions(language="en", temperature=(0.0,))
    ids = [queue.submit(io.BytesIO(b"a"), name, english).id for name in ("crashed", "b", "c")]
    backend.set_column(ids[0], "attempts", 1)
    queue.start()
    assert [wait_finished(queue, i).state for i in ids] == [JobState.DONE] * 3
    assert sharer.runs == [["crashed"], ["b", "c"]]


def test_shared_jobs_of_one_runs_every_job_alone(make_queue):
    sharer = Sharer()
    queue = make_queue(sharer, shared_jobs=1)
    english = TranscribeOptions(language="en", temperature=(0.0,))
    ids = [queue.submit(io.BytesIO(b"a"), name, english).id for name in ("one", "two")]
    queue.start()
    assert [wait_finished(queue, i).state for i in ids] == [JobState.DONE] * 2
    assert sharer.runs == [["one"], ["two"]]


# the engine's sharing, not the store's: the Sharer tests cover sharing on both stores
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_shared_runs_with_the_real_engine_equal_runs_alone(service, media, make_queue):
    batched = TranscribeOptions(mode="batched", beam_size=2, language="en", temperature=(0.0,))
    expected = {name: service.transcribe_file(str(media[name]), batched)
                for name in ("speech.wav", "speech.mp3")}
    calls = []
    real_together = service.transcribe_together

    def spy(files):
        calls.append([name for _, _, name, _ in files])
        return real_together(files)

    service.transcribe_together = spy
    queue = make_queue(service)
    ids = {}
    for name in ("speech.wav", "speech.mp3"):
        with open(media[name], "rb") as upload:
            ids[name] = queue.submit(upload, name, batched).id
    queue.start()
    for name, job_id in ids.items():
        assert wait_finished(queue, job_id).state is JobState.DONE
        got = queue.transcript(job_id)
        assert [s.tokens for s in got.segments] == [s.tokens for s in expected[name].segments]
        assert got.text == expected[name].text
    assert calls == [["speech.wav", "speech.mp3"]]


def test_media_that_is_not_audio_is_refused_at_submit_and_nothing_kept(service, media, make_queue, root):
    queue = make_queue(service)
    with open(media["notes.mp3"], "rb") as upload:
        with pytest.raises(NotMedia, match="'notes.mp3' is not an audio or video file"):
            queue.submit(upload, "notes.mp3", FAST)
    assert files_under(root) == []
    assert queue.list([]) == []


def test_a_truncated_file_fails_with_the_decoders_sentence(service, media, make_queue):
    queue = make_queue(service)
    with open(media["truncated.mp3"], "rb") as upload:
        job = queue.submit(upload, "truncated.mp3", FAST)  # its start decodes fine
    queue.start()
    failed = wait_finished(queue, job.id)
    assert failed.state is JobState.FAILED
    assert "'truncated.mp3' is truncated" in failed.error
    assert failed.attempts == 1  # the file is at fault: no retry
    assert queue.transcript(job.id) is None


class Flaky(FakeService):
    """'broken' always fails, 'flaky' fails once, anything else works."""

    def __init__(self):
        self.seen: List[str] = []

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        self.seen.append(display_name)
        if display_name == "broken" or (display_name == "flaky" and self.seen.count("flaky") == 1):
            raise RuntimeError("GPU fell over")
        return fake_transcript(display_name)


def test_unexpected_errors_are_retried_then_fail(make_queue):
    flaky = Flaky()
    queue = make_queue(flaky, max_attempts=3)
    jobs = [submit_bytes(queue, name) for name in ("broken", "flaky", "fine")]
    queue.start()
    broken, recovered, fine = [wait_finished(queue, job.id) for job in jobs]

    assert broken.state is JobState.FAILED
    # people read a sentence; the operator's detail keeps the error's own words
    assert broken.error == "The transcription failed on the server. It was tried 3 times."
    assert broken.error_detail == "failed 3 times; the last time: RuntimeError: GPU fell over"
    assert broken.attempts == 3
    assert (recovered.state, recovered.attempts, recovered.error) == (JobState.DONE, 2, None)
    assert (fine.state, fine.attempts, fine.progress) == (JobState.DONE, 1, 1.0)
    # a retried job keeps its place at the front of the queue
    assert flaky.seen == ["broken"] * 3 + ["flaky"] * 2 + ["fine"]


def test_a_full_queue_refuses_before_writing(make_queue, root, backend):
    queue = make_queue(Recorder(), max_queued=2)
    first = submit_bytes(queue, "one.mp3")
    submit_bytes(queue, "two.mp3")
    upload = io.BytesIO(b"refused audio")

    with pytest.raises(QueueFull) as refused:
        queue.submit(upload, "three.mp3", FAST)

    assert isinstance(refused.value, ServiceError)
    assert "busy: 2 files are waiting" in str(refused.value)
    assert refused.value.retry_after > 0
    assert upload.tell() == 0
    # the two accepted uploads' media, nothing more
    assert len(files_under(root)) == (2 if backend.keeps_uploads else 0)
    queue.cancel(first.id)  # a place frees up
    assert submit_bytes(queue, "three.mp3").position == 2


def test_a_job_left_running_by_a_stopped_queue_runs_again(make_queue):
    blocker = Blocker()
    first = make_queue(blocker)
    job = submit_bytes(first, "talk.mp3")
    first.start()
    try:
        assert blocker.running.wait(WAIT)
        first.stop(timeout=0.1)  # the job is stuck in the model: left for the next start
        assert first.get(job.id).state is JobState.RUNNING

        recorder = Recorder(text="second run")
        second = make_queue(recorder)  # as after a restart
        second.start()
        done = wait_finished(second, job.id)
        assert (done.state, done.attempts) == (JobState.DONE, 2)
        assert recorder.seen == [job.id]
    finally:
        blocker.release.set()
    # the first run ends late: its result must not replace the second's
    assert blocker.returned.wait(WAIT)
    time.sleep(0.3)
    assert second.transcript(job.id).text == "second run"
    assert second.get(job.id).state is JobState.DONE


def test_a_job_that_keeps_taking_the_server_down_fails(make_queue):
    blockers = [Blocker(), Blocker()]
    try:
        for run, blocker in enumerate(blockers, start=1):
            queue = make_queue(blocker, max_attempts=2)
            if run == 1:
                job = submit_bytes(queue, "poison.mp3")
            queue.start()
            assert blocker.running.wait(WAIT)
            queue.stop(timeout=0.1)  # as if the process died mid-job
        recorder = Recorder()
        last = make_queue(recorder, max_attempts=2)
        last.start()
        failed = last.get(job.id)
        assert failed.state is JobState.FAILED
        assert failed.error == ("The server stopped while transcribing this file. "
                                "It was tried 2 times.")
        assert recorder.seen == []
    finally:
        for blocker in blockers:
            blocker.release.set()


def _consume_in_child(url: str, root: str, objects: str, running) -> None:
    JobQueue(open_store(url, root, objects), Blocker(running)).start()
    time.sleep(WAIT)  # until killed
    os._exit(0)


def test_a_live_process_keeps_its_job_and_a_killed_ones_job_is_recovered(make_queue, backend):
    recorder = Recorder()
    queue = make_queue(recorder)
    job = submit_bytes(queue, "talk.mp3")
    fork = multiprocessing.get_context("fork")
    running = fork.Event()
    child = fork.Process(target=_consume_in_child, args=(backend.url, backend.root, backend.object_store,
                                                                 running))
    child.start()
    try:
        assert running.wait(WAIT)
        queue.start()  # recovers at start: the child is alive, its job is not touched
        assert queue.recover() == 0
        time.sleep(0.2)
        assert queue.get(job.id).state is JobState.RUNNING and recorder.seen == []

        os.kill(child.pid, signal.SIGKILL)
        child.join(WAIT)
        assert queue.recover() == 1
        done = wait_finished(queue, job.id)
        assert (done.state, done.attempts) == (JobState.DONE, 2)
        assert recorder.seen == [job.id]
    finally:
        if child.is_alive():
            child.kill()
        child.join(WAIT)


def test_cancel_a_queued_job(make_queue):
    recorder = Recorder()
    queue = make_queue(recorder)
    dropped, kept = submit_bytes(queue, "a.mp3"), submit_bytes(queue, "b.mp3")

    cancelled = queue.cancel(dropped.id)

    assert (cancelled.state, cancelled.position) == (JobState.CANCELLED, None)
    assert cancelled.finished and cancelled.finished_at is not None
    assert queue.get(kept.id).position == 1
    queue.start()
    assert wait_finished(queue, kept.id).state is JobState.DONE
    assert recorder.seen == [kept.id]
    assert queue.cancel(kept.id).state is JobState.DONE  # too late: nothing changes
    assert queue.cancel(secrets.token_urlsafe(16)) is None


def test_cancel_a_running_job(make_queue):
    endless = Endless()
    queue = make_queue(endless)
    job = submit_bytes(queue, "endless")
    queue.start()
    assert endless.started.wait(WAIT)
    # the first estimate comes once a stretch of audio was measured (pace.py)
    wait_until(lambda: queue.get(job.id).progress > 0 and queue.get(job.id).eta_seconds)
    running = queue.get(job.id)
    assert running.state is JobState.RUNNING and 0 < running.progress < 1
    assert running.eta_seconds > 0

    asked = queue.cancel(job.id)

    assert (asked.state, asked.cancel_requested) == (JobState.RUNNING, True)
    cancelled = wait_finished(queue, job.id)
    assert (cancelled.state, cancelled.error, cancelled.attempts) == (JobState.CANCELLED, None, 1)
    assert endless.aborted.is_set()
    assert queue.transcript(job.id) is None
    # the consumer goes on with the next job
    after = submit_bytes(queue, "after")
    assert wait_finished(queue, after.id).state is JobState.DONE


def test_delete_removes_row_and_files(make_queue, root):
    queue = make_queue(Recorder())
    job = submit_bytes(queue, "talk.mp3")
    queue.start()
    wait_finished(queue, job.id)
    assert os.path.isdir(os.path.join(root, job.id))

    assert queue.delete(job.id) is True

    assert queue.get(job.id) is None and queue.transcript(job.id) is None
    assert queue.list([job.id]) == []
    assert not os.path.exists(os.path.join(root, job.id))
    assert queue.delete(job.id) is False


def test_delete_a_running_job_stops_it(make_queue, root):
    endless = Endless()
    queue = make_queue(endless)
    job = submit_bytes(queue, "endless")
    queue.start()
    assert endless.started.wait(WAIT)

    assert queue.delete(job.id) is True

    assert endless.aborted.wait(WAIT)
    assert queue.get(job.id) is None and not os.path.exists(os.path.join(root, job.id))
    after = submit_bytes(queue, "after")
    assert wait_finished(queue, after.id).state is JobState.DONE


@pytest.mark.parametrize("bad_id", [
    "", "../etc", "../../../../etc/passwd", "jobs.sqlite3", "a" * 22 + "\n", "a" * 21 + "/",
    None, "unknown-job-id-0123456",  # the shape of an id, but no such job
])
def test_unknown_or_malformed_ids_find_nothing(make_queue, bad_id):
    queue = make_queue(Recorder())
    submit_bytes(queue, "talk.mp3")
    assert queue.get(bad_id) is None
    assert queue.transcript(bad_id) is None
    assert queue.cancel(bad_id) is None
    assert queue.delete(bad_id) is False


def test_purge_removes_only_old_finished_jobs(make_queue, root, backend):
    # an hour's retention; the old jobs are made old by their rows, not by waiting, so a
    # slow machine cannot age the recent one past it
    queue = make_queue(Recorder(), retention_seconds=3600.0)
    two_hours_ago = time.time() - 2 * 3600
    old = submit_bytes(queue, "old.mp3")
    queue.cancel(old.id)
    backend.set_column(old.id, "finished_at", two_hours_ago)
    waiting = submit_bytes(queue, "waiting.mp3")  # old too, but not finished
    backend.set_column(waiting.id, "created_at", two_hours_ago)
    stray_old, stray_young = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    for stray in (stray_old, stray_young, "not-a-job-folder"):
        os.makedirs(os.path.join(root, stray))
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(os.path.join(root, stray_old), (two_days_ago, two_days_ago))
    recent = submit_bytes(queue, "recent.mp3")
    queue.cancel(recent.id)

    assert queue.purge_expired() == 1

    assert queue.get(old.id) is None and not os.path.exists(os.path.join(root, old.id))
    assert queue.get(recent.id).state is JobState.CANCELLED
    assert queue.get(waiting.id).state is JobState.QUEUED
    assert queue.store.media_path(recent.id) == os.path.join(root, recent.id, "media")
    # a folder no row names is debris once it is old; other folders are not ours
    assert not os.path.exists(os.path.join(root, stray_old))
    assert os.path.isdir(os.path.join(root, stray_young))
    assert os.path.isdir(os.path.join(root, "not-a-job-folder"))


def test_two_consumers_never_run_a_job_twice(make_queue):
    seen: List[str] = []
    first = make_queue(Recorder(delay=0.05, seen=seen))
    second = make_queue(Recorder(delay=0.05, seen=seen))
    ids = [submit_bytes(first, f"{n}.mp3").id for n in range(6)]
    first.start()
    wait_until(lambda: seen)  # the first queue is running a job ...
    second.start()  # ... which the second one's recovery must leave alone

    finished = [wait_finished(second, job_id) for job_id in ids]

    assert Counter(seen) == Counter(ids)
    assert all(job.state is JobState.DONE and job.attempts == 1 for job in finished)


def test_many_consumers_claim_each_job_once(make_queue):
    seen: List[str] = []
    queues = [make_queue(Recorder(seen=seen), workers=3) for _ in range(3)]
    ids = [submit_bytes(queues[0], f"{n}.mp3").id for n in range(30)]
    for queue in queues:
        queue.start()

    finished = [wait_finished(queues[0], job_id) for job_id in ids]

    assert Counter(seen) == Counter(ids)
    assert all(job.state is JobState.DONE and job.attempts == 1 for job in finished)
