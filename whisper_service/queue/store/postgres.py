"""The shared store: PostgreSQL (psycopg 3) holds job state, the queue and the files, so web
hosts and GPU hosts share nothing but the database.

- Claims take queued rows with `FOR UPDATE SKIP LOCKED`: consumers on many hosts never wait
  on each other's claims, nor take the same job.
- Leases are stamped and checked with the database's clock, so hosts whose clocks differ
  still agree on when a lease lapsed.
- Files (uploads, transcripts, side files) go to a blobs.JobFiles: rows of job_files in
  this database by default (blobs.TableFiles), or objects in S3 storage when
  WHISPER_OBJECT_STORE is set (objects.ObjectFiles), and then PostgreSQL keeps state, queue
  and leases only. Each host keeps the uploads it wrote or read in a local folder (a cache:
  the model reads files by path), removed with the job.
- Submits and requeues NOTIFY a channel; idle consumers LISTEN on it instead of polling.
- Connections are pooled per process and checked before each use, so a restarted database
  costs a retry, not a crash. While it cannot be reached, every call raises
  StoreUnavailable (the web answers 503 with Retry-After), logged once per outage.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import psycopg
from psycopg.rows import dict_row

from whisper_service.queue.store.base import (COUNTERS, MEDIA_FILE, TRANSCRIPT_FILE, Claimant, Decide,
                   JobStore, Row, Settlement)
from whisper_service.errors import StoreUnavailable
from whisper_service.queue.store.base import check_side_file
from whisper_service.queue.store.blobs import JobFiles, TableFiles
from whisper_service.queue.store.files import remove_strays
from whisper_service.queue.store.reachability import Reachability
from whisper_service.queue.store.signouts import SignOutBook

log = logging.getLogger(__name__)

CHANNEL = "whisper_jobs"  # NOTIFY channel: there may be work
CONNECT_TIMEOUT_SECONDS = 5  # a database that does not answer is "away", not a hang
POOL_IDLE = 8  # connections kept open per process between calls
LISTEN_TIMEOUT_SECONDS = 1.0  # the listener looks whether it should stop this often
RECONNECT_SECONDS = 1.0  # the listener waits this long before connecting again
WORKER_FORGET_SECONDS = 24 * 3600.0  # a worker not seen for this long is dropped from the list
SCHEMA_LOCK = 0x77686973  # advisory lock ids: schema creation ...
SUBMIT_LOCK = 0x77686975  # ... and the queue's length check at submit
_NOW = "extract(epoch from clock_timestamp())::double precision"  # the database's clock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq BIGSERIAL PRIMARY KEY,              -- submission order: the queue is FIFO on it
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    filename TEXT NOT NULL,
    options TEXT NOT NULL,                  -- TranscribeOptions as JSON
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,            -- start of the current or last attempt
    finished_at DOUBLE PRECISION,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    eta_seconds DOUBLE PRECISION,
    error TEXT,
    error_kind TEXT,
    error_field TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    media_type TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    claim_host TEXT,                        -- the host running it ...
    claim_pid INTEGER,                      -- ... the process ...
    claim_token TEXT,                       -- ... and which start() of that process
    lease_until DOUBLE PRECISION,           -- the claim lapses then (database clock)
    partial_text TEXT,                      -- while running: the text final so far
    error_detail TEXT                       -- a failed job's detail for the operator
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL, info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at DOUBLE PRECISION NOT NULL
);
-- each API key's sign-out generation (signouts.py): every web host reads the same
CREATE TABLE IF NOT EXISTS sign_outs (key_id TEXT PRIMARY KEY, generation BIGINT NOT NULL);
"""
# columns added since the first release: a database made by an older version gets them
# (added only where missing: ALTER TABLE would wait for every transaction on jobs)
_ADDED_COLUMNS = {"partial_text": "TEXT", "error_detail": "TEXT"}
_SELECT = f"""
SELECT *, CASE WHEN state = 'queued' THEN
    (SELECT COUNT(*) FROM jobs AS ahead WHERE ahead.state = 'queued' AND ahead.seq <= jobs.seq)
    END AS position,
    COALESCE(lease_until < {_NOW}, FALSE) AS lease_expired
FROM jobs
"""
# for rows about to be changed (FOR UPDATE): running jobs have no place in the queue
_LOCKING_SELECT = f"""
SELECT *, NULL::bigint AS position, COALESCE(lease_until < {_NOW}, FALSE) AS lease_expired
FROM jobs
"""


