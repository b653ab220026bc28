"""Synchronous answers: wait for a submitted job, then answer with it, whichever API asked.

A waiting call holds one of the worker's HTTP threads, so at most WHISPER_SYNC_WAITERS calls
wait at once (SyncWaiters); the rest of the threads stay free for health checks, status
polls and uploads. A call that finds no free place is told so before its job is queued: the
native API answers 202 with the job (its clients poll), OpenAI's and SageMaker's clients,
which understand nothing but the answer, get 503 with Retry-After.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from flask import current_app, make_response
from werkzeug.exceptions import Conflict

from web.errors import JobFailed, TooManyWaiting
from whisper_service.jobs import Job, JobState
from whisper_service.transcript import Transcript

JOB_ID_HEADER = "X-Job-Id"  # so a caller can find the job behind an answer in the native API


class SyncWaiters:
    """The places of a worker's synchronous calls: a call waits only in one of them."""

    def __init__(self, limit: int):
        self.limit = limit
        self._places = threading.BoundedSemaphore(limit)

    @contextmanager
    def place(self, required: bool = True) -> Iterator[bool]:
        """Within the block the call holds a place (True), or none is free (False; with
        `required`, TooManyWaiting is raised instead)."""
        held = self._places.acquire(blocking=False)
        if not held and required:
            raise TooManyWaiting(self.limit)
        try:
            yield held
        finally:
            if held:
                self._places.release()


def waiters() -> SyncWaiters:
    return current_app.extensions["whisper_sync_waiters"]


def answer_when_done(
    job: Job, render: Callable[[Job, Transcript], Any], accepted: Callable[[Job], Any]
):
    """Wait up to WHISPER_SYNC_TIMEOUT (in a place of SyncWaiters the caller holds): `render`
    the transcript of a done job, raise a failed job's error, 409 for one cancelled or deleted
    meanwhile, `accepted` (a 202) otherwise."""
    queue = current_app.extensions["whisper_jobs"]
    waited = queue.wait(job.id, current_app.extensions["whisper_settings"].sync_timeout)
    if waited is None or waited.state is JobState.CANCELLED:
        raise Conflict("The job was cancelled before it finished; it has no transcript.")
    if waited.state is JobState.FAILED:
        raise JobFailed(waited)
    if waited.state is JobState.DONE:
        response = make_response(render(waited, queue.transcript(waited.id)))
    else:  # still queued or running: the caller polls instead of holding the line
        response = make_response(accepted(waited))
    response.headers[JOB_ID_HEADER] = waited.id
    return response
