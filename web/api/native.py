"""The native JSON API under /api/v1, /healthz, /readyz and the OpenAPI document at
/api/openapi.json. (SageMaker's /invocations and /ping are in web/api/sagemaker.py.)

Views only translate HTTP to and from the job queue, as the browser pages do: every
transcription is a job, and a synchronous call is a job waited for. Errors are raised and
rendered as JSON by web/http/errors.py.

* POST /api/v1/transcriptions takes multipart (`file` + options) or JSON (`audio` in base64,
  `filename` + options). It waits up to WHISPER_SYNC_TIMEOUT for the transcript; past that,
  or at once with `Prefer: respond-async` or `?async=1`, it answers 202 with the job and
  `Location: /api/v1/jobs/<id>`. A failed job answers its error's status.
* GET /api/v1/jobs/<id>/transcript.<fmt> is 404 while the job is queued or running, and
  409 once it failed or was cancelled (it never will have one; the message says why), so a
  poller can tell "not yet" from "never".
* POST /api/v1/detect-language answers every language's probability, likeliest first.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from io import BytesIO
from typing import Any, BinaryIO, Callable, Dict, NamedTuple, Optional

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from werkzeug.exceptions import BadRequest, Conflict, NotFound, UnsupportedMediaType

from web.api import openapi
from web.http.auth import require_api_key
from web.http.idempotency import submit_once
from web.http.streaming import streams_uploads
from web.api.metrics import web_only_readiness
from web.http.downloads import transcript_download
from web.http.sync import answer_when_done, submitted, waiters
from whisper_service import model_menu
from whisper_service.checkpoints import describe
from whisper_service.errors import BadOption, StoreUnavailable
from whisper_service.queue.store.space import MB, RETRY_AFTER_SECONDS as DISK_RETRY_SECONDS
from whisper_service.queue.jobs import COPY_CHUNK, DEFAULT_FILENAME, Job, JobQueue, JobState
from whisper_service.options import TRUE_WORDS, TranscribeOptions, language_name
from whisper_service.transcript import Transcript
from whisper_service.writers import FORMATS

log = logging.getLogger(__name__)

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
blueprint.before_request(require_api_key)
# probes and the API's description answer without a key
public = Blueprint("api_public", __name__)

MULTIPART = "multipart/form-data"
FILE_FIELD = "file"  # the upload in a multipart request
AUDIO_FIELD = "audio"  # the upload, base64, in a JSON request
FILENAME_FIELD = "filename"  # its name in a JSON request (display only)
RESPOND_ASYNC = "respond-async"  # the RFC 7240 preference that asks for 202 at once
DETECT_FIELDS = ("model",)  # the only option language detection takes
NOT_READY_RETRY_SECONDS = 5  # what a poller of an unfinished transcript is told to wait
TRANSCRIPT_RULE = f"/jobs/<job_id>/transcript.<any({', '.join(FORMATS)}):fmt>"


# --- routes --------------------------------------------------------------------------------


@blueprint.post("/transcriptions")
@streams_uploads
def create_transcription():
    upload = read_upload(AUDIO_FIELD, _from_base64)
    options = TranscribeOptions.from_mapping(upload.fields)
    place = None if wants_async() else waiters().take(required=False)
    if place is None:  # asked for, or no place free to wait in: answered as async
        return accepted(submit(upload, options))
    job = submitted(place, lambda: submit(upload, options))
    return answer_when_done(
        job, lambda job, transcript: {**transcript.to_dict(), "job_id": job.id}, accepted, place
    )


@blueprint.get("/jobs/<job_id>")
def job_status(job_id: str):
    return job_json(find_job(job_id))


@blueprint.get(TRANSCRIPT_RULE)
def transcript_file(job_id: str, fmt: str):
    job = find_job(job_id)
    return transcript_download(job, finished_transcript(job), fmt)


@blueprint.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    job = find_job(job_id)
    if job.finished:
        jobs().delete(job.id)
    else:
        jobs().cancel(job.id)  # a running job stops at its next progress report
    return "", 204


@blueprint.post("/detect-language")
def detect_language():
    upload = read_upload(AUDIO_FIELD, _from_base64)
    place = waiters().take()  # it may wait for the model as long as a transcription
    try:
        probabilities = detect(upload, detection_model(upload.fields))
    finally:
        place.release()
    top = next(iter(probabilities))
    return {
        "language": top,
        "language_name": language_name(top),
        "probabilities": [
            {"language": code, "name": language_name(code), "probability": p}
            for code, p in probabilities.items()
        ],
    }


@blueprint.get("/models")
def models():
    registry = current_app.extensions["whisper_service"].models
    return {
        "default": registry.default,
        "allowed": registry.allowed,
        "loaded": registry.loaded(),
        "translate_model": registry.translate_model,
        # each allowed model as the menus show it: what can run, what cannot here and why
        "models": [choice.to_dict() for choice in model_menu.menu(registry)],
        **stand_in_status(registry),
    }


@public.get("/healthz")
def healthz():
    """Liveness: answers at once, never waits for a model; names the worker process."""
    return {"status": "ok", "pid": os.getpid()}


@public.get("/readyz")
def readyz():
    """Ready when the default model (or the bundled one standing in for it, with a notice) is
    loaded and uploads are accepted; never loads it. A model that failed to load says why
    (it is tried again with the next job); a job database away says so, with Retry-After,
    and so does a data folder's disk below WHISPER_MIN_FREE_MB."""
    try:
        return _readiness(jobs())
    except StoreUnavailable as error:  # nothing can be queued or read: not ready, and why
        return ({"status": "unavailable", "error": str(error)}, 503,
                {"Retry-After": str(error.retry_after)})


