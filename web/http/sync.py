"""Synchronous answers: wait for a submitted job, then answer with it, whichever API asked.

Two kinds of caller:
- the native API (`answer_when_done`): waits up to WHISPER_SYNC_TIMEOUT, then answers 202
  with the job, which its clients poll;
- OpenAI's and SageMaker's clients (`hold_until_done`), which understand nothing but the
  answer or an error: the line is held until the transcript is there, up to
  WHISPER_SYNC_LIMIT, then 504. After WHISPER_SYNC_TIMEOUT a JSON answer is committed (200)
  and a space is sent every HEARTBEAT_SECONDS before the JSON itself (JSON allows leading
  white space), so that no proxy closes the connection as idle; text formats (text, srt,
  vtt) wait silently, since white space would change them.
- OpenAI's clients with stream=true (`stream_until_done`): server-sent events, open at once,
  a comment with the job's progress every HEARTBEAT_SECONDS, an event with each new piece
  of the text final so far (Job.partial_text, read from the store, so the job may run on
  any host) as it appears, then the transcript's events.
A caller that goes away while waiting cancels its job: nobody else knows the job's id yet.

A waiting call holds one of the worker's HTTP threads, so at most WHISPER_SYNC_WAITERS calls
wait at once (SyncWaiters); the rest of the threads stay free for health checks, status
polls and uploads. A call that finds no free place is told so before its job is queued.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from flask import Response, current_app, make_response, request, stream_with_context
from werkzeug.exceptions import Conflict, GatewayTimeout

from web.http.errors import JobFailed, TooManyWaiting, error_body
from whisper_service.queue.jobs import Job, JobQueue, JobState
from whisper_service.transcript import Transcript

log = logging.getLogger(__name__)

JOB_ID_HEADER = "X-Job-Id"  # so a caller can find the job behind an answer in the native API
HEARTBEAT_SECONDS = 15.0  # a space this often keeps proxies from closing a waiting answer
LOOK_SECONDS = 0.5  # how often a waiting call looks at its job and its client
CLIENT_GONE_STATUS = 499  # what the access log shows for a caller that left (nginx's code)

EVENT_STREAM = "text/event-stream"

Render = Callable[[Job, Transcript], Any]
# a done job's events, as JSON objects; the str: the text the deltas before carried
Events = Callable[[Job, Transcript, str], Iterable[dict]]
Delta = Callable[[str], dict]  # the event of a new piece of text while the job runs


class Place:
    """One place of SyncWaiters, given back once, by whoever holds it last."""

    def __init__(self, places: threading.BoundedSemaphore):
        self._places = places
        self._held = True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._places.release()


class SyncWaiters:
    """The places of a worker's synchronous calls: a call waits only in one of them."""

    def __init__(self, limit: int):
        self.limit = limit
        self._places = threading.BoundedSemaphore(limit)

    def take(self, required: bool = True) -> Optional[Place]:
        """A free place, or None (with `required`: TooManyWaiting) when all are taken."""
        if self._places.acquire(blocking=False):
            return Place(self._places)
        if required:
            raise TooManyWaiting(self.limit)
        return None


def submitted(place: Place, submit: Callable[[], Job]) -> Job:
    """submit() the job for a call holding `place`; the place is given back if it fails."""
    try:
        return submit()
    except BaseException:
        place.release()
        raise


def waiters() -> SyncWaiters:
    return current_app.extensions["whisper_sync_waiters"]


def _queue() -> JobQueue:
    return current_app.extensions["whisper_jobs"]


def answer_when_done(job: Job, render: Render, accepted: Callable[[Job], Any], place: Place):
    """Native API: wait up to WHISPER_SYNC_TIMEOUT, then `render` a done job, raise a failed
    job's error, 409 for one cancelled or deleted meanwhile, `accepted` (a 202) otherwise."""
    try:
        waited = _wait(job, current_app.extensions["whisper_settings"].sync_timeout)
    finally:
        place.release()
    if waited is None:
        return Response(status=CLIENT_GONE_STATUS)
    if waited.finished:
        return _finished(waited, render)
    response = make_response(accepted(waited))  # the caller polls instead of holding the line
    response.headers[JOB_ID_HEADER] = waited.id
    return response


