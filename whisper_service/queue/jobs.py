"""A persistent queue of transcription jobs: an upload in, a transcript out, minutes later.

Every upload becomes a job. HTTP threads only submit and read jobs; consumer threads take
queued jobs oldest first and run the model. Where jobs are kept is a store's business
(store/: SQLite and a folder on one host, or PostgreSQL shared by many); this module holds
the queue's rules, written once: FIFO, jobs that share a run, attempts, cancel, delete,
retention, and recovery. The client's file name is kept only as data, never as a path.

Each claim carries a token and a lease that a heartbeat renews while the job runs. A job
whose lease lapsed (its host died, or lost the database) goes back to the queue, and on the
claimant's own host a dead process or a stopped queue is noticed at once, without waiting
for the lease. A consumer writes to a job only while the row still names its claim token:
a job that was deleted, or taken over after this one was presumed gone, is left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import statistics
import sys
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from whisper_service import cancel
from whisper_service.errors import ServiceError, StoreUnavailable
from whisper_service.failures import Failure, explain, stopped
from whisper_service.pace import Pace, TimeLeft, pace_key
from whisper_service.options import SubtitleLayout, TranscribeOptions
from whisper_service.progress import Progress
from whisper_service.queue.backoff import Backoff
from whisper_service.queue.registry import RegistryBeat
from whisper_service.queue.store.base import COPY_CHUNK, Claimant, JobStore, Row, Settlement
from whisper_service.queue.store.base import EDITED_FILE, ENVELOPE_FILE
from whisper_service.queue.store.files import valid_id
from whisper_service.queue.store.space import DiskSpace, full_disk_as_error
from whisper_service.queue.store.spool import UploadTarget
from whisper_service.queue.store.sqlite import SQLiteStore
from whisper_service.transcript import Transcript
from whisper_service import loudness
from whisper_service.transcript_edits import Edit, apply_edits

log = logging.getLogger(__name__)

ID_BYTES = 16  # 128 random bits: unguessable, so an id is the capability to read a job
DEFAULT_FILENAME = "upload"
POLL_SECONDS = 1.0  # an idle consumer of a store without notifications looks this often
WAIT_POLL_SECONDS = 0.1  # how often a synchronous caller looks at its job
PROGRESS_SECONDS = 0.5  # at most two progress writes per second per job
HOUSEKEEPING_SECONDS = 300.0  # purge expired jobs this often
DEFAULT_LEASE_SECONDS = 60.0  # a claim lapses this long after its last heartbeat
HEARTBEATS_PER_LEASE = 4  # a lease survives three missed heartbeats
RETRY_AFTER_SECONDS = 120  # what a refused client is told to wait
SHARE_LOOKAHEAD = 64  # queued jobs looked at for ones that can share a run
RUNS_FOR_ESTIMATE = 20  # recent finished runs a queued job's expected wait is taken from
CANCEL_POLL_SECONDS = 0.25  # how often a running job looks for a cancel from another process
SETTLE_RETRY_SECONDS = 0.5  # a result the store could not take is offered again this often
AWAY_MAX_WAIT_SECONDS = 5.0  # the longest a consumer waits between tries while the store is away
ORPHAN_REASON = "the server stopped while transcribing it"
MAX_FILENAME_CHARS = 255  # the longest name kept of an upload (a file system's limit)
MAX_ERROR_CHARS = 1000  # the longest reason kept for a failed job
HOST_FOLDER_DIGITS = 12  # of the data folder's digest in a host's name: enough to tell folders apart
# Unicode categories never kept in a name: controls (CR, LF, NUL), format characters (the
# bidi overrides that make 'exe.mp3' read 'mp3.exe'), line and paragraph separators
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
_ENVELOPE_LOCK = threading.Lock()  # loudness envelopes are computed one at a time per process
_EDITS_LOCK = threading.Lock()  # a transcript's corrections are read and written one at a time


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
    eta_seconds: Optional[float]  # while running: the time left at this host's pace (pace.py)
    position: Optional[int]  # 1-based place in the queue while queued
    error: Optional[str]  # why a failed job failed, as a sentence for people
    error_kind: Optional[str]  # the ServiceError class behind it ("TruncatedMedia"), if any
    error_field: Optional[str]  # the option or "file" that error blamed
    attempts: int
    model: Optional[str]  # the model that produced the transcript
    media_type: Optional[str]  # what the upload's content is (never guessed from its name)
    cancel_requested: bool  # a running job stops at its next progress report
    # while running: the text of the segments final so far ("" before the first), written
    # with progress; it begins the transcript's text, which takes its place once done
    partial_text: str = ""
    # a failed job's detail for the operator (failures.Failure.detail: the error's class and
    # text, which may name server paths): the log has it, the page shows it to signed-in ones
    error_detail: Optional[str] = None
    # the upload as a local file: fetched on first use where the store keeps it elsewhere
    media_source: Callable[[], str] = field(compare=False, repr=False, default=lambda: "")

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def media_path(self) -> str:
        return self.media_source()


class QueueFull(ServiceError):
    """Too many jobs are waiting; the client should come back later."""

    def __init__(self, waiting: int, retry_after: int = RETRY_AFTER_SECONDS):
        super().__init__(
            f"the server is busy: {waiting} files are waiting; try again in a few minutes"
        )
        self.retry_after = retry_after


class _Aborted(Exception):
    """Raised from the progress callback: the job was cancelled, deleted or taken over."""


# Tokens of queues started and not stopped in this process are "live". On the claimant's
# own host, a running job is orphaned at once when its pid is not alive (crash, kill,
# restart), or when the pid is ours but the token is not live (a stopped queue, or an
# earlier process whose pid we reused). Elsewhere only its lease tells.
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


def host_name(local_root: str) -> str:
    """This host as claims name it: a pid is meaningful only among processes that share
    the host name and the local data folder (containers and test stand-ins differ here).
    The folder goes in as a digest: the name is shown in /metrics, a server path is not."""
    folder = hashlib.sha256(os.path.abspath(local_root).encode("utf-8")).hexdigest()
    return f"{socket.gethostname()}:{folder[:HOST_FOLDER_DIGITS]}"


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
        store: Union[JobStore, str],
        service,
        *,
        max_queued: int = 100,
        max_attempts: int = 3,
        retention_seconds: float = 7 * 24 * 3600,
        workers: int = 1,
        shared_jobs: int = 8,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        worker_info: Optional[Callable[[], Dict[str, object]]] = None,
        space: Optional[DiskSpace] = None,
    ):
        # a folder means the embedded store, as before there were two
        self.store = SQLiteStore(store) if isinstance(store, str) else store
        self.service = service
        self.max_queued = max_queued
        self.max_attempts = max_attempts
        self.retention_seconds = retention_seconds
        self.workers = workers
        self.shared_jobs = shared_jobs  # jobs at most that one run transcribes together
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = lease_seconds / HEARTBEATS_PER_LEASE
        self._worker_info = worker_info or (lambda: {})
        self.space = space  # the data folder's free-space floor, checked before an upload
        self._host = host_name(getattr(self.store, "root", "."))
        self._lock = threading.Lock()  # guards start() and stop()
        self._wake = threading.Event()  # set when there may be work for this process
        self._threads: List[threading.Thread] = []
        self._token: Optional[str] = None
        self._stopping = threading.Event()
        self._next_housekeeping = 0.0
        self._next_recovery = 0.0
        self._registry: Optional[RegistryBeat] = None  # beats while started, jobs or not
        self._cancels: Dict[str, threading.Event] = {}  # running here: id -> asked to stop
        self._cancels_lock = threading.Lock()
        # how fast this process transcribes, per model and options: the running jobs' time left
        self.pace = Pace()

    # --- what HTTP threads call ----------------------------------------------------------

    def open_upload(self) -> Optional[UploadTarget]:
        """Where a new upload streams as its bytes arrive, under a new job id, when the
        store keeps uploads off this host (an object store): hand it to submit() as the
        stream once written, or abort() it. None when the store keeps uploads on this
        host's disk: submit() then copies the stream as it always did. QueueFull (and
        DiskFull) before anything is read, as submit() raises them."""
        self._refuse_when_full()
        return self.store.upload_target(secrets.token_urlsafe(ID_BYTES))

    def submit(self, stream: Union[BinaryIO, UploadTarget], filename: str,
               options: TranscribeOptions) -> Job:
        """Store the upload, check its model and that it is media, and queue it. Raises QueueFull before
        anything is written when the queue is full, and the MediaError of a file that is
        not usable media (nothing is kept of it). DiskFull, with nothing kept, when the data
        folder's disk is below its free-space floor or fills up while the upload is written.
        stream may be an open_upload() target, written already: it is finished, checked
        where it lies and queued, never copied. Any other stream goes to the store's upload
        target where it offers one (an object store: never to this host's disk), else to
        media_target()."""
        if isinstance(stream, UploadTarget):
            return self._submit_streamed(stream, filename, options)
        self._refuse_when_full()
        job_id = secrets.token_urlsafe(ID_BYTES)
        target = self.store.upload_target(job_id)
        if target is not None:
            try:
                shutil.copyfileobj(stream, target, COPY_CHUNK)
            except BaseException:
                target.abort()
                raise
            return self._submit_streamed(target, filename, options)
        filename = clean_filename(filename)
        try:
            with full_disk_as_error():
                media_path = self.store.media_target(job_id)
                with open(media_path, "wb") as media:
                    shutil.copyfileobj(stream, media, COPY_CHUNK)
                # refuse an unlisted model or what is not media now, with the reason,
                # rather than fail the job later
                info = self.service.check_upload(media_path, options, filename)
                row = dict(id=job_id, state=JobState.QUEUED.value, filename=filename,
                           options=options_to_json(options), created_at=time.time(),
                           media_type=getattr(info, "media_type", None))
                if not self.store.add(row, self.max_queued):
                    raise QueueFull(self.max_queued)
        except BaseException:
            self.store.discard_local(job_id)  # a refused or broken upload leaves nothing
            raise
        log.info("job %s queued for %r", job_id, filename)
        self._wake.set()
        return self.get(job_id)

    def _submit_streamed(self, target: UploadTarget, filename: str,
                         options: TranscribeOptions) -> Job:
        """submit() of an upload that streamed to the store (open_upload())."""
        job_id, filename = target.job_id, clean_filename(filename)
        try:
            media = target.finish()
            info = self.service.check_upload(media, options, filename)
            row = dict(id=job_id, state=JobState.QUEUED.value, filename=filename,
                       options=options_to_json(options), created_at=time.time(),
                       media_type=getattr(info, "media_type", None))
            if not self.store.add(row, self.max_queued, streamed=True):
                raise QueueFull(self.max_queued)
            target.keep()
        except BaseException:
            target.abort()  # a refused or broken upload leaves nothing
            self.store.discard_local(job_id)
            raise
        log.info("job %s queued for %r (%d bytes streamed to the store)", job_id, filename,
                 target.size)
        self._wake.set()
        return self.get(job_id)

    def _refuse_when_full(self) -> None:
        waiting = self.queued_count()
        if waiting >= self.max_queued:
            raise QueueFull(waiting)
        if self.space is not None:
            self.space.check()

    def new_recording(self) -> Tuple[str, str]:
        """(job id, local path) for a live session's recording, written while it streams in
        and kept by add_recorded(), or dropped by discard_recording()."""
        job_id = secrets.token_urlsafe(ID_BYTES)
        return job_id, self.store.media_target(job_id)

    def add_recorded(self, job_id: str, filename: str, options: TranscribeOptions,
                     transcript: Transcript, media_type: str = "audio/wav") -> Job:
        """Keep a transcribed recording (new_recording's) as a finished job."""
        now = time.time()
        row = dict(id=job_id, state=JobState.DONE.value, filename=clean_filename(filename),
                   options=options_to_json(options), created_at=now, started_at=now,
                   finished_at=now, progress=1.0, model=transcript.model, media_type=media_type)
        self.store.add_finished(row, _transcript_json(transcript))
        log.info("live session %s kept as a finished job", job_id)
        return self.get(job_id)

    def discard_recording(self, job_id: str) -> None:
        self.store.discard_local(job_id)

    def get(self, job_id: str) -> Optional[Job]:
        """The job, or None for an unknown or malformed id."""
        if not valid_id(job_id):
            return None
        row = self.store.get(job_id)
        return self._job(row) if row else None

    def list(self, ids: Sequence[str]) -> List[Job]:
        """The jobs with these ids that exist, newest first; other ids are skipped."""
        wanted = [i for i in dict.fromkeys(ids) if valid_id(i)]
        if not wanted:
            return []
        return [self._job(row) for row in self.store.list(wanted)]

    def wait(self, job_id: str, timeout: float) -> Optional[Job]:
        """The job once finished, or as it is when `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None or job.finished or time.monotonic() >= deadline:
                return job
            time.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def transcript(self, job_id: str) -> Optional[Transcript]:
        """The transcript of a done job as people corrected it (the model's where nobody
        did), else None: what the pages, the API and every download show."""
        if not valid_id(job_id):
            return None
        edited = self.store.side_file(job_id, EDITED_FILE)
        return self.original_transcript(job_id) if edited is None else _transcript_of(edited)

    def original_transcript(self, job_id: str) -> Optional[Transcript]:
        """The model's transcript of a done job, whatever the corrections; else None."""
        if not valid_id(job_id):
            return None
        text = self.store.transcript(job_id)
        return None if text is None else _transcript_of(text)

    def is_edited(self, job_id: str) -> bool:
        """Whether people corrected the job's transcript (restore_transcript undoes it)."""
        return valid_id(job_id) and self.store.side_file(job_id, EDITED_FILE) is not None

    def edit_transcript(self, job_id: str, edits: Sequence[Edit]) -> Optional[Transcript]:
        """Apply corrections to the transcript as it is now and keep the result beside the
        model's; the result, or None when the job has no transcript. BadOption (nothing
        kept) for an edit that cannot apply. Saves in one process take turns, each applied
        to what the one before left; across processes, two at the same moment: the later
        save wins."""
        with _EDITS_LOCK:
            current = self.transcript(job_id)
            if current is None:
                return None
            edited = apply_edits(current, edits)
            if not self.store.put_side_file(job_id, EDITED_FILE, _transcript_json(edited)):
                return None  # deleted meanwhile
            return edited

    def restore_transcript(self, job_id: str) -> bool:
        """Drop the corrections: the model's transcript is shown again. False: no transcript."""
        return valid_id(job_id) and self.store.put_side_file(job_id, EDITED_FILE, None)

    def rename_speakers(self, job_id: str, names: Dict[str, str]) -> bool:
        """Give speakers new names (id -> name) in the model's transcript and in the
        corrected one, so that restoring the model's keeps the names. False: no transcript."""
        if not valid_id(job_id):
            return False
        with _EDITS_LOCK:
            original = self.original_transcript(job_id)
            if original is None:
                return False
            edited = self.store.side_file(job_id, EDITED_FILE)
            if edited is not None:
                self.store.put_side_file(job_id, EDITED_FILE,
                                         _transcript_json(_transcript_of(edited).renamed(names)))
            return self.store.replace_transcript(job_id, _transcript_json(original.renamed(names)))

    def envelope(self, job_id: str, decode: Callable[[str], loudness.Samples]) -> Optional[dict]:
        """The loudness over time of a done job's audio (loudness.Envelope.to_dict()):
        computed from decode(media path) the first time it is asked for, then kept with the
        job. None when the job has no transcript or no upload any more."""
        if not valid_id(job_id):
            return None
        kept = self.store.side_file(job_id, ENVELOPE_FILE)
        if kept is not None:
            return json.loads(kept)
        # one at a time in a process: a whole file's samples are in memory while it runs,
        # and a second page asking for the same job meanwhile finds the first one's result
        with _ENVELOPE_LOCK:
            kept = self.store.side_file(job_id, ENVELOPE_FILE)
            if kept is not None:
                return json.loads(kept)
            if self.store.transcript(job_id) is None:
                return None
            path = self.store.media_path(job_id)
            if path is None:
                return None
            found = loudness.envelope(decode(path)).to_dict()
            self.store.put_side_file(job_id, ENVELOPE_FILE, json.dumps(found))
            return found

    def cancel(self, job_id: str) -> Optional[Job]:
        """A queued job is cancelled at once; a running one within a model step or so (at
        once when it runs in this process, within CANCEL_POLL_SECONDS in another)."""
        if not valid_id(job_id):
            return None
        self.store.cancel(job_id, time.time())
        self._stop_running(job_id)
        return self.get(job_id)

    def delete(self, job_id: str) -> bool:
        """Remove the job and its files; False when there was no such job."""
        if not valid_id(job_id):
            return False
        # a consumer running it finds the row gone at its next progress report and stops
        deleted = self.store.delete(job_id)
        if deleted:
            self._stop_running(job_id)
            log.info("job %s deleted", job_id)
        return deleted

    def expected_wait(self, position: Optional[int]) -> Optional[float]:
        """About how long until a job at this place in the queue is done: its place times
        the median run time of the latest RUNS_FOR_ESTIMATE jobs done (every process).
        None for a job not queued, or before any job was done."""
        if not position:
            return None
        runs = self.store.recent_run_seconds(RUNS_FOR_ESTIMATE)
        return position * statistics.median(runs) if runs else None

    def queued_count(self) -> int:
        """Jobs waiting in the queue (all processes, all hosts)."""
        return self.store.queued_count()

    def live_workers(self) -> List[Dict[str, object]]:
        """Consumer processes that beat within two leases, on any host."""
        return self.store.workers(2 * self.lease_seconds)

    # --- consumers -----------------------------------------------------------------------

    def start(self) -> None:
        """Recover orphaned jobs, then start the consumer thread(s); idempotent."""
        with self._lock:
            if self._threads:
                return
            self._token = secrets.token_hex(8)
            self._stopping = threading.Event()
            with _LIVE_LOCK:
                _LIVE_TOKENS.add(self._token)
            self._next_recovery = 0.0  # recover at every start
            self._housekeeping()
            self._registry = RegistryBeat(
                self.store, f"{self._host}:{os.getpid()}:{self._token}",
                lambda: {"host": socket.gethostname(), "pid": os.getpid(),
                         "running": len(self._cancels), **self._worker_info()},
                self.heartbeat_seconds)
            self._registry.start()
            self.store.wake_on_submit(self._wake.set)
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

        A job still running after the timeout is left for the next start (or, on another
        host, for its lease to lapse), which treats it as orphaned; if it finishes first,
        its result still counts.
        """
        with self._lock:
            threads, self._threads = self._threads, []
            if not threads:
                return
            self._stopping.set()
            self._wake.set()
            self.store.stop_waking(self._wake.set)
            deadline = None if timeout is None else time.monotonic() + timeout
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if self._registry is not None:
                self._registry.stop()
                self._registry = None
            with _LIVE_LOCK:
                _LIVE_TOKENS.discard(self._token)

    def recover(self) -> int:
        """Requeue (or end) running jobs whose consumer is gone; returns how many."""
        recovered = self.store.recover(self._is_orphan,
                                       lambda row: self._end_attempt(row, stopped(ORPHAN_REASON)))
        for row, settlement in recovered:
            log.warning("job %s was orphaned by process %s on %s (%s); now %s", row["id"],
                        row["claim_pid"], row["claim_host"],
                        "lease lapsed" if row["lease_expired"] else "process gone",
                        settlement.changes["state"])
        if recovered:
            self._wake.set()
        return len(recovered)

    def _is_orphan(self, row: Row) -> bool:
        if row["lease_expired"]:
            return True
        # a row from before hosts were named was claimed on this host
        if row["claim_host"] in (None, self._host):
            return _orphaned(row["claim_pid"], row["claim_token"])
        return False

    def purge_expired(self) -> int:
        """Delete finished jobs older than the retention, rows and files; returns how many."""
        purged = self.store.purge(time.time() - self.retention_seconds)
        if purged:
            log.info("purged %d expired jobs", purged)
        return purged

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_recovery:
            # often: a lapsed lease should not wait long; cheap: one query of running jobs
            self._next_recovery = now + self.heartbeat_seconds
            self.recover()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_SECONDS
            self.purge_expired()

    def _consume(self, token: str, stopping: threading.Event) -> None:
        """Claim and run jobs until stopped. A store that is away (StoreUnavailable, or
        any error of its driver) is waited out with growing pauses, logged once; the loop
        never ends for it, and a job it held is settled or recovered once the store is
        back, so none is lost or done twice."""
        idle_wait = min(POLL_SECONDS, self.heartbeat_seconds)
        away = Backoff(f"job consumer {threading.current_thread().name}", idle_wait,
                       max(idle_wait, AWAY_MAX_WAIT_SECONDS))
        while not stopping.is_set():
            wait = idle_wait
            try:
                self._housekeeping()
                self._wake.clear()  # before claiming, so a submit during the claim wakes us
                jobs = self._claim(token)
                away.succeeded()
                if jobs:
                    self._run(jobs, token)
                    continue
            except self.store.errors as error:  # locked, restarting or out of reach
                wait = away.failed(error)
            except Exception:  # a bug in a step must not end the consumer either
                log.exception("job consumer error; trying again in %s s", idle_wait)
            self._wake.wait(wait)

    def _claim(self, token: str) -> List[Job]:
        """The oldest queued job, and queued jobs that can be transcribed together with it
        (the service's share_key), now running under this token; [] when none waits."""

        def choose(rows: List[Row]) -> List[str]:
            chosen = [rows[0]["id"]]
            key = self._share_key(rows[0])
            if key is not None and self.shared_jobs > 1:
                chosen += [row["id"] for row in rows[1:] if self._share_key(row) == key][
                    : self.shared_jobs - 1]
            return chosen

        # the attempt counts when claimed, not when it fails: a job that takes the whole
        # process down every time still ends up failed after max_attempts
        claimant = Claimant(host=self._host, pid=os.getpid(), token=token)
        rows = self.store.claim(claimant, self.lease_seconds, SHARE_LOOKAHEAD, choose)
        return [self._job(row) for row in rows]

    def _share_key(self, row: Row):
        """The service's share_key for a queued job; None (alone) for a job tried before,
        so that one which takes the server down cannot take the jobs beside it along."""
        if row["attempts"] > 0:
            return None
        return self.service.share_key(options_from_json(row["options"]))

    def _run(self, jobs: List[Job], token: str) -> None:
        for job in jobs:
            log.info("job %s: transcribing %r (attempt %d)", job.id, job.filename, job.attempts)
        with self._heartbeat(jobs, token) as stop, cancel.stop_when(stop):
            self._prefetch_next()
            self._transcribe(jobs, token)

    def _transcribe(self, jobs: List[Job], token: str) -> None:
        try:
            paths = [self._media_of(job) for job in jobs]
        except Exception as error:  # the store lost the upload, or could not hand it over
            for job in jobs:
                self._settle(job, token, error)
            return
        if len(jobs) == 1:
            job = jobs[0]
            try:
                outcomes = [self.service.transcribe_file(
                    paths[0], job.options, display_name=job.filename,
                    progress=self._progress_reporter(job, token),
                )]
            except Exception as error:
                outcomes = [error]
        else:
            log.info("jobs %s share batches", ", ".join(job.id for job in jobs))
            files = [(path, job.options, job.filename, self._progress_reporter(job, token))
                     for job, path in zip(jobs, paths)]
            try:
                outcomes = self.service.transcribe_together(files)
            except Exception as error:  # what stopped them all: each gets it
                outcomes = [error] * len(jobs)
        for job, outcome in zip(jobs, outcomes):
            self._settle(job, token, outcome)

    def _media_of(self, job: Job) -> str:
        path = self.store.media_path(job.id)
        if path is None:
            raise FileNotFoundError(f"the upload of job {job.id} is gone from the store")
        return path

    def _settle(self, job: Job, token: str, outcome) -> None:
        """Store a transcript, or end the attempt as the error says. A store that is away
        (a database restarting) is asked again until the lease would have lapsed: by then
        another consumer may run the job, and this one's claim no longer holds."""
        deadline = time.monotonic() + self.lease_seconds
        while True:
            try:
                self._settle_once(job, token, outcome)
                return
            except self.store.errors:
                if time.monotonic() >= deadline:
                    raise
                _missed(f"job {job.id}: the store is away; offering the result again in "
                        f"{SETTLE_RETRY_SECONDS} s")
                time.sleep(SETTLE_RETRY_SECONDS)

    def _settle_once(self, job: Job, token: str, outcome) -> None:
        if isinstance(outcome, Transcript):
            try:
                self._store(job, token, outcome)
                return
            except self.store.errors:
                raise
            except Exception as error:
                outcome = error
        if isinstance(outcome, (_Aborted, cancel.Cancelled)):
            settled = self.store.settle(job.id, token,
                                        lambda row: self._end_attempt(row, stopped("cancelled")))
            log.info("job %s stopped: %s", job.id,
                     settled.changes["state"] if settled else "deleted or taken over")
        elif isinstance(outcome, StoreUnavailable):  # its upload could not be fetched
            settled = self.store.settle(job.id, token, self._give_back)
            log.info("job %s: the store was away before it began; now %s", job.id,
                     settled.changes["state"] if settled else "deleted or taken over")
        elif isinstance(outcome, ServiceError):  # the media, options or model are at fault
            failure = explain(outcome)
            self.store.settle(job.id, token, lambda row: Settlement(
                dict(state=JobState.FAILED.value, error=failure.message[:MAX_ERROR_CHARS],
                     error_kind=failure.kind, error_field=failure.field,
                     error_detail=failure.detail[:MAX_ERROR_CHARS],
                     eta_seconds=None, finished_at=time.time(), lease_until=None,
                     partial_text=None),
                counters={"jobs_failed": 1}))
            log.warning("job %s failed: %s", job.id, failure.detail)
        else:
            failure = explain(outcome)
            settled = self.store.settle(job.id, token, lambda row: self._end_attempt(row, failure))
            log.warning("job %s: attempt %d failed (now %s)", job.id, job.attempts,
                        settled.changes["state"] if settled else "deleted or taken over",
                        exc_info=outcome)

    def _store(self, job: Job, token: str, transcript: Transcript) -> None:
        def done(row: Row) -> Settlement:
            # a cancel that came after the last progress report is too late: done wins
            now = time.time()
            return Settlement(
                dict(state=JobState.DONE.value, progress=1.0, eta_seconds=None,
                     finished_at=now, model=transcript.model, lease_until=None,
                     partial_text=None),
                counters={"jobs_done": 1, "audio_seconds": transcript.duration or 0.0,
                          "processing_seconds": now - (row["started_at"] or now)})

        if self.store.settle(job.id, token, done, transcript=_transcript_json(transcript)):
            log.info("job %s done", job.id)
        else:
            log.info("job %s was deleted or taken over; result dropped", job.id)

    def _end_attempt(self, row: Row, failure: Failure) -> Settlement:
        """After an attempt that did not finish (failure: why): cancelled, failed for good
        (the dead letter: its sentence and detail kept), or queued again."""
        now = time.time()
        counters: Dict[str, float] = {}
        detail = None
        if row["cancel_requested"]:
            state, error, finished_at = JobState.CANCELLED, None, now
            counters["jobs_cancelled"] = 1
        elif row["attempts"] >= self.max_attempts:
            state, finished_at = JobState.FAILED, now
            tried = _times(row["attempts"])
            error = f"{failure.message} It was tried {tried}."[:MAX_ERROR_CHARS]
            detail = f"failed {tried}; the last time: {failure.detail}"[:MAX_ERROR_CHARS]
            counters["jobs_failed"] = 1
        else:
            state, error, finished_at = JobState.QUEUED, None, None
        # the text final so far goes too: the transcript has it, or another attempt starts over
        changes = dict(state=state.value, error=error, error_detail=detail, finished_at=finished_at,
                       eta_seconds=None, claim_pid=None, claim_token=None, claim_host=None,
                       lease_until=None, partial_text=None)
        if state is JobState.QUEUED:
            changes.update(progress=0.0, started_at=None)
        return Settlement(changes, counters, notify=state is JobState.QUEUED)

    def _give_back(self, row: Row) -> Settlement:
        """A job whose attempt never began (the store went away while its upload was
        fetched): queued again as it was, the attempt not counted against max_attempts."""
        if row["cancel_requested"]:
            return self._end_attempt(row, stopped("cancelled"))
        return Settlement(
            dict(state=JobState.QUEUED.value, attempts=max(0, row["attempts"] - 1),
                 progress=0.0, started_at=None, eta_seconds=None, claim_pid=None,
                 claim_token=None, claim_host=None, lease_until=None, partial_text=None),
            notify=True)

    @contextmanager
    def _heartbeat(self, jobs: List[Job], token: str) -> Iterator[Callable[[], bool]]:
        """While the jobs run: renew their leases every heartbeat, and give the engines a
        check (cancel.stop_when) that is true once every job of this run was cancelled,
        deleted or taken over. cancel() and delete() in this process set it at once; the
        thread looks in the store for those of other processes and hosts."""
        events = {job.id: threading.Event() for job in jobs}
        with self._cancels_lock:
            self._cancels.update(events)
        done = threading.Event()

        def beat() -> None:
            next_renewal = time.monotonic() + self.heartbeat_seconds
            while not done.wait(min(CANCEL_POLL_SECONDS, self.heartbeat_seconds)):
                renew = time.monotonic() >= next_renewal
                try:
                    wanted = set(self.store.heartbeat(
                        list(events), token, self.lease_seconds if renew else None))
                except self.store.errors:
                    _missed(f"heartbeat of {', '.join(events)} not written")
                    continue  # tried again in a moment; the lease outlasts a few misses
                if renew:
                    next_renewal = time.monotonic() + self.heartbeat_seconds
                for job_id, event in events.items():
                    if job_id not in wanted:
                        event.set()

        beater = threading.Thread(target=beat, name="job-heartbeat", daemon=True)
        beater.start()
        try:
            yield lambda: all(event.is_set() for event in events.values())
        finally:
            done.set()
            beater.join()
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
            row = self.store.next_queued()
            path = self.store.media_path(row["id"]) if row is not None else None
        except self.store.errors:
            return  # only a head start is lost
        if path is not None:
            self.service.prefetch(path, row["filename"])

    def _progress_reporter(self, job: Job, token: str) -> Callable[[Progress], None]:
        """Progress and the text final so far, written at most every PROGRESS_SECONDS (and
        at the end). A report carries every final segment so far; the most of them seen is
        kept, so the text of one that came between writes goes with the next write, and a
        report without segments (diarization's) does not take text away."""
        last_write = 0.0
        segments: tuple = ()  # the most final segments reported
        written = 0  # of them in the store
        # the time left: this host's pace for the model and options, corrected by each report
        left = TimeLeft(self.pace, pace_key(job.options.model, job.options))

        def report(progress: Progress) -> None:
            nonlocal last_write, segments, written
            if len(progress.segments) > len(segments):
                segments = progress.segments
            eta = left.update(progress.done_seconds, progress.total_seconds)
            now = time.monotonic()
            if now - last_write < PROGRESS_SECONDS and progress.fraction < 1.0:
                return
            last_write = now
            fraction = progress.fraction
            text = None
            if len(segments) > written:
                text = "".join(segment.text for segment in segments)
            try:
                still_wanted = self.store.progress(job.id, token, fraction, eta, text)
            except self.store.errors:
                _missed(f"job {job.id}: progress not saved")
                return  # progress is best effort; a busy database must not fail the job
            if text is not None:
                written = len(segments)
            if not still_wanted:
                raise _Aborted(job.id)

        return report

    def _job(self, row: Row) -> Job:
        job_id = row["id"]
        return Job(
            id=job_id,
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
            partial_text=row.get("partial_text") or "",
            error_detail=row.get("error_detail"),
            media_source=lambda: self.store.media_path(job_id) or self.store.local_media_path(job_id),
        )


def _missed(what: str) -> None:
    """Log a store call that failed and will be tried again; called from an except block.
    During an outage (StoreUnavailable) only at DEBUG: the store logs the outage once, and
    heartbeats and progress would otherwise log several lines a second."""
    error = sys.exc_info()[1]
    if isinstance(error, StoreUnavailable):
        log.debug("%s: %s", what, error)
    else:
        log.warning("%s", what, exc_info=True)


def _transcript_of(text: str) -> Transcript:
    return Transcript.from_dict(json.loads(text))


def _transcript_json(transcript: Transcript) -> str:
    return json.dumps(transcript.to_dict(), ensure_ascii=False)


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"
