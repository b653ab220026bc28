"""Room on the data folder's disk, where uploads and transcripts are written.

Two guards, both raising DiskFull (the web answers 507 with Retry-After): a free-space
floor (WHISPER_MIN_FREE_MB) checked before an upload is written, so a disk running low
refuses uploads before it is full; and a full disk met while writing (ENOSPC, a quota),
turned from an OSError into the same sentence. The writer removes what it had written.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from whisper_service.errors import DiskFull

MB = 1024 * 1024
RETRY_AFTER_SECONDS = 60  # what a client refused for want of disk space is told to wait
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left; a disk quota reached
FULL_MESSAGE = ("the server's disk is full: there was no room for this upload, and nothing "
                "of it was kept; try again later")


@dataclass(frozen=True)
class Room:
    """The data folder's disk at one moment."""

    free_bytes: int  # what an unprivileged writer may still use
    min_free_bytes: int  # the floor: uploads are refused below it

    @property
    def low(self) -> bool:
        return self.free_bytes < self.min_free_bytes

    def sentence(self) -> str:
        """Why uploads are refused, for clients and /readyz."""
        return (f"the server's disk is nearly full ({self.free_bytes / MB:.0f} MB free; it keeps "
                f"at least {self.min_free_bytes / MB:.0f} MB free), so it takes no uploads for "
                f"now; try again later")


class DiskSpace:
    """The free-space floor of one folder's file system."""

    def __init__(self, folder: str, min_free_bytes: int):
        self.folder = folder  # the data folder (made if missing)
        self.min_free_bytes = min_free_bytes  # WHISPER_MIN_FREE_MB in bytes; 0: no floor
        os.makedirs(folder, exist_ok=True)

    def room(self) -> Room:
        stats = os.statvfs(self.folder)
        return Room(stats.f_bavail * stats.f_frsize, self.min_free_bytes)

    def check(self, incoming_bytes: int = 0) -> Room:
        """The room, or DiskFull when what is free, less incoming_bytes about to be written,
        is below the floor."""
        room = self.room()
        if self.min_free_bytes and room.free_bytes - incoming_bytes < self.min_free_bytes:
            raise DiskFull(room.sentence(), RETRY_AFTER_SECONDS)
        return room


SQLITE_FULL = 13  # SQLite's "database or disk is full"
POSTGRES_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full (its own disk, for uploads it keeps)


def is_full(error: BaseException) -> bool:
    """Whether an error says the disk (or the writer's quota) is full: an OSError from a
    file, SQLite's own word for it from the embedded store, or PostgreSQL's."""
    if isinstance(error, OSError):
        return error.errno in FULL_ERRNOS
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL
    return getattr(error, "sqlstate", None) == POSTGRES_DISK_FULL


@contextmanager
def full_disk_as_error() -> Iterator[None]:
    """Turn a full disk met inside the block into DiskFull; other errors pass unchanged."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only a full disk is changed; the rest passes
        if is_full(error):
            raise DiskFull(FULL_MESSAGE, RETRY_AFTER_SECONDS) from error
        raise
