"""Fine-tunes that every host sees: records in PostgreSQL's `fine_tunes` table, files kept by
the jobs' keeper (blobs.JobFiles): rows of `fine_tune_files`, or objects under
`<prefix>fine-tunes/<id>/` with WHISPER_OBJECT_STORE, so PostgreSQL then keeps state, queue
and leases only.

- A claim takes the oldest queued fine-tune, or a running one whose lease lapsed (its host
  died) or that its runner released (its process stopped), with `FOR UPDATE SKIP LOCKED`;
  leases are stamped with the database's clock, as for jobs.
- The runner's beat extends its lease and learns whether DELETE asked it to stop
  (`cancel_requested`); a fine-tune asked to stop whose runner died is cancelled by the
  next claim.
- A name is taken once among queued, running and done fine-tunes (a unique index: two
  hosts accepting the same name at once cannot both succeed).
- Files are written before the row that names them (objects) or in its transaction (rows);
  objects no record names are collected by collect_strays() once they are old.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from typing import Iterator, List, Optional, Sequence

import psycopg

from whisper_service.errors import BadOption
from whisper_service.queue.finetune_store.base import (ARCHIVE, CANCEL, CANCELLED, ENDED, FILES,
                                                       GO_ON, LOST, QUEUED, RUNNING, Claim,
                                                       FineTuneStore)
from whisper_service.queue.store.blobs import JobFiles
from whisper_service.queue.store.files import valid_id
from whisper_service.queue.store.postgres import _Pool  # the job store's checked pool

SCHEMA_LOCK = 0x77686976  # advisory lock id: this schema's creation
_NOW = "extract(epoch from clock_timestamp())::double precision"  # the database's clock
_SCHEMA = """
CREATE TABLE IF NOT EXISTS fine_tunes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,                    -- queued, running, done, failed, cancelled
    created_at DOUBLE PRECISION NOT NULL,   -- the queue is FIFO on it
    step INTEGER NOT NULL DEFAULT 0,
    loss DOUBLE PRECISION,
    wer DOUBLE PRECISION,
    record TEXT NOT NULL,                   -- the record as the API shows it (JSON): options,
                                            -- loss and WER curves, before/after tables
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    claimed_by TEXT,                        -- the runner (host:pid:token) holding it
    lease_until DOUBLE PRECISION,           -- its claim lapses then (database clock)
    heartbeat_at DOUBLE PRECISION           -- when its runner was last heard from
);
CREATE UNIQUE INDEX IF NOT EXISTS fine_tunes_by_name ON fine_tunes (name)
    WHERE state IN ('queued', 'running', 'done');
"""
_RUNNABLE = f"""
NOT cancel_requested AND (state = 'queued' OR (state = 'running'
    AND (claimed_by IS NULL OR lease_until < {_NOW})))
