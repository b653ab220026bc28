"""An upload written where it is kept as its bytes arrive, not spooled whole first.

A store whose files live outside the host (objects.ObjectFiles) offers an UploadTarget for a
new job id (JobStore.upload_target): the web layer hands it to werkzeug as the file a form's
file is parsed into, or copies a raw body into it, and JobQueue.submit() then finishes it,
checks the media where it lies (RemoteMedia: a short-lived URL, the size and the first
bytes) and queues the job without copying it again. A store that keeps uploads on the
host's disk offers none (None), and uploads take today's path: a local file, then add().

A target is written once, front to back. werkzeug rewinds the file it parsed into
(seek(0)); that is allowed and changes nothing. Reading it back is not possible: its bytes
are gone from this host already.

Its life: open (being written) -> finish() (the whole object is kept) -> keep() (a job row
names it). abort() at any point before keep() removes what was written (an aborted
multipart upload, or the finished object); after keep() it does nothing, so a request's
teardown may abort every target it opened.
"""

from __future__ import annotations

import abc
import hashlib
import io
from dataclasses import dataclass

HEAD_BYTES = 64 * 1024  # the first bytes kept in memory: what audio's header checks read


@dataclass(frozen=True)
class RemoteMedia:
    """A finished upload that is not on this host, as the media check reads it."""

    url: str  # where ffmpeg reads it (HTTP with Range, so it seeks): short-lived
    size: int  # its length in bytes
    head: bytes  # its first HEAD_BYTES bytes (all of it when shorter)


class UploadTarget(abc.ABC):
    """A new job's upload, written once, front to back, where the store keeps it."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.size = 0  # bytes written so far
        self.kept = False  # a job row names it: abort() leaves it
        self._head = bytearray()
        self._sha256 = hashlib.sha256()
        self.closed = False

    # --- written by werkzeug or a copy loop ------------------------------------------

    def write(self, data) -> int:
        data = bytes(data)
        if len(self._head) < HEAD_BYTES:
            self._head += data[:HEAD_BYTES - len(self._head)]
        self._sha256.update(data)
        self.size += len(data)
        self._take(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """werkzeug rewinds the file it parsed into: allowed, and nothing moves."""
        if (offset, whence) not in ((0, io.SEEK_SET), (0, io.SEEK_CUR)):
            raise io.UnsupportedOperation("an upload streamed to the store cannot seek")
        return 0

    def tell(self) -> int:
        return self.size

    def read(self, size: int = -1) -> bytes:
        raise io.UnsupportedOperation("an upload streamed to the store is not readable here")

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """The request is over: nothing to give back (abort() removes what is not kept)."""
        self.closed = True

    # --- what the queue asks ----------------------------------------------------------

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    def content_digest(self) -> str:
        """The SHA-256 of every byte written (hex), for Idempotency-Key's comparison."""
        return self._sha256.hexdigest()

    def keep(self) -> None:
        """A job row names the upload now: abort() leaves it."""
        self.kept = True

    @abc.abstractmethod
    def _take(self, data: bytes) -> None:
        """Send or buffer data; StoreUnavailable where the store does not answer."""

    @abc.abstractmethod
    def finish(self) -> RemoteMedia:
        """Send what is buffered and make the whole upload one object; where to read it."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove what was written, unless kept; never raises (what the store does not take
        now, its retention pass collects)."""
