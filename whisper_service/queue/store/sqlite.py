"""The embedded store: SQLite for state (root/jobs.sqlite3, WAL) and one folder per job id
for its files (root/<id>/media, root/<id>/transcript.json). Needs nothing installed.

Several processes of one host may share a root. Every change of state happens in one short
`BEGIN IMMEDIATE` transaction, so two consumers never claim the same job. Hosts must not
share a root (SQLite over a network file system loses locks); use postgres.py for that.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from whisper_service.queue.store.base import (COUNTERS, MEDIA_FILE, TRANSCRIPT_FILE, Claimant, Decide, JobStore, Row,
                   Settlement)
from whisper_service.errors import StoreUnavailable
from whisper_service.queue.store.base import check_side_file
from whisper_service.queue.store.files import remove_strays
from whisper_service.queue.store.reachability import Reachability

log = logging.getLogger(__name__)

DB_FILE = "jobs.sqlite3"
BUSY_TIMEOUT_SECONDS = 30.0  # how long a statement waits for another writer's lock
# SQLite's result codes that mean "out of reach for now", not "a wrong statement"
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CANTOPEN = 5, 6, 14

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
    claim_token TEXT,                       -- ... and which start() of that process
    claim_host TEXT,                        -- ... on which host
    lease_until REAL,                       -- the claim lapses then unless renewed
    partial_text TEXT,                      -- while running: the text final so far
    error_detail TEXT                       -- a failed job's detail for the operator
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS workers (name TEXT PRIMARY KEY, seen_at REAL NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, digest TEXT NOT NULL, job_id TEXT NOT NULL, created_at REAL NOT NULL
);
"""
# columns added since the first release: a database written by an older version gets them
_ADDED_COLUMNS = {"media_type": "TEXT", "claim_host": "TEXT", "lease_until": "REAL",
                  "partial_text": "TEXT", "error_detail": "TEXT"}
# a queued job's 1-based place: the queued jobs submitted before it, and itself
_SELECT = """
SELECT *, CASE WHEN state = 'queued' THEN
    (SELECT COUNT(*) FROM jobs AS ahead WHERE ahead.state = 'queued' AND ahead.seq <= jobs.seq)
    END AS position,
    COALESCE(lease_until < ?, 0) AS lease_expired
FROM jobs
"""


