"""What a worker process takes in at once: upload places, and the disk's free-space floor,
both judged from a request's headers before its body is read.

nginx (proxy.py) takes in at most WHISPER_MAX_UPLOADS upload bodies for the whole server,
but the kernel may hand them all to one worker process. Each upload holds one of that
worker's threads while it is parsed, written, checked (and, for a synchronous call,
waited on), so a worker takes at most WHISPER_SYNC_WAITERS + UPLOADS_BESIDE_WAITERS at
once and answers one more with 503 + Retry-After at once: gunicorn.conf.py gives each
worker MIN_FREE_THREADS threads beyond the waiters and live sessions, so two always stay
free for health checks and status polls, however many uploads arrive.

An upload is a POST (or PUT, PATCH) whose body has UPLOAD_BODY_BYTES or more, or no
announced length. One that would leave the data folder's disk below WHISPER_MIN_FREE_MB
is refused with 507 before its body is read (JobQueue.submit checks every upload again).
The body of a refused request is drained (drain.py), so the client gets this answer.
"""

from __future__ import annotations

import threading

from flask import Flask, g, request

from web.http.proxy import UPLOAD_BODY_BYTES
from whisper_service.errors import ServiceError
from whisper_service.queue.store.space import DiskSpace

UPLOADS_BESIDE_WAITERS = 2  # upload places of a worker beyond its synchronous waiters
RETRY_SECONDS = 10  # what a client refused for want of an upload place is told
BODY_METHODS = ("POST", "PUT", "PATCH")
_HELD = "whisper_upload_place"  # the flask.g flag of a request holding a place


class TooManyUploads(ServiceError):
    """Every upload place of this worker process is taken (the web answers 503)."""

    def __init__(self, places: int):
        super().__init__(f"the server is taking in {places} uploads at once, as many as it "
                         f"accepts; try again in {RETRY_SECONDS} s", field=None)
        self.retry_after = RETRY_SECONDS


class UploadPlaces:
    """A count of the uploads a process is taking in; never waits for a place."""

    def __init__(self, places: int):
        self.places = places
        self._free = threading.BoundedSemaphore(places)

    def take(self) -> bool:
        return self._free.acquire(blocking=False)

    def release(self) -> None:
        self._free.release()


def is_upload() -> bool:
    """Whether the current request carries an upload's body (by its headers only)."""
    if request.method not in BODY_METHODS:
        return False
    if request.content_length is None:
        return "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return request.content_length >= UPLOAD_BODY_BYTES


def register(app: Flask, places: UploadPlaces, space: DiskSpace) -> None:
    """Every upload takes a place (or is refused, 503) and is checked against the disk's
    floor (507), before any view reads its body; the place is given back after the answer."""

    @app.before_request
    def take_a_place():
        if not is_upload():
            return
        space.check(request.content_length or 0)
        if not places.take():
            raise TooManyUploads(places.places)
        setattr(g, _HELD, True)

    @app.teardown_request
    def give_it_back(_error):
        if g.pop(_HELD, False):
            places.release()
