"""Synchronous answers: wait for a submitted job, then answer with it, whichever API asked."""

from __future__ import annotations

from typing import Any, Callable

from flask import current_app, make_response
from werkzeug.exceptions import Conflict

from web.errors import JobFailed
from whisper_service.jobs import Job, JobState
from whisper_service.transcript import Transcript

JOB_ID_HEADER = "X-Job-Id"  # so a caller can find the job behind an answer in the native API


def answer_when_done(
    job: Job, render: Callable[[Job, Transcript], Any], accepted: Callable[[Job], Any]
):
    """Wait up to WHISPER_SYNC_TIMEOUT: `render` the transcript of a done job, raise a failed
    job's error, 409 for one cancelled or deleted meanwhile, `accepted` (a 202) otherwise."""
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
