"""Where jobs are kept: one interface (base.JobStore), two backends.

`open_store(database_url, local_root, object_store)` picks one: no URL gives the embedded
SQLite store in local_root; a postgresql:// URL gives the PostgreSQL store, which keeps
everything in the database and uses local_root only as this host's cache of uploads it
reads. With object_store (an s3:// URL, WHISPER_OBJECT_STORE) the PostgreSQL store keeps the
jobs' files as objects there (objects.py) and only state, queue and leases in the database.
"""

from __future__ import annotations

from whisper_service.errors import ConfigError
from whisper_service.queue.store.base import JobStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(database_url: str, local_root: str, object_store: str = "") -> JobStore:
    if object_store and not database_url.startswith(POSTGRES_SCHEMES):
        raise ConfigError("WHISPER_OBJECT_STORE needs WHISPER_DATABASE_URL (a postgresql:// "
                          "URL): the embedded SQLite store keeps its files in WHISPER_DATA_DIR")
    if not database_url:
        from whisper_service.queue.store.sqlite import SQLiteStore

        return SQLiteStore(local_root)
    if database_url.startswith(POSTGRES_SCHEMES):
        from whisper_service.queue.store.postgres import PostgresStore

        files = None
        if object_store:
            from whisper_service.queue.store.objects import ObjectFiles

            files = ObjectFiles(object_store)
        return PostgresStore(database_url, local_root, files)
    raise ConfigError("WHISPER_DATABASE_URL must be empty (SQLite in WHISPER_DATA_DIR) or a "
                      "postgresql:// URL")