class _Pool:
    """A few open connections per process, each checked before it is lent: one that a
    database restart broke is replaced, not handed out."""

    def __init__(self, url: str):
        self._url = url
        self._idle: List[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._reach = Reachability("PostgreSQL")

    def open(self) -> psycopg.Connection:
        return psycopg.connect(self._url, autocommit=True, row_factory=dict_row,
                               connect_timeout=CONNECT_TIMEOUT_SECONDS)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection for one call, given back after it. A database that cannot be
        reached, or that drops the connection or refuses it while it shuts down or starts
        up (OperationalError), raises StoreUnavailable: every call goes through here."""
        try:
            with self._lent() as conn:
                yield conn
        except psycopg.OperationalError as error:
            reason = _away_reason(error)
            if reason is None:
                raise
            raise self._reach.unavailable(reason, error) from error
        self._reach.answered()

    @contextmanager
    def _lent(self) -> Iterator[psycopg.Connection]:
        conn = self._lend()
        try:
            yield conn
        except BaseException:
            conn.close()  # its state is unknown: a fresh one next time
            raise
        with self._lock:
            if len(self._idle) < POOL_IDLE and not conn.closed:
                self._idle.append(conn)
                return
        conn.close()

    def _lend(self) -> psycopg.Connection:
        with self._lock:
            if os.getpid() != self._pid:  # a forked child: the parent's sockets are not ours
                self._idle, self._pid = [], os.getpid()
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                conn.execute("SELECT 1")
                return conn
            except psycopg.Error:
                conn.close()
        return self.open()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PostgresStore(JobStore):
    errors = (psycopg.Error, StoreUnavailable)
    shared_across_hosts = True

    def __init__(self, url: str, cache_root: str, files: Optional[JobFiles] = None):
        self.root = cache_root  # this host's copies of uploads
        self._files = files or TableFiles()  # where jobs' files are kept
        self._files.check()
        self._pool = _Pool(url)
        self._wakers: List[Callable[[], None]] = []
        self._listener: Optional[threading.Thread] = None
        self._listen_lock = threading.Lock()
        os.makedirs(cache_root, exist_ok=True)
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(_SCHEMA + self._files.schema)
            columns = {row["column_name"] for row in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs' "
                "AND table_schema = current_schema()")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    # --- submitting -------------------------------------------------------------------

    def media_target(self, job_id: str) -> str:
        os.makedirs(self._folder(job_id))
        return self.local_media_path(job_id)

    def upload_target(self, job_id: str):
        return self._files.upload_target(job_id)

    def add(self, row: Row, max_queued: int, streamed: bool = False) -> bool:
        columns = ", ".join(row)
        marks = ", ".join("%s" for _ in row)
        try:
            with self._transaction() as db:
                if not streamed:
                    self._files.put_path(db, row["id"], MEDIA_FILE,
                                         self.local_media_path(row["id"]))
                db.execute("SELECT pg_advisory_xact_lock(%s)", (SUBMIT_LOCK,))
                # stamped under the lock, so that created_at orders jobs as seq does
                row = dict(row, created_at=time.time())
                inserted = db.execute(
                    f"INSERT INTO jobs ({columns}) SELECT {marks} "
                    "WHERE (SELECT COUNT(*) FROM jobs WHERE state = 'queued') < %s",
                    (*row.values(), max_queued),
                ).rowcount
                if not inserted:
                    raise _Full()  # rolls the pieces back with the transaction
                db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        except BaseException as error:
            self._forget_files(row["id"])  # the row was not written: neither are its files
            if isinstance(error, _Full):
                return False
            raise
        if self._files.outside:  # kept in the object store: a worker fetches it from there
            self.discard_local(row["id"])
        return True

    def add_finished(self, row: Row, transcript: str) -> None:
        columns = ", ".join(row)
        try:
            with self._transaction() as db:
                self._files.put_path(db, row["id"], MEDIA_FILE, self.local_media_path(row["id"]))
                self._files.put_text(db, row["id"], TRANSCRIPT_FILE, transcript)
                db.execute(f"INSERT INTO jobs ({columns}) VALUES ({', '.join('%s' for _ in row)})",
                           tuple(row.values()))
        except BaseException:
            self._forget_files(row["id"])
            raise

    def discard_local(self, job_id: str) -> None:
        shutil.rmtree(self._folder(job_id), ignore_errors=True)

    # --- reading ----------------------------------------------------------------------

    def get(self, job_id: str) -> Optional[Row]:
        with self._pool.connection() as db:
            return db.execute(_SELECT + " WHERE id = %s", (job_id,)).fetchone()

    def list(self, job_ids: Sequence[str]) -> List[Row]:
        with self._pool.connection() as db:
            return db.execute(_SELECT + " WHERE id = ANY(%s) ORDER BY seq DESC",
                              (list(job_ids),)).fetchall()

    def queued_count(self) -> int:
        with self._pool.connection() as db:
            return db.execute("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'").fetchone()["n"]

    def next_queued(self) -> Optional[Row]:
        with self._pool.connection() as db:
            return db.execute("SELECT id, filename FROM jobs WHERE state = 'queued' "
                              "ORDER BY seq LIMIT 1").fetchone()

    def recent_run_seconds(self, limit: int) -> List[float]:
        with self._pool.connection() as db:
            return [row["run"] for row in db.execute(
                "SELECT finished_at - started_at AS run FROM jobs WHERE state = 'done' "
                "AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT %s", (limit,))]

    def media_path(self, job_id: str) -> Optional[str]:
        path = self.local_media_path(job_id)
        if os.path.exists(path):
            return path
        os.makedirs(self._folder(job_id), exist_ok=True)
        temp = f"{path}.{secrets.token_hex(8)}.tmp"
        try:
            with open(temp, "wb") as out, self._reading() as db:
                if not self._files.read(db, job_id, MEDIA_FILE, out.write):
                    return None
            os.replace(temp, path)  # another thread fetching the same file: last one wins
            return path
        finally:
            if os.path.exists(temp):
                os.remove(temp)
            if not os.path.exists(path):
                shutil.rmtree(self._folder(job_id), ignore_errors=True)

    def local_media_path(self, job_id: str) -> str:
        return os.path.join(self._folder(job_id), MEDIA_FILE)

    def transcript(self, job_id: str) -> Optional[str]:
        pieces: List[bytes] = []
        with self._reading() as db:
            if not self._files.read(db, job_id, TRANSCRIPT_FILE, pieces.append):
                return None
        return b"".join(pieces).decode("utf-8")

    def replace_transcript(self, job_id: str, text: str) -> bool:
        with self._transaction() as db:
            if not self._lock_transcript(db, job_id):
                return False
            self._files.put_text(db, job_id, TRANSCRIPT_FILE, text)
        return True

    def side_file(self, job_id: str, name: str) -> Optional[str]:
        check_side_file(name)
        pieces: List[bytes] = []
        with self._reading() as db:
            if not self._files.read(db, job_id, name, pieces.append):
                return None
        return b"".join(pieces).decode("utf-8")

    def put_side_file(self, job_id: str, name: str, text: Optional[str]) -> bool:
        check_side_file(name)
        with self._transaction() as db:
            if not self._lock_transcript(db, job_id):
                return False
            if text is None:
                self._files.remove(db, job_id, name)
            else:
                self._files.put_text(db, job_id, name, text)
        return True

    # --- changing -----------------------------------------------------------------------

    def cancel(self, job_id: str, now: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'cancelled', finished_at = %s "
                       "WHERE id = %s AND state = 'queued'", (now, job_id))
            db.execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = %s "
                       "AND state = 'running'", (job_id,))

    def delete(self, job_id: str) -> bool:
        with self._transaction() as db:  # its files and idempotency keys go with it
            deleted = db.execute("DELETE FROM jobs WHERE id = %s", (job_id,)).rowcount
        if deleted:
            self.discard_local(job_id)
            self._forget_files(job_id)
        return bool(deleted)

    def claim(self, claimant: Claimant, lease_seconds: float, lookahead: int,
              choose: Callable[[List[Row]], List[str]]) -> List[Row]:
        with self._transaction() as db:
            # only the oldest free job is locked before choosing: locking the whole
            # lookahead would make a concurrent claim skip jobs this one leaves queued, and
            # run a newer job before them
            first = db.execute(
                "SELECT seq, id, options, attempts FROM jobs WHERE state = 'queued' "
                "ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED").fetchone()
            if first is None:
                return []
            rows = [first, *db.execute(
                "SELECT seq, id, options, attempts FROM jobs WHERE state = 'queued' "
                "AND seq > %s ORDER BY seq LIMIT %s", (first["seq"], lookahead - 1))]
            chosen = choose(rows)
            if not chosen:
                return []
            # the companions chosen are locked now; one another claim took meanwhile is left
            free = {row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE id = ANY(%s) AND state = 'queued' "
                "FOR UPDATE SKIP LOCKED", (chosen,))}
            chosen = [job_id for job_id in chosen if job_id in free]
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = %s, "
                "progress = 0, eta_seconds = NULL, partial_text = NULL, claim_host = %s, "
                f"claim_pid = %s, claim_token = %s, lease_until = {_NOW} + %s "
                "WHERE id = ANY(%s)",
                (time.time(), claimant.host, claimant.pid, claimant.token, lease_seconds,
                 chosen),
            )
            claimed = {row["id"]: row for row in db.execute(
                _SELECT + " WHERE id = ANY(%s)", (chosen,))}
        return [claimed[job_id] for job_id in chosen]

    def progress(self, job_id: str, token: str, fraction: float, eta: Optional[float],
                 partial_text: Optional[str] = None) -> bool:
        with self._pool.connection() as db:
            return bool(db.execute(
                "UPDATE jobs SET progress = %s, eta_seconds = %s, "
                "partial_text = COALESCE(%s, partial_text) WHERE id = %s "
                "AND state = 'running' AND claim_token = %s AND NOT cancel_requested",
                (fraction, eta, partial_text, job_id, token),
            ).rowcount)

    def heartbeat(self, job_ids: Iterable[str], token: str,
                  lease_seconds: Optional[float]) -> List[str]:
        ids = list(job_ids)
        with self._pool.connection() as db:
            if lease_seconds is not None:
                db.execute(f"UPDATE jobs SET lease_until = {_NOW} + %s WHERE id = ANY(%s) "
                           "AND state = 'running' AND claim_token = %s",
                           (lease_seconds, ids, token))
            return [row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE id = ANY(%s) AND state = 'running' "
                "AND claim_token = %s AND NOT cancel_requested", (ids, token))]

    def settle(self, job_id: str, token: str, decide: Decide,
               transcript: Optional[str] = None) -> Optional[Settlement]:
        with self._transaction() as db:
            row = db.execute(_LOCKING_SELECT + " WHERE id = %s AND state = 'running' "
                             "AND claim_token = %s FOR UPDATE", (job_id, token)).fetchone()
            if row is None:
                return None
            settlement = decide(row)
            if transcript is not None:
                self._files.put_text(db, job_id, TRANSCRIPT_FILE, transcript)
            self._apply(db, job_id, settlement)
            return settlement

    def recover(self, is_orphan: Callable[[Row], bool], decide: Decide) -> List[Tuple[Row, Settlement]]:
        with self._transaction() as db:
            # a row being settled right now is locked, and skipped: it is not an orphan
            rows = db.execute(_LOCKING_SELECT + " WHERE state = 'running' "
                              "FOR UPDATE SKIP LOCKED").fetchall()
            return self._settle_orphans(db, rows, is_orphan, decide)

    def purge(self, cutoff: float) -> int:
        with self._transaction() as db:
            expired = [row["id"] for row in db.execute(
                "DELETE FROM jobs WHERE state IN ('done', 'failed', 'cancelled') "
                "AND finished_at < %s RETURNING id", (cutoff,))]
            db.execute(f"DELETE FROM workers WHERE seen_at < {_NOW} - %s",
                       (WORKER_FORGET_SECONDS,))
        for job_id in expired:
            self.discard_local(job_id)
            self._forget_files(job_id)
        remove_strays(self.root, self._known)
        try:
            self._files.collect_strays(self._known)
        except StoreUnavailable:  # the object store away: the next pass collects them
            log.warning("stray job files stay until the next retention pass")
        return len(expired)

    # --- many hosts -------------------------------------------------------------------

    def wake_on_submit(self, wake: Callable[[], None]) -> None:
        with self._listen_lock:
            self._wakers.append(wake)
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, name="jobs-listen",
                                                  daemon=True)
                self._listener.start()

    def stop_waking(self, wake: Callable[[], None]) -> None:
        with self._listen_lock:
            if wake in self._wakers:
                self._wakers.remove(wake)

    def _listen(self) -> None:
        """LISTEN until no one wants waking; after a lost connection, connect again and
        wake everyone (a notification may have been missed meanwhile). A database away
        for long is logged once, not at every try."""
        lost = False  # logged since the last LISTEN that worked
        while True:
            try:
                with self._pool.open() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    lost = False
                    self._wake_all()
                    while True:
                        for _ in conn.notifies(timeout=LISTEN_TIMEOUT_SECONDS):
                            self._wake_all()
                        if self._listener_done():
                            return
            except psycopg.Error as error:
                if not lost:
                    log.warning("job notifications lost (%s); listening again every %s s",
                                error, RECONNECT_SECONDS)
                lost = True
                if self._listener_done():
                    return
                time.sleep(RECONNECT_SECONDS)

    def _listener_done(self) -> bool:
        with self._listen_lock:
            if self._wakers:
                return False
            self._listener = None
            return True

    def _wake_all(self) -> None:
        with self._listen_lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def beat_worker(self, name: str, info: Dict[str, object]) -> None:
        with self._pool.connection() as db:
            db.execute(f"INSERT INTO workers (name, seen_at, info) VALUES (%s, {_NOW}, %s) "
                       "ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at, "
                       "info = excluded.info", (name, json.dumps(info)))

    def workers(self, within_seconds: float) -> List[Dict[str, object]]:
        with self._pool.connection() as db:
            rows = db.execute(f"SELECT name, {_NOW} - seen_at AS seen, info FROM workers "
                              f"WHERE seen_at >= {_NOW} - %s ORDER BY name",
                              (within_seconds,)).fetchall()
        return [{"name": r["name"], "seen": r["seen"], "info": json.loads(r["info"])}
                for r in rows]

    def counts(self) -> Dict[str, int]:
        with self._pool.connection() as db:
            return {r["state"]: r["n"] for r in db.execute(
                "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def counters(self) -> Dict[str, float]:
        with self._pool.connection() as db:
            found = {r["name"]: r["value"] for r in db.execute("SELECT name, value FROM counters")}
        return {name: found.get(name, 0.0) for name in COUNTERS}

    def remember_key(self, key: str, digest: str, job_id: str) -> Tuple[str, str]:
        with self._transaction() as db:
            db.execute("INSERT INTO idempotency (key, digest, job_id, created_at) "
                       "VALUES (%s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
                       (key, digest, job_id, time.time()))
            row = db.execute("SELECT digest, job_id FROM idempotency WHERE key = %s",
                             (key,)).fetchone()
        return row["digest"], row["job_id"]

    def recall_key(self, key: str) -> Optional[Tuple[str, str]]:
        with self._pool.connection() as db:
            row = db.execute("SELECT digest, job_id FROM idempotency WHERE key = %s",
                             (key,)).fetchone()
        return (row["digest"], row["job_id"]) if row else None

    def sign_outs(self, folder: str) -> SignOutBook:
        return _TableSignOuts(self._pool)

    def close(self) -> None:
        with self._listen_lock:
            self._wakers.clear()
        self._pool.close()

    # --- inside -------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        with self._pool.connection() as db, db.transaction():
            yield db

    def _known(self, job_ids: List[str]) -> set:
        with self._pool.connection() as db:
            return {row["id"] for row in db.execute("SELECT id FROM jobs WHERE id = ANY(%s)",
                                                    (job_ids,))}

    @staticmethod
    def _apply(db: psycopg.Connection, job_id: str, settlement: Settlement) -> None:
        changes = settlement.changes
        # column names come from jobs.py only, never from a request
        assignments = ", ".join(f"{column} = %s" for column in changes)
        db.execute(f"UPDATE jobs SET {assignments} WHERE id = %s", (*changes.values(), job_id))
        for name, amount in settlement.counters.items():
            db.execute("INSERT INTO counters (name, value) VALUES (%s, %s) ON CONFLICT (name) "
                       "DO UPDATE SET value = counters.value + excluded.value", (name, amount))
        if settlement.notify:
            db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

    def _reading(self) -> ContextManager[Optional[psycopg.Connection]]:
        """What reading a file needs: a transaction where files are rows (a server-side
        cursor lives in one), nothing where they are objects (a long download then holds no
        connection, and works while the database is away)."""
        return nullcontext() if self._files.outside else self._transaction()

    def _lock_transcript(self, db: psycopg.Connection, job_id: str) -> bool:
        """Within db's transaction: lock the job's row (a delete and other writers wait)
        and say whether it has a transcript."""
        row = db.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
        return row is not None and self._files.exists(db, job_id, TRANSCRIPT_FILE)

    def _forget_files(self, job_id: str) -> None:
        """Remove a job's files whose row is gone or was never written; an object store that
        does not answer now leaves them to collect_strays()."""
        try:
            self._files.remove_job(job_id)
        except StoreUnavailable:
            log.warning("the files of job %s stay until the retention pass removes them", job_id)

    def _folder(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)


def _away_reason(error: psycopg.OperationalError) -> Optional[str]:
    """What a client may be told of an error that means the database is out of reach for
    now: a phrase, never the driver's text (it names the server's address or socket path).
    None for one that is not an outage (a deadlock, a serialization failure)."""
    state = getattr(error, "sqlstate", None) or ""
    if not state or state.startswith("08"):  # no answer at all, or the connection broke
        return "PostgreSQL does not answer"
    if state.startswith("57P"):  # shutting down, starting up, or in crash recovery
        return "PostgreSQL is shutting down or starting up"
    if state in ("55P03", "57014"):  # lock_timeout, statement_timeout
        return "it stayed locked by another transaction past its timeout"
    return None


class _Full(Exception):
    """The queue was full at insert: undoes the upload's transaction."""


class _TableSignOuts(SignOutBook):
    """Sign-out generations in the sign_outs table: shared by every host of the database."""

    def __init__(self, pool):
        self._pool = pool

    def generation(self, key_id: str) -> int:
        with self._pool.connection() as db:
            row = db.execute("SELECT generation FROM sign_outs WHERE key_id = %s",
                             (key_id,)).fetchone()
        return int(row["generation"]) if row else 0

    def advance(self, key_id: str) -> int:
        with self._pool.connection() as db, db.transaction():
            row = db.execute("INSERT INTO sign_outs (key_id, generation) VALUES (%s, 1) "
                             "ON CONFLICT (key_id) DO UPDATE SET generation = "
                             "sign_outs.generation + 1 RETURNING generation", (key_id,)).fetchone()
        return int(row["generation"])