"""


class SharedFineTunes(FineTuneStore):
    shared = True

    def __init__(self, url: str, folder: str, files: JobFiles):
        super().__init__(folder)
        self._files = files
        self._files.check()
        self._pool = _Pool(url)
        os.makedirs(folder, exist_ok=True)
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(_SCHEMA + self._files.schema)

    def add(self, record: dict, archive: str) -> None:
        fine_tune_id = record["id"]
        try:
            with self._transaction() as db:
                self._files.put_path(db, fine_tune_id, ARCHIVE, archive)
                db.execute("INSERT INTO fine_tunes (id, name, state, created_at, record) "
                           "VALUES (%s, %s, %s, %s, %s)",
                           (fine_tune_id, record["name"], record["state"], record["created"],
                            json.dumps(record)))
        except psycopg.errors.UniqueViolation:
            self._files.remove_job(fine_tune_id)
            raise BadOption("name", f"there is already a model named {record['name']!r}") from None
        except BaseException:
            self._files.remove_job(fine_tune_id)
            raise

    def get(self, fine_tune_id: str) -> Optional[dict]:
        if not valid_id(fine_tune_id):
            return None
        with self._pool.connection() as db:
            row = db.execute("SELECT state, record FROM fine_tunes WHERE id = %s",
                             (fine_tune_id,)).fetchone()
        return _record(row) if row else None

    def list(self) -> List[dict]:
        with self._pool.connection() as db:
            rows = db.execute("SELECT state, record FROM fine_tunes ORDER BY created_at").fetchall()
        return [_record(row) for row in rows]

    def cancel(self, fine_tune_id: str) -> Optional[dict]:
        if not valid_id(fine_tune_id):
            return None
        with self._transaction() as db:
            row = db.execute(f"SELECT state, COALESCE(lease_until < {_NOW}, TRUE) AS lapsed, "
                             "claimed_by FROM fine_tunes WHERE id = %s FOR UPDATE",
                             (fine_tune_id,)).fetchone()
            if row is None:
                return None
            at_once = row["state"] == QUEUED or (row["state"] == RUNNING and (
                row["claimed_by"] is None or row["lapsed"]))  # no runner holds it
            if at_once:
                db.execute("UPDATE fine_tunes SET state = %s, claimed_by = NULL, lease_until = NULL, "
                           "cancel_requested = TRUE WHERE id = %s", (CANCELLED, fine_tune_id))
            elif row["state"] == RUNNING:
                db.execute("UPDATE fine_tunes SET cancel_requested = TRUE WHERE id = %s",
                           (fine_tune_id,))
        if at_once:
            self.remove_files(fine_tune_id)
        return self.get(fine_tune_id)

    def claim(self, owner: str, lease_seconds: float) -> Optional[Claim]:
        with self._transaction() as db:  # asked to stop while its runner died: cancelled now
            abandoned = [row["id"] for row in db.execute(
                f"UPDATE fine_tunes SET state = %s, claimed_by = NULL, lease_until = NULL "
                f"WHERE state = %s AND cancel_requested AND (claimed_by IS NULL "
                f"OR lease_until < {_NOW}) RETURNING id", (CANCELLED, RUNNING))]
            row = db.execute(
                f"WITH next AS (SELECT id, state AS was FROM fine_tunes WHERE {_RUNNABLE} "
                f"ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) "
                f"UPDATE fine_tunes SET state = %s, claimed_by = %s, "
                f"lease_until = {_NOW} + %s, heartbeat_at = {_NOW} FROM next "
                f"WHERE fine_tunes.id = next.id RETURNING fine_tunes.state, fine_tunes.record, next.was",
                (RUNNING, owner, lease_seconds)).fetchone()
        for fine_tune_id in abandoned:
            self.remove_files(fine_tune_id)
        if row is None:
            return None
        record = _record(row)
        record["error"] = None
        return Claim(record, owner, resume=row["was"] == RUNNING)

    def write(self, claim: Claim, record: dict) -> bool:
        ended = record["state"] in ENDED
        with self._pool.connection() as db:
            written = db.execute(
                "UPDATE fine_tunes SET state = %s, step = %s, loss = %s, wer = %s, record = %s, "
                "claimed_by = CASE WHEN %s THEN NULL ELSE claimed_by END, "
                "lease_until = CASE WHEN %s THEN NULL ELSE lease_until END "
                "WHERE id = %s AND claimed_by = %s",
                (record["state"], record.get("step") or 0, record.get("loss"), record.get("wer"),
                 json.dumps(record), ended, ended, record["id"], claim.owner)).rowcount
        return written == 1

    def beat(self, claim: Claim, lease_seconds: float) -> str:
        with self._pool.connection() as db:
            row = db.execute(
                f"UPDATE fine_tunes SET lease_until = {_NOW} + %s, heartbeat_at = {_NOW} "
                f"WHERE id = %s AND claimed_by = %s AND state = %s RETURNING cancel_requested",
                (lease_seconds, claim.record["id"], claim.owner, RUNNING)).fetchone()
        if row is None:
            return LOST
        return CANCEL if row["cancel_requested"] else GO_ON

    def release(self, claim: Claim) -> None:
        with self._pool.connection() as db:
            db.execute("UPDATE fine_tunes SET claimed_by = NULL, lease_until = NULL "
                       "WHERE id = %s AND claimed_by = %s", (claim.record["id"], claim.owner))

    def put_file(self, fine_tune_id: str, name: str, path: str) -> None:
        with self._transaction() as db:
            if not self._files.outside:  # rows: the old pieces go in the same transaction
                self._files.remove(db, fine_tune_id, name)
            self._files.put_path(db, fine_tune_id, name, path)

    def fetch_file(self, fine_tune_id: str, name: str, path: str) -> bool:
        partial = f"{path}.part"
        with self._reading() as db, open(partial, "wb") as out:
            found = self._files.read(db, fine_tune_id, name, out.write)
        if found:
            os.replace(partial, path)
        else:
            os.remove(partial)
        return found

    def remove_files(self, fine_tune_id: str, names: Sequence[str] = FILES) -> None:
        with self._transaction() as db:
            for name in names:
                self._files.remove(db, fine_tune_id, name)

    def collect_strays(self) -> int:
        return self._files.collect_strays(self._known)

    def close(self) -> None:
        self._pool.close()

    # --- inside -------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        with self._pool.connection() as db, db.transaction():
            yield db

    def _reading(self):
        """Objects are read outside the database; rows need a transaction (a named cursor)."""
        return nullcontext() if self._files.outside else self._transaction()

    def _known(self, fine_tune_ids: List[str]) -> set:
        with self._pool.connection() as db:
            return {row["id"] for row in db.execute(
                "SELECT id FROM fine_tunes WHERE id = ANY(%s)", (fine_tune_ids,))}


def _record(row) -> dict:
    record = json.loads(row["record"])
    record["state"] = row["state"]  # a cancel may have changed it after the record was written
    return record