def hold_until_done(job: Job, render: Render, place: Place, heartbeat: bool) -> Response:
    """OpenAI and SageMaker: the answer, or an error, never a 202. `heartbeat`: the answer
    is JSON, so white space may be sent while waiting."""
    settings = current_app.extensions["whisper_settings"]
    # how long to wait before anything is sent: the whole limit unless spaces may be sent
    quiet = min(settings.sync_timeout if heartbeat else settings.sync_limit, settings.sync_limit)
    try:
        waited = _wait(job, quiet)
    except BaseException:
        place.release()
        raise
    if waited is not None and not waited.finished and quiet < settings.sync_limit:
        return _heartbeat_answer(waited, render, place, settings.sync_limit - quiet)
    place.release()
    if waited is None:
        return Response(status=CLIENT_GONE_STATUS)
    if not waited.finished:
        _cancel_unanswered(waited, "was still unfinished at WHISPER_SYNC_LIMIT")
        raise GatewayTimeout(_too_long(settings.sync_limit))
    return _finished(waited, render)


def _heartbeat_answer(job: Job, render: Render, place: Place, remaining: float) -> Response:
    """200 at once; spaces while the job runs; then its JSON, or an error object."""
    deadline = time.monotonic() + remaining

    def body() -> Iterator[bytes]:
        answered = False
        try:
            while True:
                waited = _queue().wait(job.id, min(HEARTBEAT_SECONDS, deadline - time.monotonic()))
                if waited is not None and not waited.finished and time.monotonic() < deadline:
                    yield b" "  # a write to a caller that left raises here: see finally
                    continue
                answered = True
                if waited is not None and not waited.finished:
                    _cancel_unanswered(waited, "was still unfinished at WHISPER_SYNC_LIMIT")
                    yield _error_bytes(GatewayTimeout(_too_long(remaining)))
                    return
                try:
                    yield _finished(waited, render).get_data()
                except Exception as error:  # failed, cancelled: as an error object
                    yield _error_bytes(error)
                return
        finally:
            place.release()
            if not answered:  # the caller went away (GeneratorExit) mid-wait
                _cancel_unanswered(job, "lost its caller")

    response = Response(stream_with_context(body()), content_type="application/json")
    response.headers[JOB_ID_HEADER] = job.id
    response.headers["X-Accel-Buffering"] = "no"  # nginx passes the spaces on at once
    response.headers["Cache-Control"] = "no-store"
    return response


