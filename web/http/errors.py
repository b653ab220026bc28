"""Every error a client can cause becomes its status code and one clear sentence:
a page in the browser, JSON under /api and /invocations, OpenAI's error shape under /v1."""

from __future__ import annotations

import json
import logging
import re
from typing import Optional, Tuple

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import WebsocketMismatch

from whisper_service import errors as service_errors
from web.http.intake import TooManyUploads
from whisper_service.failures import explain
from whisper_service.queue.jobs import Job, QueueFull

log = logging.getLogger(__name__)
WAITERS_RETRY_SECONDS = 30  # what a caller refused for want of a waiting place is told


class TooManyWaiting(service_errors.ServiceError):
    """Every place for a synchronous call of this worker is taken."""

    def __init__(self, limit: int):
        super().__init__(
            f"the server is already holding {limit} synchronous requests open; try again in "
            f"{WAITERS_RETRY_SECONDS} s, or use the asynchronous API (POST /api/v1/transcriptions "
            "with 'Prefer: respond-async', then poll the job)",
            field=None,
        )
        self.retry_after = WAITERS_RETRY_SECONDS


# the HTTP status of each kind of service error; the most specific class wins
STATUS_OF = {
    service_errors.BadOption: 400,
    service_errors.MediaTooLarge: 413,
    service_errors.NotMedia: 415,
    service_errors.RefusedFormat: 415,
    service_errors.EmptyMedia: 422,
    service_errors.NoAudioStream: 422,
    service_errors.TruncatedMedia: 422,
    service_errors.MediaTooLong: 422,
    service_errors.DecodeTimeout: 422,
    service_errors.ModelUnavailable: 503,
    service_errors.ModelBusy: 503,
    service_errors.StoreUnavailable: 503,  # the job database away: every API, every page
    QueueFull: 503,
    TooManyWaiting: 503,
    TooManyUploads: 503,  # every upload place of the worker taken (web/http/intake.py)
    service_errors.DiskFull: 507,  # the data folder's disk full, or below its floor
}
JSON_PREFIXES = ("/api/", "/invocations")
OPENAI_PREFIX = "/v1/"
# OpenAI's clients retry 409 (and 408, 429, 5xx) by sending the whole upload again; this
# header, which they obey, says when that cannot help (a cancelled job, a bad request)
RETRY_HEADER = "x-should-retry"
WORTH_RETRYING = (408, 429)
# OpenAI's API answers a file it cannot use with 400 (its clients raise BadRequestError):
# 413 and 415 are not among the codes its clients know, and an empty, truncated or too long
# file (422 elsewhere) is a bad request there too
OPENAI_STATUS = {413: 400, 415: 400, 422: 400}


class JobFailed(service_errors.ServiceError):
    """A job that failed, raised again for a caller who waited for it (synchronous APIs)."""

    def __init__(self, job: Job):
        super().__init__(job.error or "the transcription failed", field=job.error_field or "file")
        self.kind = job.error_kind or "JobFailed"


def status_of(error: service_errors.ServiceError) -> int:
    if isinstance(error, JobFailed):
        return next((s for k, s in STATUS_OF.items() if k.__name__ == error.kind), 500)
    for kind in type(error).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return 400


def error_code(error: Exception) -> str:
    """'NotMedia' -> 'not_media', 'RequestEntityTooLarge' -> 'request_entity_too_large'."""
    name = error.kind if isinstance(error, JobFailed) else type(error).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_response(status: int, code: str, message: str, field: Optional[str] = None):
    """The error in the shape the caller's part of the site speaks."""
    if request.path.startswith(OPENAI_PREFIX):
        status = OPENAI_STATUS.get(status, status)
        # a retry cannot help a bad request, nor a wait that already took WHISPER_SYNC_LIMIT
        hopeless = (400 <= status < 500 and status not in WORTH_RETRYING) or status == 504
        return (jsonify(_shaped(status, code, message, field)), status,
                {RETRY_HEADER: "false"} if hopeless else {})
    if request.path.startswith(JSON_PREFIXES):
        return jsonify(_shaped(status, code, message, field)), status
    return render_template("error.html", status=status, message=message), status


def _shaped(status: int, code: str, message: str, field: Optional[str]) -> dict:
    """The JSON body of an error: OpenAI's shape under /v1, ours elsewhere."""
    if request.path.startswith(OPENAI_PREFIX):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": message, "type": kind, "param": field, "code": code}}
    return {"error": {"code": code, "message": message, "field": field}}


def describe(error: Exception) -> Tuple[int, str, str, Optional[str]]:
    """(status, code, message, field) of any error a request can end in."""
    if isinstance(error, service_errors.ServiceError):
        # the sentence people are shown (failures.py): no server path, no errno; the
        # operator's detail goes to the log when it says more
        failure = explain(error)
        if not isinstance(error, JobFailed) and failure.message != str(error):
            log.warning("%s %s: %s", request.method, request.path, failure.detail)
        return status_of(error), error_code(error), failure.message, failure.field
    if isinstance(error, HTTPException):
        return error.code or 500, error_code(error), error.description or "", None
    return 500, "server_error", "The transcription failed on the server.", None


def error_body(error: Exception) -> str:
    """The error as the JSON text its caller's API speaks, for an answer whose status was
    sent already (a synchronous answer kept alive with white space)."""
    status, code, message, field = describe(error)
    return json.dumps(_shaped(status, code, message, field))


def register(app: Flask) -> None:
    @app.errorhandler(service_errors.ServiceError)
    def service_error(error: service_errors.ServiceError):
        response = app.make_response(error_response(*describe(error)))
        # busy: a queue full, a model at work, the job database away
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(int(retry_after))
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        message = error.description
        field = None
        if error.code == 413:
            limit_mb = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
            message = f"The file is larger than this server accepts ({limit_mb} MB)."
            field = "file"
        elif error.code == 404 and message == NotFound.description:
            message = "There is no such page or transcript."  # unless the view said more
        elif isinstance(error, WebsocketMismatch):
            message = ("This address is a WebSocket (live captions): connect to it with a "
                       "WebSocket client (ws:// or wss://); the README gives its protocol.")
        response = app.make_response(error_response(error.code, error_code(error), message, field))
        for name, value in error.get_headers():
            if name.lower() in ("www-authenticate", "allow", "retry-after"):
                response.headers[name] = value
        return response
