"""A persistent queue of transcription jobs: an upload in, a transcript out, minutes later.

Every upload becomes a job. HTTP threads only submit and read jobs; consumer threads take
queued jobs oldest first and run the model. State lives in SQLite (root/jobs.sqlite3, WAL)
and files in one folder per random job id (root/<id>/media, root/<id>/transcript.json);
the client's file name is kept only as data, never as a path.

Several processes (gunicorn workers) may share one root. Every change of state happens in
one short `BEGIN IMMEDIATE` transaction, so two consumers never claim the same job, and a
consumer writes to a job only while the row still names its claim token: a job that was
deleted, or recovered by another consumer after this one was presumed gone, is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import statistics
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence

from . import cancel
from .progress import Progress
from .errors import ServiceError
from .options import SubtitleLayout, TranscribeOptions
from .transcript import Transcript

log = logging.getLogger(__name__)

DB_FILE = "jobs.sqlite3"
MEDIA_FILE = "media"
TRANSCRIPT_FILE = "transcript.json"
ID_BYTES = 16  # 128 random bits: unguessable, so an id is the capability to read a job
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # what secrets.token_urlsafe(16) yields
DEFAULT_FILENAME = "upload"
COPY_CHUNK = 1 << 20
BUSY_TIMEOUT_SECONDS = 30.0  # how long a statement waits for another writer's lock
POLL_SECONDS = 1.0  # an idle consumer looks for work this often (other processes submit too)
WAIT_POLL_SECONDS = 0.1  # how often a synchronous caller looks at its job
PROGRESS_SECONDS = 0.5  # at most two progress writes per second per job
HOUSEKEEPING_SECONDS = 300.0  # recover orphans and purge expired jobs this often
STRAY_SECONDS = 24 * 3600.0  # a folder without a row this old is debris of a crash
RETRY_AFTER_SECONDS = 120  # what a refused client is told to wait
SHARE_LOOKAHEAD = 64  # queued jobs looked at for ones that can share a run
RUNS_FOR_ESTIMATE = 20  # recent finished runs a queued job's expected wait is taken from
CANCEL_POLL_SECONDS = 0.25  # how often a running job looks for a cancel from another process
ORPHAN_REASON = "the server stopped while transcribing it"
MAX_FILENAME_CHARS = 255  # the longest name kept of an upload (a file system's limit)
MAX_ERROR_CHARS = 1000  # the longest reason kept for a failed job
# Unicode categories never kept in a name: controls (CR, LF, NUL), format characters (the
# bidi overrides that make 'exe.mp3' read 'mp3.exe'), line and paragraph separators
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: the queue is FIFO on it
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    filename TEXT NOT NULL,
    options TEXT NOT NULL,                  -- TranscribeOptions as JSON
    created_at REAL NOT NULL,
    started_at REAL,                        -- start of the current or last attempt
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    eta_seconds REAL,
    error TEXT,
    error_kind TEXT,                        -- the ServiceError class of a failed job, if any
    error_field TEXT,                       -- ... and the field it blamed
    attempts INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    media_type TEXT,                        -- the upload's type, from its content (audio.MediaInfo)
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    claim_pid INTEGER,                      -- the process running it ...
    claim_token TEXT                        -- ... and which start() of that process
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
"""
# a queued job's 1-based place: the queued jobs submitted before it, and itself
_SELECT = """
SELECT *, CASE WHEN state = 'queued' THEN
    (SELECT COUNT(*) FROM jobs AS ahead WHERE ahead.state = 'queued' AND ahead.seq <= jobs.seq)
    END AS position
FROM jobs
"""


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    filename: str  # as the client named it; display only
    options: TranscribeOptions
    created_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    progress: float  # 0..1
    eta_seconds: Optional[float]  # while running, from the rate of progress so far
    position: Optional[int]  # 1-based place in the queue while queued
    error: Optional[str]  # why a failed job failed, as a sentence for people
    error_kind: Optional[str]  # the ServiceError class behind it ("TruncatedMedia"), if any
    error_field: Optional[str]  # the option or "file" that error blamed
    attempts: int
    model: Optional[str]  # the model that produced the transcript
    media_type: Optional[str]  # what the upload's content is (never guessed from its name)
    cancel_requested: bool  # a running job stops at its next progress report
    media_path: str

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


class QueueFull(ServiceError):
    """Too many jobs are waiting; the client should come back later."""

    def __init__(self, waiting: int, retry_after: int = RETRY_AFTER_SECONDS):
        super().__init__(
            f"the server is busy: {waiting} files are waiting; try again in a few minutes"
        )
        self.retry_after = retry_after