def stream_until_done(job: Job, events: Events, place: Place,
                      delta: Optional[Delta] = None) -> Response:
    """Server-sent events: 200 and a comment at once (proxies and the client see the answer
    begin), a comment with the job's progress every HEARTBEAT_SECONDS while it waits or
    runs, `delta` of each new piece of its text as the engine finishes it (seen within
    LOOK_SECONDS of its write), then `events` of the done job as `data:` lines, told what
    the deltas carried, or its error as one (`{"error": ...}`, which OpenAI's clients
    raise). Bounded by WHISPER_SYNC_LIMIT like hold_until_done; a caller that leaves
    cancels its job within LOOK_SECONDS."""
    limit = current_app.extensions["whisper_settings"].sync_limit
    deadline = time.monotonic() + limit

    def body() -> Iterator[bytes]:
        answered = False
        sent = ""  # the text the deltas carried
        try:
            yield _comment(job)
            beat = time.monotonic()
            while True:
                waited = _queue().wait(job.id, LOOK_SECONDS)
                if waited is None or waited.finished:
                    break
                piece = _new_text(waited, sent) if delta is not None else ""
                if piece:
                    yield _data(json.dumps(delta(piece)).encode("utf-8"))
                    sent += piece
                if time.monotonic() >= deadline:
                    answered = True
                    _cancel_unanswered(waited, "was still unfinished at WHISPER_SYNC_LIMIT")
                    yield _data(_error_bytes(GatewayTimeout(_too_long(limit))))
                    return
                if _client_gone():
                    return  # cancelled below
                if time.monotonic() - beat >= HEARTBEAT_SECONDS:
                    yield _comment(waited)  # a write to a caller that left raises here
                    beat = time.monotonic()
            answered = True
            try:
                made = [_data(json.dumps(event).encode("utf-8"))
                        for event in events(waited, _transcript_of(waited), sent)]
            except Exception as error:  # failed, cancelled: as an error event
                made = [_data(_error_bytes(error))]
            yield b"".join(made)
        finally:
            place.release()
            if not answered:  # the caller went away (GeneratorExit, closed socket) mid-wait
                _cancel_unanswered(job, "lost its caller")

    response = Response(stream_with_context(body()), content_type=EVENT_STREAM)
    response.headers[JOB_ID_HEADER] = job.id
    response.headers["X-Accel-Buffering"] = "no"  # nginx passes each event on at once
    response.headers["Cache-Control"] = "no-store"
    return response


def _new_text(job: Job, sent: str) -> str:
    """What the job's text final so far adds to `sent`: stripped as the done text is (no
    space before the first word, none after the last, which may still be followed by
    more), "" when nothing new, or when it does not go on from what was sent."""
    sure = job.partial_text.strip()
    return sure[len(sent):] if sure.startswith(sent) else ""


def _data(json_bytes: bytes) -> bytes:
    """One event of an event stream (JSON has no line breaks to split it)."""
    return b"data: " + json_bytes + b"\n\n"


def _comment(job: Job) -> bytes:
    """An event stream comment (clients skip it) saying where the job is."""
    where = (f"running, {round(job.progress * 100)} %" if job.state is JobState.RUNNING
             else job.state.value)
    return f": job {job.id} {where}\n\n".encode("utf-8")


def _wait(job: Job, seconds: float) -> Optional[Job]:
    """The job once finished or after `seconds`; None when the caller went away meanwhile
    (its job is then cancelled)."""
    deadline = time.monotonic() + seconds
    while True:
        waited = _queue().wait(job.id, min(LOOK_SECONDS, max(0.0, deadline - time.monotonic())))
        if waited is None or waited.finished or time.monotonic() >= deadline:
            return waited
        if _client_gone():
            _cancel_unanswered(waited, "lost its caller")
            return None


def _finished(job: Optional[Job], render: Render):
    """The answer for a finished job, or the error it ends in."""
    response = make_response(render(job, _transcript_of(job)))
    response.headers[JOB_ID_HEADER] = job.id
    return response


def _transcript_of(job: Optional[Job]) -> Transcript:
    """A finished job's transcript, or the error it ends in."""
    if job is None or job.state is JobState.CANCELLED:
        raise Conflict("The job was cancelled before it finished; it has no transcript.")
    if job.state is JobState.FAILED:
        raise JobFailed(job)
    return _queue().transcript(job.id)


def _cancel_unanswered(job: Job, why: str) -> None:
    log.info("job %s %s; cancelling it", job.id, why)
    _queue().cancel(job.id)


def _too_long(seconds: float) -> str:
    return (f"The transcription did not finish within {seconds:g} s (WHISPER_SYNC_LIMIT); "
            "for long files use the asynchronous API: POST /api/v1/transcriptions with "
            "'Prefer: respond-async', then poll the job.")


def _error_bytes(error: Exception) -> bytes:
    return error_body(error).encode("utf-8")


def _client_gone() -> bool:
    """Whether the caller closed its connection: its socket reads as end of file. (nginx
    closes its connection to us when its client leaves.) False when it cannot be told."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):
        return True
