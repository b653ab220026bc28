"""Where the PostgreSQL store keeps a job's files (uploads, recordings, transcripts, side
files): one small interface, two places.

- TableFiles: rows of at most COPY_CHUNK bytes in the database's job_files table (the
  default: many hosts share nothing but PostgreSQL).
- objects.ObjectFiles: objects in an S3 bucket (WHISPER_OBJECT_STORE): PostgreSQL then keeps
  state, queue and leases only.

Every method that writes is given the caller's open transaction `db`: TableFiles writes in
it, so a file and its row commit together; ObjectFiles writes the object at once, before
the row commits, so a crash between the two leaves an object no row names, which
collect_strays() removes once it is older than files.STRAY_SECONDS.
"""

from __future__ import annotations

import abc
import secrets
from typing import Callable, Iterable, List

from whisper_service.queue.store.base import COPY_CHUNK

Known = Callable[[List[str]], Iterable[str]]  # of these job ids, those that have a row


class JobFiles(abc.ABC):
    """A job's named files (MEDIA_FILE, TRANSCRIPT_FILE, SIDE_FILES), for PostgresStore."""

    # the table this keeper needs in the database's schema ("" for none)
    schema = ""
    # whether the files live outside the database: then a web host drops its spooled copy
    # of an upload once kept (its disk holds uploads on their way in only)
    outside = False

    def check(self) -> None:
        """Raise ConfigError naming the setting where the files cannot be kept (startup)."""

    def upload_target(self, job_id: str):
        """A spool.UploadTarget that streams a new upload where it is kept, or None: the
        upload is spooled to a local file first (see JobStore.upload_target)."""
        return None

    @abc.abstractmethod
    def put_path(self, db, job_id: str, name: str, path: str) -> None:
        """Keep the local file at path as `name` of the job, streamed in pieces."""

    @abc.abstractmethod
    def put_text(self, db, job_id: str, name: str, text: str) -> None:
        """Keep text (UTF-8) as `name` of the job, in place of what was there."""

    @abc.abstractmethod
    def read(self, db, job_id: str, name: str, write: Callable[[bytes], object]) -> bool:
        """Hand the file's bytes to write() a piece at a time; False when there is none."""

    @abc.abstractmethod
    def exists(self, db, job_id: str, name: str) -> bool:
        """Whether the job has the file `name`."""

    @abc.abstractmethod
    def remove(self, db, job_id: str, name: str) -> None:
        """Remove one file of the job (none: nothing happens)."""

    def remove_job(self, job_id: str) -> None:
        """Remove every file of a job whose row is gone (committed); the table's rows went
        with the row (ON DELETE CASCADE), so only a keeper outside the database acts."""

    def collect_strays(self, known: Known) -> int:
        """Remove files of jobs that have no row, older than a crash's debris may be; how
        many jobs' files went."""
        return 0


class TableFiles(JobFiles):
    """Files as rows of the job_files table (or another owner's table of pieces: the
    fine-tunes' fine_tune_files), written with COPY and read with a server-side cursor: a
    1 GB upload is never in memory at once."""

    def __init__(self, table: str = "job_files", owner: str = "jobs"):
        self.table = table  # the table of pieces (a constant of the code, never a request's)
        self.owner = owner  # the table whose rows own the files: its id, ON DELETE CASCADE
        self.schema = f"""
-- files in pieces; the key is checked at commit, so the pieces of an upload can be
-- written before its row, and the queue's length lock is held only for the row's insert
CREATE TABLE IF NOT EXISTS {table} (
    job_id TEXT NOT NULL REFERENCES {owner} (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    name TEXT NOT NULL,
    part INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (job_id, name, part)
);
"""

    def put_path(self, db, job_id: str, name: str, path: str) -> None:
        with open(path, "rb") as source, db.cursor().copy(
                f"COPY {self.table} (job_id, name, part, data) FROM STDIN") as copy:
            part = 0
            while True:
                piece = source.read(COPY_CHUNK)
                if not piece and part:
                    break
                copy.write_row((job_id, name, part, piece))
                part += 1
                if not piece:  # an empty file is one empty piece, so that it exists
                    break

    def put_text(self, db, job_id: str, name: str, text: str) -> None:
        data = text.encode("utf-8")
        self.remove(db, job_id, name)
        with db.cursor().copy(f"COPY {self.table} (job_id, name, part, data) FROM STDIN") as copy:
            for part, start in enumerate(range(0, max(len(data), 1), COPY_CHUNK)):
                copy.write_row((job_id, name, part, data[start:start + COPY_CHUNK]))

    def read(self, db, job_id: str, name: str, write: Callable[[bytes], object]) -> bool:
        found = False
        with db.cursor(name=f"file_{secrets.token_hex(4)}") as cursor:
            cursor.itersize = 1
            cursor.execute(f"SELECT data FROM {self.table} WHERE job_id = %s AND name = %s "
                           "ORDER BY part", (job_id, name))
            for row in cursor:
                write(row["data"])
                found = True
        return found

    def exists(self, db, job_id: str, name: str) -> bool:
        return db.execute(f"SELECT 1 FROM {self.table} WHERE job_id = %s AND name = %s "
                          "AND part = 0", (job_id, name)).fetchone() is not None

    def remove(self, db, job_id: str, name: str) -> None:
        db.execute(f"DELETE FROM {self.table} WHERE job_id = %s AND name = %s", (job_id, name))