class _Aborted(Exception):
    """Raised from the progress callback: the job was cancelled, deleted or taken over."""


# Orphaned running jobs. A consumer stamps a job it claims with its pid and a token made
# fresh by each JobQueue.start(); tokens of queues started and not stopped in this process
# are "live". A running job is orphaned when its pid is not alive (crash, kill, restart),
# or when the pid is ours but the token is not live (a stopped queue, or an earlier process
# whose pid we reused). A live pid of another process is never stolen from; that process
# recovers its own jobs when it restarts. (Pids say nothing across hosts or containers, so
# a root must not be shared between them.)
_LIVE_TOKENS: set = set()
_LIVE_LOCK = threading.Lock()


def _orphaned(pid: Optional[int], token: Optional[str]) -> bool:
    if pid == os.getpid():
        with _LIVE_LOCK:
            return token not in _LIVE_TOKENS
    return not _pid_alive(pid)


def _pid_alive(pid: Optional[int]) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def valid_id(job_id: object) -> bool:
    """Whether job_id has the shape of an id we issue; anything else never reaches a path."""
    return isinstance(job_id, str) and _ID_PATTERN.fullmatch(job_id) is not None


def clean_filename(name: Optional[str]) -> str:
    """The client's file name as it may be shown and sent back: without control, format
    (bidi) or separator characters, at most MAX_FILENAME_CHARS, keeping its extension."""
    kept = "".join(
        c for c in (name or "") if unicodedata.category(c) not in _UNSAFE_CATEGORIES
    ).strip()
    if len(kept) > MAX_FILENAME_CHARS:
        stem, dot, extension = kept.rpartition(".")
        extension = extension[:16] if dot and stem else ""
        room = MAX_FILENAME_CHARS - len(extension) - 1
        kept = kept[:room].rstrip() + ("." + extension if extension else "")
    return kept or DEFAULT_FILENAME


def options_to_json(options: TranscribeOptions) -> str:
    return json.dumps(asdict(options))


def options_from_json(text: str) -> TranscribeOptions:
    data = _known_fields(TranscribeOptions, json.loads(text))
    data["layout"] = SubtitleLayout(**_known_fields(SubtitleLayout, data.get("layout") or {}))
    if "temperature" in data:
        data["temperature"] = tuple(data["temperature"])
    return TranscribeOptions(**data)


def _known_fields(cls: type, data: dict) -> dict:
    # a job stored by an older version may name an option that no longer exists
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


