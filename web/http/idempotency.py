"""Idempotency-Key on the POSTs that make a job (/api/v1/transcriptions, /invocations,
/v1/audio/transcriptions and /v1/audio/translations).

A client that retries after a timeout or a dropped connection sends the same key again and
gets the job its first try made, never a second one (it never pays twice for one file).
The same key with a different body (another file, other options or name) is 409: the key
was meant for something else. Keys are kept in the job store beside their job, so every
host sees them, and go with the job (deleted, or purged after WHISPER_RETENTION_HOURS).
A key counts per path and per API key: two clients cannot collide, nor read each other's
jobs by guessing keys.
"""

from __future__ import annotations

import hashlib
import string
from typing import BinaryIO, Tuple, Union

from flask import request
from werkzeug.exceptions import BadRequest, Conflict

from whisper_service.queue.jobs import COPY_CHUNK, Job, JobQueue, options_to_json
from whisper_service.options import TranscribeOptions
from whisper_service.queue.store.spool import UploadTarget

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
_KEY_CHARACTERS = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")


class KeyReused(Conflict):
    description = (f"This {HEADER} was used for a different request (another file or other "
                   "options); send a new key for a new request.")


def submit_once(queue: JobQueue, stream: BinaryIO, filename: str,
                options: TranscribeOptions) -> Job:
    """queue.submit(...), unless this request's Idempotency-Key made a job already."""
    key = request.headers.get(HEADER)
    if key is None:
        return queue.submit(stream, filename, options)
    scope = _scoped(key)
    digest = _digest(stream, filename, options)
    known = queue.store.recall_key(scope)
    if known is not None:
        job = _the_same(queue, known, digest)
        if job is not None:
            return job
    job = queue.submit(stream, filename, options)
    winner = queue.store.remember_key(scope, digest, job.id)
    if winner[1] != job.id:  # a request with the same key won a race with this one
        queue.delete(job.id)
        return _the_same(queue, winner, digest) or job
    return job


def _the_same(queue: JobQueue, known: Tuple[str, str], digest: str):
    known_digest, job_id = known
    if known_digest != digest:
        raise KeyReused()
    return queue.get(job_id)  # None: deleted meanwhile, so a new job is made


def _scoped(key: str) -> str:
    if not (0 < len(key) <= MAX_KEY_CHARS and set(key) <= _KEY_CHARACTERS):
        raise BadRequest(f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable ASCII characters.")
    caller = request.headers.get("Authorization", "")
    return hashlib.sha256("\0".join((request.path, caller, key)).encode()).hexdigest()


def _digest(stream: Union[BinaryIO, UploadTarget], filename: str,
            options: TranscribeOptions) -> str:
    """What makes two requests the same: the file's bytes (their SHA-256), its name and the
    options as parsed (so field order or multipart boundaries do not matter). A stream is
    read in pieces and put back where it was; an upload streamed to the object store was
    hashed as it went up (it cannot be read back here)."""
    if isinstance(stream, UploadTarget):
        content = stream.content_digest()
    else:
        hashed = hashlib.sha256()
        start = stream.tell()
        for piece in iter(lambda: stream.read(COPY_CHUNK), b""):
            hashed.update(piece)
        stream.seek(start)
        content = hashed.hexdigest()
    digest = hashlib.sha256()
    digest.update(options_to_json(options).encode())
    digest.update(b"\0" + (filename or "").encode("utf-8", "replace") + b"\0")
    digest.update(content.encode())
    return digest.hexdigest()
