"""What the job queue needs from a place to keep jobs: state, the queue itself, and files.

jobs.JobQueue holds the queue's rules (FIFO, sharing, attempts, cancel, recovery) and is
written once against this interface; a backend holds only storage. Two backends pass the
same test suite: sqlite.SQLiteStore (one host: a SQLite file and a folder per job) and
postgres.PostgresStore (many hosts sharing nothing but a PostgreSQL database, files
included). Rows travel as plain dicts keyed by column name (see COLUMNS).

Every change to a claimed job goes through settle(), which applies it only while the row
still names the caller's claim token: a worker whose lease expired and whose job was taken
by another writes nothing more to it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

from whisper_service.errors import StoreUnavailable
from whisper_service.queue.store.signouts import FolderSignOuts, SignOutBook

# the columns of a job row every backend keeps, besides seq (submission order) and the
# computed position (1-based place among queued jobs) and lease_expired (by the store's
# own clock, so hosts with skewed clocks agree)
COLUMNS = (
    "id", "state", "filename", "options", "created_at", "started_at", "finished_at",
    "progress", "eta_seconds", "error", "error_kind", "error_field", "attempts", "model",
    "media_type", "cancel_requested", "claim_host", "claim_pid", "claim_token", "lease_until",
    "partial_text", "error_detail",
)
# counters kept in the store for /metrics; they only ever grow (purges do not lower them)
COUNTERS = ("jobs_done", "jobs_failed", "jobs_cancelled", "audio_seconds", "processing_seconds")
MEDIA_FILE = "media"  # the upload, in a job's folder
TRANSCRIPT_FILE = "transcript.json"
# files kept beside a done job's transcript (side_file / put_side_file), each JSON text:
EDITED_FILE = "edited.json"  # the transcript as people corrected it; the model's stays above
ENVELOPE_FILE = "envelope.json"  # the audio's loudness over time, for the page's picture of it
SIDE_FILES = (EDITED_FILE, ENVELOPE_FILE)
COPY_CHUNK = 1 << 20  # files move in pieces of this size: never a whole upload in memory

Row = Dict[str, object]


def check_side_file(name: str) -> str:
    """name, when it is one of SIDE_FILES; ValueError otherwise (never a path from outside)."""
    if name not in SIDE_FILES:
        raise ValueError(f"{name!r} is not a side file of a job")
    return name


@dataclass(frozen=True)
class Claimant:
    """Who holds a claim: a consumer in one process on one host."""

    host: str  # hostname and data folder: a pid means something only there
    pid: int
    token: str  # fresh for each JobQueue.start(), so a stopped queue's claims are known


@dataclass(frozen=True)
class Settlement:
    """What to write to a claimed job, decided from its row inside the store's transaction."""

    changes: Dict[str, object]  # column -> new value
    counters: Dict[str, float] = field(default_factory=dict)  # COUNTERS to add to
    notify: bool = False  # the job went back to the queue: wake idle consumers


Decide = Callable[[Row], Settlement]