class JobQueue:
    def __init__(
        self,
        root: str,
        service,
        *,
        max_queued: int = 100,
        max_attempts: int = 3,
        retention_seconds: float = 7 * 24 * 3600,
        workers: int = 1,
        shared_jobs: int = 8,
    ):
        self.root = root
        self.service = service
        self.max_queued = max_queued
        self.max_attempts = max_attempts
        self.retention_seconds = retention_seconds
        self.workers = workers
        self.shared_jobs = shared_jobs  # jobs at most that one run transcribes together
        self._db_path = os.path.join(root, DB_FILE)
        self._lock = threading.Lock()  # guards start() and stop()
        self._wake = threading.Event()  # set when there may be work for this process
        self._threads: List[threading.Thread] = []
        self._token: Optional[str] = None
        self._stopping = threading.Event()
        self._next_housekeeping = 0.0
        os.makedirs(root, exist_ok=True)
        self._cancels: Dict[str, threading.Event] = {}  # running here: id -> asked to stop
        self._cancels_lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            db.executescript(_SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "media_type" not in columns:  # a database written by an older version
                db.execute("ALTER TABLE jobs ADD COLUMN media_type TEXT")

    # --- what HTTP threads call ----------------------------------------------------------

    def submit(self, stream: BinaryIO, filename: str, options: TranscribeOptions) -> Job:
        """Store the upload, check its model and that it is media, and queue it. Raises QueueFull before
        anything is written when the queue is full, and the MediaError of a file that is
        not usable media (nothing is kept of it)."""
        waiting = self.queued_count()
        if waiting >= self.max_queued:
            raise QueueFull(waiting)
        job_id = secrets.token_urlsafe(ID_BYTES)
        filename = clean_filename(filename)
        folder = self._folder(job_id)
        os.makedirs(folder)
        try:
            media_path = os.path.join(folder, MEDIA_FILE)
            with open(media_path, "wb") as media:
                shutil.copyfileobj(stream, media, COPY_CHUNK)
            # refuse an unlisted model or what is not media now, with the reason, rather
            # than fail the job later
            info = self.service.check_upload(media_path, options, filename)
            media_type = getattr(info, "media_type", None)
            with self._connect(write=True) as db:
                # checked again in the insert itself: others may have submitted meanwhile
                inserted = db.execute(
                    "INSERT INTO jobs (id, state, filename, options, created_at, media_type) "
                    "SELECT ?, 'queued', ?, ?, ?, ? "
                    "WHERE (SELECT COUNT(*) FROM jobs WHERE state = 'queued') < ?",
                    (job_id, filename, options_to_json(options), time.time(), media_type,
                     self.max_queued),
                ).rowcount
                if not inserted:
                    raise QueueFull(self.max_queued)
                job = self._job(db.execute(_SELECT + " WHERE id = ?", (job_id,)).fetchone())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a refused or broken upload leaves nothing
            raise
        log.info("job %s queued for %r", job_id, filename)
        self._wake.set()
        return job

    def get(self, job_id: str) -> Optional[Job]:
        """The job, or None for an unknown or malformed id."""
        if not valid_id(job_id):
            return None
        with self._connect() as db:
            row = db.execute(_SELECT + " WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(self, ids: Sequence[str]) -> List[Job]:
        """The jobs with these ids that exist, newest first; other ids are skipped."""
        wanted = [i for i in dict.fromkeys(ids) if valid_id(i)]
        if not wanted:
            return []
        with self._connect() as db:
            rows = db.execute(
                _SELECT + " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY seq DESC",
                (json.dumps(wanted),),
            ).fetchall()
        return [self._job(row) for row in rows]

    def wait(self, job_id: str, timeout: float) -> Optional[Job]:
        """The job once finished, or as it is when `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None or job.finished or time.monotonic() >= deadline:
                return job
            time.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def transcript(self, job_id: str) -> Optional[Transcript]:
        """The transcript of a done job, else None."""
        if not valid_id(job_id):
            return None
        try:
            with open(os.path.join(self._folder(job_id), TRANSCRIPT_FILE), encoding="utf-8") as f:
                return Transcript.from_dict(json.load(f))
        except FileNotFoundError:
            return None

    def replace_transcript(self, job_id: str, transcript: Transcript) -> bool:
        """Store a changed transcript of a done job (speakers renamed, say) in place of the
        one it has: every later read and download sees it. False when the job has none."""
        if self.transcript(job_id) is None:
            return False
        path = os.path.join(self._folder(job_id), TRANSCRIPT_FILE)
        temp = f"{path}.{secrets.token_hex(8)}.tmp"
        with open(temp, "w", encoding="utf-8") as out:
            json.dump(transcript.to_dict(), out, ensure_ascii=False)
        os.replace(temp, path)  # readers never see half a file
        return True

    def cancel(self, job_id: str) -> Optional[Job]:
        """A queued job is cancelled at once; a running one within a model step or so (at
        once when it runs in this process, within CANCEL_POLL_SECONDS in another)."""
        if not valid_id(job_id):
            return None
        with self._connect(write=True) as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ? "
                "WHERE id = ? AND state = 'queued'",
                (time.time(), job_id),
            )
            db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'",
                (job_id,),
            )
        self._stop_running(job_id)
        return self.get(job_id)

    def delete(self, job_id: str) -> bool:
        """Remove the job and its files; False when there was no such job."""
        if not valid_id(job_id):
            return False
        # a consumer running it finds the row gone at its next progress report and stops
        with self._connect() as db:
            deleted = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
        if deleted:
            self._stop_running(job_id)
            shutil.rmtree(self._folder(job_id), ignore_errors=True)
            log.info("job %s deleted", job_id)
        return bool(deleted)

    # --- consumers -----------------------------------------------------------------------

    def start(self) -> None:
        """Recover orphaned jobs, then start the consumer thread(s); idempotent."""
        with self._lock:
            if self._threads:
                return
            self._housekeeping()
            self._token = secrets.token_hex(8)
            self._stopping = threading.Event()
            with _LIVE_LOCK:
                _LIVE_TOKENS.add(self._token)
            for number in range(self.workers):
                # a daemon: a job stuck in the model must not keep the process from exiting
                thread = threading.Thread(
                    target=self._consume, args=(self._token, self._stopping),
                    name=f"jobs-{number}", daemon=True,
                )
                thread.start()
                self._threads.append(thread)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Take no more work; wait up to timeout (None: for ever) for running jobs.

        A job still running after the timeout is left for the next start, which treats it
        as orphaned; if it finishes first, its result still counts.
        """
        with self._lock:
            threads, self._threads = self._threads, []
            if not threads:
                return
            self._stopping.set()
            self._wake.set()
            deadline = None if timeout is None else time.monotonic() + timeout
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            with _LIVE_LOCK:
                _LIVE_TOKENS.discard(self._token)

    def recover(self) -> int:
        """Requeue (or end) running jobs whose consumer is gone; returns how many."""
        with self._connect(write=True) as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()
            orphans = [row for row in rows if _orphaned(row["claim_pid"], row["claim_token"])]
            for row in orphans:
                state = self._end_attempt(db, row, ORPHAN_REASON)
                log.warning("job %s was orphaned by process %s; now %s",
                            row["id"], row["claim_pid"], state.value)
        if orphans:
            self._wake.set()
        return len(orphans)

    def purge_expired(self) -> int:
        """Delete finished jobs older than the retention, rows and files; returns how many."""
        cutoff = time.time() - self.retention_seconds
        with self._connect(write=True) as db:
            expired = [row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') "
                "AND finished_at < ?", (cutoff,))]
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in expired])
        for job_id in expired:
            shutil.rmtree(self._folder(job_id), ignore_errors=True)
        self._remove_strays()
        if expired:
            log.info("purged %d expired jobs", len(expired))
        return len(expired)

    def _remove_strays(self) -> None:
        # a crash between writing a folder and its row (submit, delete) leaves a folder
        # that no row names; old ones are removed (young ones may be uploads in progress)
        cutoff = time.time() - STRAY_SECONDS
        old = [name for name in os.listdir(self.root)
               if valid_id(name) and _mtime(self._folder(name)) < cutoff]
        if not old:
            return
        with self._connect() as db:
            known = {row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(old),))}
        for name in set(old) - known:
            log.warning("removing stray job folder %s", name)
            shutil.rmtree(self._folder(name), ignore_errors=True)

    def _housekeeping(self) -> None:
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
        self.recover()  # also catches other processes that died while this one runs
        self.purge_expired()

    def _consume(self, token: str, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                if time.monotonic() >= self._next_housekeeping:
                    self._housekeeping()
                self._wake.clear()  # before claiming, so a submit during the claim wakes us
                jobs = self._claim(token)
                if jobs:
                    self._run(jobs, token)
                    continue
            except Exception:  # a locked or broken database must not end the consumer
                log.exception("job consumer error; trying again in %s s", POLL_SECONDS)
            self._wake.wait(POLL_SECONDS)

    def _claim(self, token: str) -> List[Job]:
        """The oldest queued job, and queued jobs that can be transcribed together with it
        (the service's share_key), now running under this token; [] when none waits."""
        with self._connect(write=True) as db:
            rows = db.execute(
                "SELECT id, options, attempts FROM jobs WHERE state = 'queued' "
                "ORDER BY seq LIMIT ?", (SHARE_LOOKAHEAD,),
            ).fetchall()
            if not rows:
                return []
            chosen = [rows[0]["id"]]
            key = self._share_key(rows[0])
            if key is not None and self.shared_jobs > 1:
                chosen += [row["id"] for row in rows[1:] if self._share_key(row) == key][
                    : self.shared_jobs - 1]
            claimed = []
            for job_id in chosen:
                # the attempt counts when claimed, not when it fails: a job that takes the
                # whole process down every time still ends up failed after max_attempts
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                    "started_at = ?, progress = 0, eta_seconds = NULL, claim_pid = ?, "
                    "claim_token = ? WHERE id = ?",
                    (time.time(), os.getpid(), token, job_id),
                )
                claimed.append(self._job(db.execute(_SELECT + " WHERE id = ?", (job_id,)).fetchone()))
            return claimed

    def _share_key(self, row: sqlite3.Row):
        """The service's share_key for a queued job; None (alone) for a job tried before,
        so that one which takes the server down cannot take the jobs beside it along."""
        if row["attempts"] > 0:
            return None
        return self.service.share_key(options_from_json(row["options"]))

    def _run(self, jobs: List[Job], token: str) -> None:
        for job in jobs:
            log.info("job %s: transcribing %r (attempt %d)", job.id, job.filename, job.attempts)
        self._prefetch_next()
        with self._cancel_watch(jobs, token) as stop, cancel.stop_when(stop):
            self._transcribe(jobs, token)

    def _transcribe(self, jobs: List[Job], token: str) -> None:
        if len(jobs) == 1:
            job = jobs[0]
            try:
                outcomes = [self.service.transcribe_file(
                    job.media_path, job.options, display_name=job.filename,
                    progress=self._progress_reporter(job, token),
                )]
            except Exception as error:
                outcomes = [error]
        else:
            log.info("jobs %s share batches", ", ".join(job.id for job in jobs))
            files = [(job.media_path, job.options, job.filename,
                      self._progress_reporter(job, token)) for job in jobs]
            try:
                outcomes = self.service.transcribe_together(files)
            except Exception as error:  # what stopped them all: each gets it
                outcomes = [error] * len(jobs)
        for job, outcome in zip(jobs, outcomes):
            self._settle(job, token, outcome)

    def _settle(self, job: Job, token: str, outcome) -> None:
        """Store a transcript, or end the attempt as the error says."""
        if isinstance(outcome, Transcript):
            try:
                self._store(job, token, outcome)
                return
            except Exception as error:
                outcome = error
        if isinstance(outcome, (_Aborted, cancel.Cancelled)):
            state = self._give_back(job, token, "cancelled")
            log.info("job %s stopped: %s", job.id,
                     state.value if state else "deleted or taken over")
        elif isinstance(outcome, ServiceError):  # the media or options are at fault
            with self._owned(job.id, token) as (db, row):
                if row is not None:
                    _update(db, job.id, state=JobState.FAILED.value,
                            error=str(outcome)[:MAX_ERROR_CHARS],
                            error_kind=type(outcome).__name__, error_field=outcome.field,
                            eta_seconds=None, finished_at=time.time())
            log.warning("job %s failed: %s", job.id, outcome)
        else:
            state = self._give_back(job, token, str(outcome) or type(outcome).__name__)
            log.warning("job %s: attempt %d failed (now %s)", job.id, job.attempts,
                        state.value if state else "deleted or taken over", exc_info=outcome)

    @contextmanager
    def _cancel_watch(self, jobs: List[Job], token: str) -> Iterator[Callable[[], bool]]:
        """A check for the engines (cancel.stop_when): true once every job of this run was
        cancelled, deleted or taken over. cancel() and delete() in this process set it at
        once; a thread looks in the database for those of other processes."""
        events = {job.id: threading.Event() for job in jobs}
        with self._cancels_lock:
            self._cancels.update(events)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(CANCEL_POLL_SECONDS):
                try:
                    with self._connect() as db:
                        wanted = {row["id"] for row in db.execute(
                            "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
                            "AND state = 'running' AND claim_token = ? AND NOT cancel_requested",
                            (json.dumps(list(events)), token))}
                except sqlite3.Error:
                    continue  # looked at again in a moment
                for job_id, event in events.items():
                    if job_id not in wanted:
                        event.set()

        watcher = threading.Thread(target=watch, name="cancel-watch", daemon=True)
        watcher.start()
        try:
            yield lambda: all(event.is_set() for event in events.values())
        finally:
            done.set()
            watcher.join()
            with self._cancels_lock:
                for job_id in events:
                    self._cancels.pop(job_id, None)

    def _stop_running(self, job_id: str) -> None:
        with self._cancels_lock:
            event = self._cancels.get(job_id)
        if event is not None:
            event.set()

    def _prefetch_next(self) -> None:
        """Let the service decode the next queued job's audio while this one runs."""
        try:
            with self._connect() as db:
                row = db.execute(
                    "SELECT id, filename FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
                ).fetchone()
        except sqlite3.Error:
            return  # only a head start is lost
        if row is not None:
            media_path = os.path.join(self._folder(row["id"]), MEDIA_FILE)
            self.service.prefetch(media_path, row["filename"])

    def _progress_reporter(self, job: Job, token: str) -> Callable[[Progress], None]:
        last_write = 0.0
        started_at = job.started_at or time.time()

        def report(progress: Progress) -> None:
            nonlocal last_write
            now = time.monotonic()
            if now - last_write < PROGRESS_SECONDS and progress.fraction < 1.0:
                return
            last_write = now
            fraction = progress.fraction
            elapsed = time.time() - started_at
            eta = elapsed * (1.0 - fraction) / fraction if fraction > 0 else None
            try:
                with self._connect() as db:
                    # one statement writes the progress and tells whether to go on
                    still_wanted = db.execute(
                        "UPDATE jobs SET progress = ?, eta_seconds = ? WHERE id = ? "
                        "AND state = 'running' AND claim_token = ? AND NOT cancel_requested",
                        (fraction, eta, job.id, token),
                    ).rowcount
            except sqlite3.Error:
                log.warning("job %s: progress not saved", job.id, exc_info=True)
                return  # progress is best effort; a busy database must not fail the job
            if not still_wanted:
                raise _Aborted(job.id)

        return report

    def _store(self, job: Job, token: str, transcript: Transcript) -> None:
        path = os.path.join(self._folder(job.id), TRANSCRIPT_FILE)
        temp = f"{path}.{token}.tmp"
        try:
            with open(temp, "w", encoding="utf-8") as out:
                json.dump(transcript.to_dict(), out, ensure_ascii=False)
            with self._owned(job.id, token) as (db, row):
                if row is None:
                    log.info("job %s was deleted or taken over; result dropped", job.id)
                    return
                # a cancel that came after the last progress report is too late: done wins
                os.replace(temp, path)  # readers never see half a file
                _update(db, job.id, state=JobState.DONE.value, progress=1.0, eta_seconds=None,
                        finished_at=time.time(), model=transcript.model)
            log.info("job %s done", job.id)
        finally:
            if os.path.exists(temp):
                os.remove(temp)

    def _give_back(self, job: Job, token: str, reason: str) -> Optional[JobState]:
        with self._owned(job.id, token) as (db, row):
            return None if row is None else self._end_attempt(db, row, reason)

    def _end_attempt(self, db: sqlite3.Connection, row: sqlite3.Row, reason: str) -> JobState:
        """After an attempt that did not finish: cancelled, failed for good, or queued again."""
        now = time.time()
        if row["cancel_requested"]:
            state, error, finished_at = JobState.CANCELLED, None, now
        elif row["attempts"] >= self.max_attempts:
            state, finished_at = JobState.FAILED, now
            error = f"transcription failed {_times(row['attempts'])}: {reason}"
        else:
            state, error, finished_at = JobState.QUEUED, None, None
        changes = dict(state=state.value, error=error, finished_at=finished_at,
                       eta_seconds=None, claim_pid=None, claim_token=None)
        if state is JobState.QUEUED:
            changes.update(progress=0.0, started_at=None)
        _update(db, row["id"], **changes)
        return state

    @contextmanager
    def _owned(self, job_id: str, token: str) -> Iterator[tuple]:
        """(db, row) in a write transaction; row is None unless this claim still holds."""
        with self._connect(write=True) as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE id = ? AND state = 'running' AND claim_token = ?",
                (job_id, token),
            ).fetchone()
            yield db, row

    # --- storage -------------------------------------------------------------------------

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection for one call; write=True wraps the block in one IMMEDIATE
        transaction (the write lock is taken up front, so read-then-write is atomic)."""
        db = sqlite3.connect(self._db_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            if write:
                db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if db.in_transaction:
                db.execute("COMMIT")
        finally:
            db.close()

    def expected_wait(self, position: Optional[int]) -> Optional[float]:
        """About how long until a job at this place in the queue is done: its place times
        the median run time of the latest RUNS_FOR_ESTIMATE jobs done (every process).
        None for a job not queued, or before any job was done."""
        if not position:
            return None
        with self._connect() as db:
            runs = [row[0] for row in db.execute(
                "SELECT finished_at - started_at FROM jobs WHERE state = 'done' "
                "AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                (RUNS_FOR_ESTIMATE,))]
        return position * statistics.median(runs) if runs else None

    def queued_count(self) -> int:
        """Jobs waiting in the queue (all processes)."""
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]

    def _folder(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)

    def _job(self, row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            state=JobState(row["state"]),
            filename=row["filename"],
            options=options_from_json(row["options"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            progress=row["progress"],
            eta_seconds=row["eta_seconds"],
            position=row["position"],
            error=row["error"],
            error_kind=row["error_kind"],
            error_field=row["error_field"],
            attempts=row["attempts"],
            model=row["model"],
            media_type=row["media_type"],
            cancel_requested=bool(row["cancel_requested"]),
            media_path=os.path.join(self._folder(row["id"]), MEDIA_FILE),
        )


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:  # removed meanwhile, by another process perhaps
        return float("inf")


def _update(db: sqlite3.Connection, job_id: str, **changes) -> None:
    # column names come from this module only, never from a request
    assignments = ", ".join(f"{column} = ?" for column in changes)
    db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*changes.values(), job_id))
