"""Job folders on a local disk, shared by both stores: the SQLite store keeps a job's files
there for good, the PostgreSQL store keeps there what this host has fetched or spooled."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from typing import Callable, Iterable, List

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # what secrets.token_urlsafe(16) yields
STRAY_SECONDS = 24 * 3600.0  # a folder without a row this old is debris of a crash


def valid_id(job_id: object) -> bool:
    """Whether job_id has the shape of an id we issue; anything else never reaches a path."""
    return isinstance(job_id, str) and ID_PATTERN.fullmatch(job_id) is not None


def remove_strays(root: str, known: Callable[[List[str]], Iterable[str]],
                  older_than: float = STRAY_SECONDS) -> None:
    """Remove job folders under root that no row names and that are older than older_than
    seconds: a crash between writing a folder and its row (submit, delete) leaves one. Young
    ones may be uploads in progress; folders not named like a job are not ours."""
    cutoff = time.time() - older_than
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    old = [name for name in names if valid_id(name) and _mtime(os.path.join(root, name)) < cutoff]
    if not old:
        return
    for name in set(old) - set(known(old)):
        log.warning("removing stray job folder %s", name)
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:  # removed meanwhile, by another process perhaps
        return float("inf")