class JobStore(abc.ABC):
    """Job state, the queue and the jobs' files, for one or many hosts."""

    # the exceptions that mean "the store is unreachable or busy right now": callers that
    # can try again later (progress, heartbeats, the consumer loop) catch these. A backend
    # raises StoreUnavailable, from its connection helper, where the database cannot be
    # reached or stayed locked past its timeout: the web answers that with 503
    errors: Tuple[Type[BaseException], ...] = (StoreUnavailable,)
    # whether the data can be shared by processes on other hosts (leases then matter most)
    shared_across_hosts = False

    # --- submitting -------------------------------------------------------------------

    @abc.abstractmethod
    def media_target(self, job_id: str) -> str:
        """A local path to write a new upload to (its folder is made); the service reads
        it there to check it before add() keeps it."""

    def upload_target(self, job_id: str):
        """Where a new upload streams to as it arrives (a spool.UploadTarget), when this
        store keeps uploads off the host (an object store); None when it keeps them on this
        host's disk: the upload is then written to media_target() and add() keeps it."""
        return None

    @abc.abstractmethod
    def add(self, row: Row, max_queued: int, streamed: bool = False) -> bool:
        """Queue a job whose upload is at media_target(row['id']) (or, streamed, kept
        already by its upload_target()), unless max_queued jobs wait already (checked in the
        same transaction); False when full. created_at is stamped under the store's lock, so
        it orders jobs as the queue does."""

    @abc.abstractmethod
    def add_finished(self, row: Row, transcript: str) -> None:
        """Keep a job that was never queued (a live session, transcribed as it was spoken):
        its media at media_target(row['id']), its transcript's JSON text and its finished
        row, together."""

    @abc.abstractmethod
    def discard_local(self, job_id: str) -> None:
        """Remove what this host keeps of a job (a refused upload, a deleted job)."""

    # --- reading ----------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, job_id: str) -> Optional[Row]:
        """The row with its position, or None."""

    @abc.abstractmethod
    def list(self, job_ids: Sequence[str]) -> List[Row]:
        """The rows of these ids that exist, newest first."""

    @abc.abstractmethod
    def queued_count(self) -> int:
        """Jobs waiting, over every host."""

    @abc.abstractmethod
    def next_queued(self) -> Optional[Row]:
        """The oldest queued row (id, filename), for prefetching its audio."""

    @abc.abstractmethod
    def recent_run_seconds(self, limit: int) -> List[float]:
        """How long the latest `limit` done jobs ran, newest first."""

    @abc.abstractmethod
    def media_path(self, job_id: str) -> Optional[str]:
        """The upload as a local file, fetched to this host first where it lives elsewhere;
        None when the job has no upload (deleted)."""

    @abc.abstractmethod
    def local_media_path(self, job_id: str) -> str:
        """Where media_path() puts the upload on this host (it may not be there yet)."""

    @abc.abstractmethod
    def transcript(self, job_id: str) -> Optional[str]:
        """The stored transcript's JSON text, or None."""

    @abc.abstractmethod
    def replace_transcript(self, job_id: str, text: str) -> bool:
        """Put text in place of a stored transcript; False when the job has none."""

    @abc.abstractmethod
    def side_file(self, job_id: str, name: str) -> Optional[str]:
        """The text of a file kept beside a job's transcript (one of SIDE_FILES), or None."""

    @abc.abstractmethod
    def put_side_file(self, job_id: str, name: str, text: Optional[str]) -> bool:
        """Keep text as the side file `name` of a done job (None removes it); False when the
        job has no transcript (not done, or deleted), and then nothing is written."""

    # --- changing -----------------------------------------------------------------------

    @abc.abstractmethod
    def cancel(self, job_id: str, now: float) -> None:
        """A queued job becomes cancelled; a running one is asked to stop."""

    @abc.abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove the row and its files everywhere they are kept; False when none."""

    @abc.abstractmethod
    def claim(self, claimant: Claimant, lease_seconds: float, lookahead: int,
              choose: Callable[[List[Row]], List[str]]) -> List[Row]:
        """Atomically: look at the oldest `lookahead` queued rows (none that another
        claimer holds at this moment), let choose() pick ids, and mark those running under
        the claimant with a lease of lease_seconds and one more attempt. The claimed rows.
        A claim holds no row it does not take: a concurrent claim skips no job that stays
        queued, so each consumer takes jobs in submission order."""

    @abc.abstractmethod
    def progress(self, job_id: str, token: str, fraction: float, eta: Optional[float],
                 partial_text: Optional[str] = None) -> bool:
        """Write progress while the claim holds and no cancel was asked; whether it did.
        partial_text: the text of the segments final so far, in place of the row's (None
        leaves it; a claim clears it, since a new attempt starts over, and jobs.py clears
        it when the attempt ends)."""

    @abc.abstractmethod
    def heartbeat(self, job_ids: Iterable[str], token: str,
                  lease_seconds: Optional[float]) -> List[str]:
        """Renew the leases of these jobs where the claim holds (None: only look); the ids
        still held and not asked to stop."""

    @abc.abstractmethod
    def settle(self, job_id: str, token: str, decide: Decide,
               transcript: Optional[str] = None) -> Optional[Settlement]:
        """In one transaction: if the claim still holds, apply decide(row) (and store the
        transcript's JSON text, if given). The settlement, or None when the claim was lost."""

    @abc.abstractmethod
    def recover(self, is_orphan: Callable[[Row], bool], decide: Decide) -> List[Tuple[Row, Settlement]]:
        """In one transaction: settle every running row that is_orphan() says nobody runs."""

    def _settle_orphans(self, db, rows: List[Row], is_orphan: Callable[[Row], bool],
                        decide: Decide) -> List[Tuple[Row, Settlement]]:
        """recover()'s step shared by the backends: within the caller's transaction `db`,
        apply decide(row) to each running row nobody runs."""
        settled = []
        for row in rows:
            if is_orphan(row):
                settlement = decide(row)
                self._apply(db, row["id"], settlement)
                settled.append((row, settlement))
        return settled

    @staticmethod
    @abc.abstractmethod
    def _apply(db, job_id: str, settlement: Settlement) -> None:
        """Write a settlement to a job's row, within the caller's transaction."""

    @abc.abstractmethod
    def purge(self, cutoff: float) -> int:
        """Delete finished jobs that finished before cutoff, and old debris; how many jobs."""

    # --- many hosts -------------------------------------------------------------------

    def wake_on_submit(self, wake: Callable[[], None]) -> None:
        """Call wake() when another process queues work (LISTEN/NOTIFY); a store without
        notifications does nothing and consumers look every few seconds instead."""

    def stop_waking(self, wake: Callable[[], None]) -> None:
        """Stop calling wake()."""

    @abc.abstractmethod
    def beat_worker(self, name: str, info: Dict[str, object]) -> None:
        """Note that a consumer process is alive (shown by /readyz and /metrics)."""

    @abc.abstractmethod
    def workers(self, within_seconds: float) -> List[Dict[str, object]]:
        """Consumers seen in the last within_seconds: name, seen (seconds ago), info."""

    @abc.abstractmethod
    def counts(self) -> Dict[str, int]:
        """Jobs by state."""

    @abc.abstractmethod
    def counters(self) -> Dict[str, float]:
        """The COUNTERS' totals."""

    def sign_outs(self, folder: str) -> SignOutBook:
        """Where the web keeps each API key's sign-out generation so that every host that
        checks a session reads it: a folder of this host's data folder (`folder`) for a
        store of one host; a store shared across hosts keeps them itself."""
        return FolderSignOuts(folder)

    @abc.abstractmethod
    def remember_key(self, key: str, digest: str, job_id: str) -> Tuple[str, str]:
        """Tie an idempotency key to (digest, job_id) unless it is tied already; the
        (digest, job_id) the key is tied to now. The tie goes when its job goes."""

    @abc.abstractmethod
    def recall_key(self, key: str) -> Optional[Tuple[str, str]]:
        """The (digest, job_id) an idempotency key is tied to, or None."""

    def close(self) -> None:
        """Give back connections; the store is not used afterwards."""
