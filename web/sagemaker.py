"""SageMaker's container contract: POST /invocations and GET /ping, so this image can stand
in for a SageMaker JumpStart Whisper endpoint without changing its callers.

* POST /invocations takes what JumpStart's Whisper endpoints take:
  - a JSON object, `{"audio_input": "<hex of the file>", "language": ..., "num_beams": ...}`;
  - the raw file as the body, as `invoke_endpoint(ContentType='audio/wav', Body=wav_bytes)`
    sends it (RAW_TYPES), with the default options, or those of `CustomAttributes`
    (SageMaker passes it on as the header ATTRIBUTES_HEADER) written as a query string:
    `CustomAttributes='language=fr&task=translate&num_beams=2'`.
  Both answer `{"text": ...}`. The call is synchronous like OpenAI's (web/sync.py
  hold_until_done): the answer or an error, never a 202. A raw body is streamed to a
  temporary file under the upload size limit (413 past it), never held whole in memory,
  and checked like any upload (not media, empty, too long: the same errors as uploads).
* GET /ping is 200 when the default model is loaded and the queue takes work, 503 before:
  SageMaker sends traffic to a container only once it answers 200. It needs no key, as
  /readyz does not: SageMaker's health checks carry none.

Idempotency-Key works on both bodies (web/idempotency.py).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any, Dict
from urllib.parse import parse_qsl

from flask import Blueprint, request
from werkzeug.exceptions import UnsupportedMediaType

from web import api
from web.auth import require_api_key
from web.sync import hold_until_done, submitted, waiters
from whisper_service.errors import BadOption
from whisper_service.jobs import COPY_CHUNK, DEFAULT_FILENAME
from whisper_service.options import TranscribeOptions

log = logging.getLogger(__name__)

# SageMaker calls /invocations at the root; it needs a key like the rest of the API
blueprint = Blueprint("invocations", __name__)
blueprint.before_request(require_api_key)
# SageMaker's health check carries no key
probes = Blueprint("sagemaker_probes", __name__)

JUMPSTART_AUDIO_FIELD = "audio_input"  # the upload, hexadecimal, in a JumpStart request
# the media types JumpStart's Whisper endpoints take as a raw body; ffmpeg finds out what
# the bytes really are, so the type only says "this is the file itself"
RAW_TYPES = ("audio/wav", "audio/x-audio", "audio/mpeg", "audio/flac",
             "application/octet-stream")
RAW_FILENAME = DEFAULT_FILENAME  # a raw body has no name; errors call it this
# how SageMaker hands invoke_endpoint's CustomAttributes to the container
ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"

# JumpStart's Hugging Face Whisper endpoints take transformers' generate() arguments.
# num_beams is beam_size here; language, task and temperature are our own option names.
# The others have no counterpart in openai-whisper's decoder (it stops at end-of-text and
# samples by temperature alone), so they are accepted and ignored, and a payload written
# for JumpStart works unchanged. Any other unknown key is refused (400) like everywhere.
JUMPSTART_RENAMED = {"num_beams": "beam_size"}
JUMPSTART_IGNORED = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "top_k",
    "top_p", "early_stopping", "no_repeat_ngram_size", "repetition_penalty",
    "num_return_sequences", "return_timestamps",
})


@blueprint.post("/invocations")
def invoke():
    if request.mimetype in RAW_TYPES:
        return _invoke_raw()
    if not request.is_json and request.mimetype != api.MULTIPART:
        raise UnsupportedMediaType(
            f"Send the audio file itself as the body with Content-Type {', '.join(RAW_TYPES)}; "
            f"or application/json with '{JUMPSTART_AUDIO_FIELD}' (the file in hexadecimal); "
            f"or {api.MULTIPART} with a '{api.FILE_FIELD}' field.")
    upload = api.read_upload(JUMPSTART_AUDIO_FIELD, _from_hex)
    options = TranscribeOptions.from_mapping(jumpstart_options(upload.fields))
    place = waiters().take()
    job = submitted(place, lambda: api.submit(upload, options))
    return _held(job, place)


@probes.get("/ping")
def ping():
    """SageMaker's health check: /readyz's answer (200 ready, 503 loading, busy or failed)."""
    return api.readyz()


def _invoke_raw():
    """The body is the file: streamed to a temporary file, then queued like an upload."""
    options = TranscribeOptions.from_mapping(jumpstart_options(_custom_attributes()))
    place = waiters().take()  # before the body is read: a refused call reads nothing
    try:
        with tempfile.TemporaryFile(prefix="whisper-invocation-") as body:
            _copy_body(body)
            job = api.submit(api.Upload(body, RAW_FILENAME, {}), options)
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


def jumpstart_options(fields: Dict[str, Any]) -> Dict[str, Any]:
    ignored = sorted(JUMPSTART_IGNORED & set(fields))
    if ignored:
        log.info("/invocations: ignoring %s (no counterpart in whisper)", ", ".join(ignored))
    return {JUMPSTART_RENAMED.get(k, k): v for k, v in fields.items() if k not in JUMPSTART_IGNORED}
