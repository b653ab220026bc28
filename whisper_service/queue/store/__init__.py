"""Where jobs are kept: one interface (base.JobStore), two backends.

`open_store(database_url, local_root)` picks one: no URL gives the embedded SQLite store in
local_root; a postgresql:// URL gives the PostgreSQL store, which keeps everything in the
database and uses local_root only as this host's cache of uploads it reads.
"""

from __future__ import annotations

from whisper_service.errors import ConfigError
from whisper_service.queue.store.base import JobStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(database_url: str, local_root: str) -> JobStore:
    if not database_url:
        from whisper_service.queue.store.sqlite import SQLiteStore

        return SQLiteStore(local_root)
    if database_url.startswith(POSTGRES_SCHEMES):
        from whisper_service.queue.store.postgres import PostgresStore

        return PostgresStore(database_url, local_root)
    raise ConfigError("WHISPER_DATABASE_URL must be empty (SQLite in WHISPER_DATA_DIR) or a "
                      "postgresql:// URL")
