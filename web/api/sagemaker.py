"""SageMaker's container contract: POST /invocations and GET /ping, so this image can stand
in for a SageMaker JumpStart Whisper endpoint without changing its callers.

* POST /invocations takes what JumpStart's Whisper endpoints take:
  - a JSON object, `{"audio_input": "<hex of the file>", "language": ..., "num_beams": ...}`;
  - the raw file as the body, as `invoke_endpoint(ContentType='audio/wav', Body=wav_bytes)`
    sends it (RAW_TYPES), with the default options, or those of `CustomAttributes`
    (SageMaker passes it on as the header ATTRIBUTES_HEADER) written as a query string:
    `CustomAttributes='language=fr&task=translate&num_beams=2'`.
  Both answer `{"text": ...}`. The call is synchronous like OpenAI's (web/http/sync.py
  hold_until_done): the answer or an error, never a 202. A raw body is streamed to a
  temporary file under the upload size limit (413 past it), never held whole in memory,
  and checked like any upload (not media, empty, too long: the same errors as uploads).
* GET /ping is 200 when the default model is loaded and the queue takes work, 503 before:
  SageMaker sends traffic to a container only once it answers 200. It needs no key, as
  /readyz does not: SageMaker's health checks carry none.

Idempotency-Key works on both bodies (web/http/idempotency.py).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any, Dict
from urllib.parse import parse_qsl

from flask import Blueprint, request
from werkzeug.exceptions import UnsupportedMediaType

from web.api import native
from web.api.jumpstart import (
    ATTRIBUTES_HEADER, JUMPSTART_AUDIO_FIELD, JUMPSTART_IGNORED, JUMPSTART_RENAMED, RAW_FILENAME,
    RAW_TYPES,
)
from web.http.auth import require_api_key
from web.http.streaming import streamed_body, streams_uploads
from web.http.sync import hold_until_done, submitted, waiters
from whisper_service.errors import BadOption
from whisper_service.queue.jobs import COPY_CHUNK
from whisper_service.options import TranscribeOptions

log = logging.getLogger(__name__)

# SageMaker calls /invocations at the root; it needs a key like the rest of the API
blueprint = Blueprint("invocations", __name__)
blueprint.before_request(require_api_key)
# SageMaker's health check carries no key
probes = Blueprint("sagemaker_probes", __name__)

@blueprint.post("/invocations")
@streams_uploads
def invoke():
    if request.mimetype in RAW_TYPES:
        return _invoke_raw()
    if not request.is_json and request.mimetype != native.MULTIPART:
        raise UnsupportedMediaType(
            f"Send the audio file itself as the body with Content-Type {', '.join(RAW_TYPES)}; "
            f"or application/json with '{JUMPSTART_AUDIO_FIELD}' (the file in hexadecimal); "
            f"or {native.MULTIPART} with a '{native.FILE_FIELD}' field.")
    upload = native.read_upload(JUMPSTART_AUDIO_FIELD, _from_hex)
    options = options_of(upload.fields)
    place = waiters().take()
    job = submitted(place, lambda: native.submit(upload, options))
    return _held(job, place)


@probes.get("/ping")
def ping():
    """SageMaker's health check: /readyz's answer (200 ready, 503 loading, busy or failed)."""
    return native.readyz()


def _invoke_raw():
    """The body is the file: streamed to the object store where there is one (see
    web/http/streaming.py), else to a temporary file, then queued like an upload."""
    options = options_of(_custom_attributes())
    place = waiters().take()  # before the body is read: a refused call reads nothing
    try:
        target = streamed_body(native.jobs())
        if target is not None:
            job = native.submit(native.Upload(target, RAW_FILENAME, {}), options)
        else:
            with tempfile.TemporaryFile(prefix="whisper-invocation-") as body:
                _copy_body(body)
                job = native.submit(native.Upload(body, RAW_FILENAME, {}), options)
    except BaseException:
        place.release()
        raise
    return _held(job, place)


def _copy_body(target) -> None:
    """Copy the request body in pieces. werkzeug's stream stops at the upload limit with
    413, whether the length was declared or the body is chunked."""
    shutil.copyfileobj(request.stream, target, COPY_CHUNK)
    target.seek(0)


def _custom_attributes() -> Dict[str, str]:
    """The options in CustomAttributes, a query string (`language=fr&num_beams=2`)."""
    text = request.headers.get(ATTRIBUTES_HEADER, "")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text.strip()))
    except ValueError:
        raise BadOption(ATTRIBUTES_HEADER, "must be options as a query string, e.g. "
                        "'language=fr&task=translate'") from None
    return dict(pairs)  # as in a form, when a name comes twice the last value wins


def _held(job, place):
    return hold_until_done(job, lambda job, transcript: {"text": transcript.text}, place,
                           heartbeat=True)


def _from_hex(field: str, value: Any) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise BadOption(field, "must be a string: the file's bytes in hexadecimal") from None


def options_of(fields: Dict[str, Any]) -> TranscribeOptions:
    """The options of JumpStart's fields; a refusal names the field as the caller sent it
    (`num_beams`, not the `beam_size` it stands for)."""
    try:
        return TranscribeOptions.from_mapping(jumpstart_options(fields))
    except BadOption as error:
        sent = next((theirs for theirs, ours in JUMPSTART_RENAMED.items()
                     if ours == error.field and theirs in fields and ours not in fields), None)
        if sent is None:
            raise
        raise BadOption(sent, str(error).removeprefix(f"{error.field}: ")) from None


def jumpstart_options(fields: Dict[str, Any]) -> Dict[str, Any]:
    ignored = sorted(JUMPSTART_IGNORED & set(fields))
    if ignored:
        log.info("/invocations: ignoring %s (no counterpart in whisper)", ", ".join(ignored))
    return {JUMPSTART_RENAMED.get(k, k): v for k, v in fields.items() if k not in JUMPSTART_IGNORED}