class SQLiteStore(JobStore):
    errors = (sqlite3.Error, StoreUnavailable)

    def __init__(self, root: str):
        self.root = root
        self._reach = Reachability("SQLite")
        self._db_path = os.path.join(root, DB_FILE)
        os.makedirs(root, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            db.executescript(_SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    # --- submitting -------------------------------------------------------------------

    def media_target(self, job_id: str) -> str:
        os.makedirs(self._folder(job_id))
        return self.local_media_path(job_id)

    def add(self, row: Row, max_queued: int, streamed: bool = False) -> bool:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._connect(write=True) as db:
            # stamped under the lock, so that created_at orders jobs as seq does
            row = dict(row, created_at=time.time())
            # the count is checked in the insert itself: others may have submitted meanwhile
            return bool(db.execute(
                f"INSERT INTO jobs ({columns}) SELECT {marks} "
                "WHERE (SELECT COUNT(*) FROM jobs WHERE state = 'queued') < ?",
                (*row.values(), max_queued),
            ).rowcount)

    def add_finished(self, row: Row, transcript: str) -> None:
        self._write_transcript(row["id"], transcript)
        columns = ", ".join(row)
        with self._connect(write=True) as db:
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({', '.join('?' for _ in row)})",
                       tuple(row.values()))

    def discard_local(self, job_id: str) -> None:
        shutil.rmtree(self._folder(job_id), ignore_errors=True)

    # --- reading ----------------------------------------------------------------------

    def get(self, job_id: str) -> Optional[Row]:
        with self._connect() as db:
            row = db.execute(_SELECT + " WHERE id = ?", (time.time(), job_id)).fetchone()
        return dict(row) if row else None

    def list(self, job_ids: Sequence[str]) -> List[Row]:
        with self._connect() as db:
            rows = db.execute(
                _SELECT + " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY seq DESC",
                (time.time(), json.dumps(list(job_ids))),
            ).fetchall()
        return [dict(row) for row in rows]

    def queued_count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]

    def next_queued(self) -> Optional[Row]:
        with self._connect() as db:
            row = db.execute("SELECT id, filename FROM jobs WHERE state = 'queued' "
                             "ORDER BY seq LIMIT 1").fetchone()
        return dict(row) if row else None

    def recent_run_seconds(self, limit: int) -> List[float]:
        with self._connect() as db:
            return [row[0] for row in db.execute(
                "SELECT finished_at - started_at FROM jobs WHERE state = 'done' "
                "AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?", (limit,))]

    def media_path(self, job_id: str) -> Optional[str]:
        path = self.local_media_path(job_id)
        return path if os.path.exists(path) else None

    def local_media_path(self, job_id: str) -> str:
        return os.path.join(self._folder(job_id), MEDIA_FILE)

    def transcript(self, job_id: str) -> Optional[str]:
        try:
            with open(self._transcript_path(job_id), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def replace_transcript(self, job_id: str, text: str) -> bool:
        if not os.path.exists(self._transcript_path(job_id)):
            return False
        self._write_transcript(job_id, text)
        return True

    def side_file(self, job_id: str, name: str) -> Optional[str]:
        try:
            with open(self._side_path(job_id, name), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def put_side_file(self, job_id: str, name: str, text: Optional[str]) -> bool:
        path = self._side_path(job_id, name)
        if not os.path.exists(self._transcript_path(job_id)):
            return False
        try:
            if text is None:
                os.remove(path)
            else:
                temp = f"{path}.{secrets.token_hex(8)}.tmp"
                with open(temp, "w", encoding="utf-8") as out:
                    out.write(text)
                os.replace(temp, path)  # readers never see half a file
        except FileNotFoundError:  # nothing to remove, or the job's folder went meanwhile
            return os.path.exists(self._transcript_path(job_id))
        return True

    def _side_path(self, job_id: str, name: str) -> str:
        return os.path.join(self._folder(job_id), check_side_file(name))

    # --- changing -----------------------------------------------------------------------

    def cancel(self, job_id: str, now: float) -> None:
        with self._connect(write=True) as db:
            db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ? "
                       "WHERE id = ? AND state = 'queued'", (now, job_id))
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'",
                       (job_id,))

    def delete(self, job_id: str) -> bool:
        with self._connect(write=True) as db:
            deleted = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            db.execute("DELETE FROM idempotency WHERE job_id = ?", (job_id,))
        if deleted:
            self.discard_local(job_id)
        return bool(deleted)

    def claim(self, claimant: Claimant, lease_seconds: float, lookahead: int,
              choose: Callable[[List[Row]], List[str]]) -> List[Row]:
        with self._connect(write=True) as db:
            rows = [dict(row) for row in db.execute(
                "SELECT id, options, attempts FROM jobs WHERE state = 'queued' "
                "ORDER BY seq LIMIT ?", (lookahead,))]
            chosen = choose(rows) if rows else []
            now = time.time()
            for job_id in chosen:
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                    "started_at = ?, progress = 0, eta_seconds = NULL, partial_text = NULL, "
                    "claim_host = ?, claim_pid = ?, claim_token = ?, lease_until = ? "
                    "WHERE id = ?",
                    (now, claimant.host, claimant.pid, claimant.token, now + lease_seconds,
                     job_id),
                )
            return [dict(db.execute(_SELECT + " WHERE id = ?", (now, job_id)).fetchone())
                    for job_id in chosen]

    def progress(self, job_id: str, token: str, fraction: float, eta: Optional[float],
                 partial_text: Optional[str] = None) -> bool:
        with self._connect() as db:
            # one statement writes the progress and tells whether to go on
            return bool(db.execute(
                "UPDATE jobs SET progress = ?, eta_seconds = ?, "
                "partial_text = COALESCE(?, partial_text) WHERE id = ? "
                "AND state = 'running' AND claim_token = ? AND NOT cancel_requested",
                (fraction, eta, partial_text, job_id, token),
            ).rowcount)

    def heartbeat(self, job_ids: Iterable[str], token: str,
                  lease_seconds: Optional[float]) -> List[str]:
        ids = json.dumps(list(job_ids))
        with self._connect(write=lease_seconds is not None) as db:
            if lease_seconds is not None:
                db.execute("UPDATE jobs SET lease_until = ? WHERE id IN (SELECT value FROM "
                           "json_each(?)) AND state = 'running' AND claim_token = ?",
                           (time.time() + lease_seconds, ids, token))
            return [row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
                "AND state = 'running' AND claim_token = ? AND NOT cancel_requested",
                (ids, token))]

    def settle(self, job_id: str, token: str, decide: Decide,
               transcript: Optional[str] = None) -> Optional[Settlement]:
        temp = None
        if transcript is not None:  # written before the lock is taken, moved in under it
            temp = f"{self._transcript_path(job_id)}.{secrets.token_hex(8)}.tmp"
            with open(temp, "w", encoding="utf-8") as out:
                out.write(transcript)
        try:
            with self._connect(write=True) as db:
                row = db.execute(
                    _SELECT + " WHERE id = ? AND state = 'running' AND claim_token = ?",
                    (time.time(), job_id, token),
                ).fetchone()
                if row is None:
                    return None
                settlement = decide(dict(row))
                if temp is not None:
                    os.replace(temp, self._transcript_path(job_id))  # readers never see half
                self._apply(db, job_id, settlement)
                return settlement
        finally:
            if temp is not None and os.path.exists(temp):
                os.remove(temp)

    def recover(self, is_orphan: Callable[[Row], bool], decide: Decide) -> List[Tuple[Row, Settlement]]:
        with self._connect(write=True) as db:
            rows = [dict(row) for row in db.execute(
                _SELECT + " WHERE state = 'running'", (time.time(),))]
            return self._settle_orphans(db, rows, is_orphan, decide)

    def purge(self, cutoff: float) -> int:
        with self._connect(write=True) as db:
            expired = [row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') "
                "AND finished_at < ?", (cutoff,))]
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in expired])
            db.executemany("DELETE FROM idempotency WHERE job_id = ?", [(i,) for i in expired])
        for job_id in expired:
            self.discard_local(job_id)
        remove_strays(self.root, self._known)
        return len(expired)

    # --- many hosts -------------------------------------------------------------------

    def beat_worker(self, name: str, info: Dict[str, object]) -> None:
        with self._connect(write=True) as db:
            db.execute("INSERT INTO workers (name, seen_at, info) VALUES (?, ?, ?) ON CONFLICT "
                       "(name) DO UPDATE SET seen_at = excluded.seen_at, info = excluded.info",
                       (name, time.time(), json.dumps(info)))

    def workers(self, within_seconds: float) -> List[Dict[str, object]]:
        now = time.time()
        with self._connect() as db:
            rows = db.execute("SELECT name, seen_at, info FROM workers WHERE seen_at >= ? "
                              "ORDER BY name", (now - within_seconds,)).fetchall()
        return [{"name": r["name"], "seen": now - r["seen_at"], "info": json.loads(r["info"])}
                for r in rows]

    def counts(self) -> Dict[str, int]:
        with self._connect() as db:
            return {r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def counters(self) -> Dict[str, float]:
        with self._connect() as db:
            found = {r[0]: r[1] for r in db.execute("SELECT name, value FROM counters")}
        return {name: found.get(name, 0.0) for name in COUNTERS}

    def remember_key(self, key: str, digest: str, job_id: str) -> Tuple[str, str]:
        with self._connect(write=True) as db:
            db.execute("INSERT INTO idempotency (key, digest, job_id, created_at) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                       (key, digest, job_id, time.time()))
            row = db.execute("SELECT digest, job_id FROM idempotency WHERE key = ?",
                             (key,)).fetchone()
        return row["digest"], row["job_id"]

    def recall_key(self, key: str) -> Optional[Tuple[str, str]]:
        with self._connect() as db:
            row = db.execute("SELECT digest, job_id FROM idempotency WHERE key = ?",
                             (key,)).fetchone()
        return (row["digest"], row["job_id"]) if row else None

    # --- inside -------------------------------------------------------------------------

    def _known(self, job_ids: List[str]) -> set:
        with self._connect() as db:
            return {row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(job_ids),))}

    @staticmethod
    def _apply(db: sqlite3.Connection, job_id: str, settlement: Settlement) -> None:
        changes = settlement.changes
        # column names come from jobs.py only, never from a request
        assignments = ", ".join(f"{column} = ?" for column in changes)
        db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*changes.values(), job_id))
        for name, amount in settlement.counters.items():
            db.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) "
                       "DO UPDATE SET value = value + excluded.value", (name, amount))

    def _write_transcript(self, job_id: str, text: str) -> None:
        path = self._transcript_path(job_id)
        temp = f"{path}.{secrets.token_hex(8)}.tmp"
        with open(temp, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)  # readers never see half a file

    def _folder(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)

    def _transcript_path(self, job_id: str) -> str:
        return os.path.join(self._folder(job_id), TRANSCRIPT_FILE)

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection for one call (see _session); a database locked past
        BUSY_TIMEOUT_SECONDS, or one that cannot be opened, raises StoreUnavailable."""
        try:
            with self._session(write) as db:
                yield db
        except sqlite3.OperationalError as error:
            reason = _away_reason(error)
            if reason is None:
                raise  # a mistake in a statement, not an outage
            raise self._reach.unavailable(reason, error) from error
        self._reach.answered()

    @contextmanager
    def _session(self, write: bool) -> Iterator[sqlite3.Connection]:
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


def _away_reason(error: sqlite3.OperationalError) -> Optional[str]:
    """What a client may be told of an error that means the database is out of reach for
    now (locked by another process past the timeout, or not openable); None otherwise."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code in (SQLITE_BUSY, SQLITE_LOCKED) or "locked" in str(error):
        return f"it stayed locked by another process for more than {BUSY_TIMEOUT_SECONDS:g} s"
    if code == SQLITE_CANTOPEN:
        return "its file cannot be opened"
    return None