def _readiness(queue: JobQueue):
    """/readyz's answer while the job database answers."""
    waiting = queue.queued_count()
    room = current_app.extensions["whisper_disk"].room()
    body = {"queued": waiting, "max_queued": queue.max_queued,
            "disk": {"free_mb": room.free_bytes // MB, "min_free_mb": room.min_free_bytes // MB}}
    if room.low:  # uploads are refused (507) until room is made
        return ({"status": "low_on_disk", "error": room.sentence(), **body}, 503,
                {"Retry-After": str(DISK_RETRY_SECONDS)})
    if settings().role == "web":  # no model here: the workers elsewhere transcribe
        return web_only_readiness(queue, body)
    registry = current_app.extensions["whisper_service"].models
    body.update(stand_in_status(registry))
    if not registry.default_ready():  # neither the default nor a model standing in for it
        stand_in = registry.stand_in(registry.default)
        error = registry.load_error(stand_in or registry.default)
        if error and not registry.stand_in_loading():
            return {"status": "unavailable", "error": error, **body}, 503
        return {"status": "loading", **body}, 503  # at start, or the stand-in on its way
    if waiting >= queue.max_queued:
        return {"status": "busy", **body}, 503
    return {"status": "ready", **body}


def stand_in_status(registry) -> dict:
    """While bundled models stand in (ready or loading): `notice`, a sentence for people, and
    `missing`, each configured model that cannot be had here with why and its stand-in, so
    that a ready server never looks normal."""
    notice = registry.stand_in_notice
    if not notice:
        return {}
    return {"notice": notice, "missing": [
        {"model": name, "reason": model_menu.MISSING_REASON,
         "stand_in": registry.stand_in(name)}
        for name in registry.missing()]}


@public.get("/api/openapi.json")
def openapi_document():
    return openapi.document()


# --- requests in ---------------------------------------------------------------------------


class Upload(NamedTuple):
    stream: BinaryIO
    filename: str
    fields: Dict[str, Any]  # every other field the client sent, for the caller to parse


def read_upload(data_field: str, decode: Callable[[str, Any], bytes]) -> Upload:
    """The file and the other fields of a multipart request, or of a JSON object whose
    `data_field` holds the file's bytes (decoded by `decode`)."""
    if request.is_json:
        body = request.get_json()
        if not isinstance(body, dict):
            raise BadRequest("The JSON body must be an object.")
        fields = dict(body)
        filename = fields.pop(FILENAME_FIELD, None) or DEFAULT_FILENAME
        if not isinstance(filename, str):
            raise BadOption(FILENAME_FIELD, "must be a string")
        data = decode(data_field, fields.pop(data_field, None))
        return Upload(BytesIO(data), filename, fields)
    if request.mimetype != MULTIPART:
        raise UnsupportedMediaType(f"Send {MULTIPART} with a '{FILE_FIELD}' field, "
                                   f"or application/json with '{data_field}'.")
    media = request.files.get(FILE_FIELD)
    if media is None or not media.filename:
        raise BadOption(FILE_FIELD, "send the audio or video file in this multipart field")
    extra_files = sorted(set(request.files) - {FILE_FIELD})
    if extra_files:
        raise BadOption(extra_files[0], f"only one file is taken, in the field '{FILE_FIELD}'")
    if not all(request.form):  # werkzeug names a field None when its header is unreadable
        raise BadRequest("A multipart field has no name, or one that cannot be read.")
    # like the browser form: when a field comes twice, the last value wins
    fields = {name: request.form.getlist(name)[-1] for name in request.form}
    return Upload(media.stream, media.filename, fields)


def _from_base64(field: str, value: Any) -> bytes:
    try:
        # line breaks are allowed, as `base64` wraps its output; anything else must be base64
        return base64.b64decode("".join(value.split()), validate=True)
    except (AttributeError, TypeError, ValueError, binascii.Error):
        raise BadOption(field, "must be a string: the file's bytes in base64") from None


def wants_async() -> bool:
    """`Prefer: respond-async` (RFC 7240) or `?async=1` asks for 202 without waiting."""
    preferences = re.split(r"[,;]", request.headers.get("Prefer", ""))
    if RESPOND_ASYNC in (p.strip().lower() for p in preferences):
        return True
    return request.args.get("async", "").strip().lower() in TRUE_WORDS


def detection_model(fields: Dict[str, Any]) -> Optional[str]:
    unknown = sorted(set(fields) - set(DETECT_FIELDS))
    if unknown:
        raise BadOption(unknown[0], "is not a field here; language detection takes only 'model'")
    return TranscribeOptions.from_mapping(fields).model  # parsed as a transcription's


# --- the queue and the model ---------------------------------------------------------------


def jobs() -> JobQueue:
    return current_app.extensions["whisper_jobs"]


def settings():
    return current_app.extensions["whisper_settings"]


def submit(upload: Upload, options: TranscribeOptions) -> Job:
    return submit_once(jobs(), upload.stream, upload.filename, options)


def detect(upload: Upload, model: Optional[str]) -> Dict[str, float]:
    """Language probabilities, best first. Runs in the request thread (one 30 s window)."""
    with tempfile.TemporaryDirectory(prefix="whisper-detect-") as folder:
        path = os.path.join(folder, "media")
        with open(path, "wb") as media:
            shutil.copyfileobj(upload.stream, media, COPY_CHUNK)
        service = current_app.extensions["whisper_service"]
        return service.detect_language_file(path, model, upload.filename)


def find_job(job_id: str) -> Job:
    job = jobs().get(job_id)
    if job is None:
        raise NotFound()
    return job


def finished_transcript(job: Job) -> Transcript:
    """The transcript of a done job; 409 for a job that will never have one, 404 until then."""
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        reason = f": {job.error}" if job.error else ""
        raise Conflict(f"Job {job.id} is {job.state.value}{reason}; it has no transcript.")
    transcript = jobs().transcript(job.id)
    if transcript is None:
        raise NotReady(job)  # queued or running: poll the job
    return transcript


class NotReady(NotFound):
    """404 for a transcript still to come, saying where its job is and when to look again."""

    def __init__(self, job: Job):
        where = (f"number {job.position} in the queue" if job.state is JobState.QUEUED
                 else f"{job.state.value}, {round(job.progress * 100)} % done")
        super().__init__(f"The transcript is not ready yet: the job is {where}. "
                         f"Poll {url_for('api.job_status', job_id=job.id)} and try again.")
        self.retry_after = NOT_READY_RETRY_SECONDS

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope), ("Retry-After", str(self.retry_after))]


# --- answers out ---------------------------------------------------------------------------


def accepted(job: Job) -> Response:
    response = jsonify(job_json(job))
    response.status_code = 202
    response.headers["Location"] = url_for("api.job_status", job_id=job.id)
    return response


def job_json(job: Job) -> dict:
    return {
        "id": job.id,
        "state": job.state.value,
        "position": job.position,
        "progress": job.progress,
        "eta_seconds": job.eta_seconds,
        "error": job.error,
        "created_at": _iso_time(job.created_at),
        "started_at": _iso_time(job.started_at),
        "finished_at": _iso_time(job.finished_at),
        "attempts": job.attempts,
        "model": job.model,
        "model_label": describe(job.model) if job.model else None,
        # the bundled model stood in for the one asked for, which cannot be had here: why
        "stand_in": current_app.extensions["whisper_service"].models.stand_in_sentence(
            job.options.model, job.model) if job.model else None,
        "filename": job.filename,
        "options": asdict(job.options),
        "links": {
            "self": url_for("api.job_status", job_id=job.id),
            "transcript": {
                fmt: url_for("api.transcript_file", job_id=job.id, fmt=fmt) for fmt in FORMATS
            },
        },
    }


def _iso_time(timestamp: Optional[float]) -> Optional[str]:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")
