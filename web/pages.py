"""The browser pages: upload form, transcript page, downloads, health."""

from __future__ import annotations

import os
import threading
from urllib.parse import quote

from flask import (
    Blueprint, Response, abort, current_app, redirect, render_template, request, url_for,
)

from whisper.tokenizer import LANGUAGES

from whisper_service.errors import BadOption, ServiceError
from whisper_service.options import TranscribeOptions, language_name
from whisper_service.results import ResultStore
from whisper_service.service import WhisperService
from whisper_service.writers import FORMATS, MEDIA_TYPES, write

blueprint = Blueprint("pages", __name__)
_create_lock = threading.Lock()
# the form's fields that are options; anything else in the form is ignored
FORM_OPTIONS = ("task", "language", "model", "beam_size", "patience")


def service() -> WhisperService:
    """This app's one WhisperService (and so its one set of loaded models)."""
    with _create_lock:
        if "whisper_service" not in current_app.extensions:
            settings = current_app.extensions["whisper_settings"]
            current_app.extensions["whisper_service"] = WhisperService(settings)
        return current_app.extensions["whisper_service"]


def store() -> ResultStore:
    return ResultStore(os.path.join(current_app.instance_path, "uploads"))


@blueprint.get("/")
def index():
    settings = current_app.extensions["whisper_settings"]
    languages = sorted(LANGUAGES.items(), key=lambda item: item[1])
    return render_template(
        "index.html", models=settings.models, default_model=settings.model,
        languages=languages, max_upload_mb=settings.max_upload_mb,
        defaults=TranscribeOptions(),
    )


@blueprint.post("/transcribe")
def transcribe():
    media = request.files.get("file")
    if media is None or not media.filename:
        raise BadOption("file", "choose an audio or video file to upload")
    options = TranscribeOptions.from_mapping({k: request.form.get(k) for k in FORM_OPTIONS})
    uploads = store()
    upload = uploads.save_upload(media.stream, media.filename)
    try:
        transcript = service().transcribe_file(upload.media_path, options, display_name=upload.filename)
    except ServiceError:
        uploads.delete(upload)  # the file cannot be transcribed: keep nothing of it
        raise
    uploads.save_transcript(upload, transcript)
    return redirect(url_for("pages.transcript", upload_id=upload.id), code=303)


@blueprint.get("/t/<upload_id>")
def transcript(upload_id: str):
    upload, result = _find(upload_id)
    return render_template(
        "transcript.html", upload=upload, transcript=result, formats=FORMATS,
        language=language_name(result.language),
    )


@blueprint.get("/t/<upload_id>/download.<fmt>")
def download(upload_id: str, fmt: str):
    upload, result = _find(upload_id)
    body = write(fmt, result)
    response = Response(body, mimetype=MEDIA_TYPES[fmt].split(";")[0])
    response.headers["Content-Type"] = MEDIA_TYPES[fmt]
    # RFC 6266/5987: an ASCII fallback plus the UTF-8 name, so 'talk.srt' and '강의.srt' both work
    name = f"{upload.stem}.{fmt}"
    fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    response.headers["Content-Disposition"] = (
        f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
    )
    return response


@blueprint.get("/healthz")
def healthz():
    return {"status": "ok"}


def _find(upload_id: str):
    upload = store().upload(upload_id)
    result = store().transcript(upload) if upload else None
    if result is None:
        abort(404)
    return upload, result
