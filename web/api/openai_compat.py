"""OpenAI-compatible endpoints under /v1, so OpenAI's own clients work unchanged.

POST /v1/audio/transcriptions and /v1/audio/translations take OpenAI's multipart fields,
plus this service's own decoding options, queue the upload as a job and answer when it is
done (up to WHISPER_SYNC_LIMIT, then 504; never a 202, which OpenAI's clients cannot read).
GET /v1/models lists the allowed models and the alias whisper-1. With stream=true a
transcription is answered with server-sent events as OpenAI streams them (its SDKs'
TranscriptionTextDeltaEvent, then TranscriptionTextDoneEvent): `transcript.text.delta` with
the text of each segment as the running job finishes it (web/http/sync.py), then
`transcript.text.done` with the whole text (transcript_events).

Views only raise errors; web/http/errors.py renders them in OpenAI's error shape.

Fields, in short (see `parse_request`):
* OpenAI's: file, model, language, prompt, response_format, temperature,
  timestamp_granularities[]; `language` is accepted by translations too.
* ours: every name in OPTION_NAMES except those OpenAI already spells (below).
* ignored: OpenAI fields for its newer models that change nothing a Whisper client relies
  on (chunking_strategy, keywords, languages, known_speaker_*).
* refused with a 400 naming the field: include[] (the client would wait for logprobs that
  never come), stream=true with a response_format other than json or text (events carry
  text), task and initial_prompt (the endpoint and `prompt` say those), and any other
  name, so a typo is not silently dropped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import NotFound

from web.http.auth import require_api_key
from web.http.idempotency import submit_once
from web.http.streaming import streams_uploads
from web.http.sync import hold_until_done, stream_until_done, submitted, waiters
from whisper_service import model_menu
from whisper_service.errors import BadOption
from whisper_service.options import (
    OPTION_NAMES, TRUE_WORDS, TranscribeOptions, language_name, parse_flag,
)
from whisper_service.transcript import Transcript
from whisper_service.writers import MEDIA_TYPES, write

log = logging.getLogger(__name__)

blueprint = Blueprint("openai", __name__, url_prefix="/v1")
blueprint.before_request(require_api_key)

OPENAI_MODEL = "whisper-1"  # OpenAI's name for its Whisper; here it means the default model
MODEL_OWNER = "whisper-service"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
JSON_FORMATS = ("json", "verbose_json", "diarized_json")  # answers that may begin with white space
# gpt-4o-transcribe-diarize's answer (TranscriptionDiarized in OpenAI's SDKs): segments with
# a speaker each, labelled A, B, ... in order of first appearance, as OpenAI labels them
DIARIZED = "diarized_json"
DIARIZED_SEGMENT_TYPE = "transcript.text.segment"
SPEAKER_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
GRANULARITIES = ("segment", "word")
GRANULARITY_FIELD = "timestamp_granularities[]"  # how OpenAI's clients name the list
DEFAULT_GRANULARITIES = ("segment",)  # OpenAI's default: segments, no words
INCREMENT_FIELD = "temperature_increment_on_fallback"
TEXT_TYPE = "text/plain; charset=utf-8"
TRANSLATION_LANGUAGE = "english"  # a translation's language, as OpenAI reports it
STREAM_FORMATS = ("json", "text")  # what stream=true may go with: its events carry text
DELTA_EVENT = "transcript.text.delta"  # TranscriptionTextDeltaEvent in OpenAI's SDKs
DONE_EVENT = "transcript.text.done"  # TranscriptionTextDoneEvent

OPENAI_FIELDS = ("file", "model", "language", "prompt", "response_format", "temperature",
                 GRANULARITY_FIELD, "stream")
# OpenAI fields for its newer models; none changes what a Whisper client reads back
IGNORED_FIELDS = ("chunking_strategy", "keywords", "languages", "known_speaker_names",
                  "known_speaker_references")
# fields that cannot be honoured; dropping them would hand back something else than asked
REFUSED_FIELDS = {
    "include": "logprobs are not available here; leave include[] out",
    "task": "is set by the endpoint: use /v1/audio/translations to translate",
    "initial_prompt": "is spelled 'prompt' in this API",
}
# our own options, passed to TranscribeOptions as they are
EXTRA_FIELDS = tuple(n for n in OPTION_NAMES if n not in (*OPENAI_FIELDS, *REFUSED_FIELDS))


@dataclass(frozen=True)
class AudioRequest:
    """What an OpenAI audio request asks for: how to transcribe, and how to answer."""

    options: TranscribeOptions
    response_format: str
    granularities: Tuple[str, ...]
    stream: bool = False  # answer with server-sent events


def parse_request(
    form: MultiDict, task: str, default_model: str, allowed_models: Sequence[str]
) -> AudioRequest:
    """Map OpenAI's form fields (and our extra ones) to options; raise BadOption naming
    the field at fault."""
    _check_field_names(form)
    stream = parse_flag("stream", form["stream"]) if form.get("stream", "").strip() else False
    response_format = form.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise BadOption("response_format", f"must be one of {', '.join(RESPONSE_FORMATS)}; "
                        f"got {response_format!r}")
    if stream and response_format not in STREAM_FORMATS:
        raise BadOption("stream", f"streams text events: response_format must be "
                        f"{' or '.join(STREAM_FORMATS)}; got {response_format!r}")
    granularities = tuple(form.getlist(GRANULARITY_FIELD))
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise BadOption(GRANULARITY_FIELD, f"must be {' or '.join(GRANULARITIES)}; "
                            f"got {granularity!r}")
    if granularities and response_format != "verbose_json":
        raise BadOption(GRANULARITY_FIELD, "needs response_format verbose_json")
    if response_format == DIARIZED and task != "transcribe":
        raise BadOption("response_format", "diarized_json is for transcriptions, as at OpenAI")

    values: Dict[str, Any] = {name: form.get(name) for name in EXTRA_FIELDS if name in form}
    values.update(
        task=task,
        model=_model(form.get("model"), default_model, allowed_models),
        language=form.get("language"),
        initial_prompt=form.get("prompt"),
        temperature=_temperature(form.get("temperature"), INCREMENT_FIELD in values),
    )
    if "word" in granularities:
        values["word_timestamps"] = "true"
    if response_format == DIARIZED:  # the format asks for speakers
        if str(values.get("diarize", "true")).strip().lower() not in TRUE_WORDS:
            raise BadOption("diarize", "must be on (or left out) for response_format diarized_json")
        values["diarize"] = "true"
    return AudioRequest(
        TranscribeOptions.from_mapping(values), response_format,
        granularities or DEFAULT_GRANULARITIES, stream,
    )


def _check_field_names(form: MultiDict) -> None:
    for name in form:
        if not name:  # werkzeug's name for a field whose name it could not read
            raise BadOption("form", "a form field has no readable name")
        base = name.split("[", 1)[0]  # "chunking_strategy[type]" -> "chunking_strategy"
        if name in OPENAI_FIELDS or name in EXTRA_FIELDS:
            continue
        if base in IGNORED_FIELDS:
            log.debug("ignoring OpenAI field %s", name)
            continue
        if base in REFUSED_FIELDS:
            raise BadOption(name, REFUSED_FIELDS[base])
        raise BadOption(name, f"is not a field of this API; the fields are "
                        f"{', '.join(sorted(OPENAI_FIELDS + EXTRA_FIELDS))}")


def _model(name: Optional[str], default: str, allowed: Sequence[str]) -> str:
    """whisper-1 (or no model, leniently) is the default model; else one from the list."""
    if not name or name == OPENAI_MODEL:
        return default
    if name in allowed:
        return name
    raise BadOption("model", f"{name!r} is not offered here; choose one of "
                    f"{', '.join((OPENAI_MODEL, *allowed))}")


def _temperature(value: Optional[str], has_increment: bool) -> Optional[str]:
    """OpenAI's temperature is one number. 0 (or none) means: start at 0 and raise it
    while the decode looks wrong, which is our default schedule 0.0, 0.2, ... 1.0; any
    other value is used exactly, unless temperature_increment_on_fallback asks for
    fallbacks from it."""
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadOption("temperature", f"must be one number from 0 to 1; got {value!r}") from None
    return None if number == 0 and not has_increment else value


# --- views ---------------------------------------------------------------------------------


@blueprint.post("/audio/transcriptions")
@streams_uploads
def transcriptions():
    return _transcribe("transcribe")


@blueprint.post("/audio/translations")
@streams_uploads
def translations():
    return _transcribe("translate")


@blueprint.get("/models")
def list_models():
    return jsonify(object="list", data=[_model_entry(name) for name in _model_ids()])


@blueprint.get("/models/<model_id>")
def retrieve_model(model_id: str):
    if model_id not in _model_ids():
        raise NotFound()
    return jsonify(_model_entry(model_id))


def _transcribe(task: str) -> Response:
    extensions = current_app.extensions
    models = extensions["whisper_service"].models
    queue = extensions["whisper_jobs"]
    media = request.files.get("file")
    if media is None:
        raise BadOption("file", "attach the audio or video as the multipart file field 'file'")
    asked = parse_request(request.form, task, models.default, models.allowed)
    place = waiters().take()
    job = submitted(place, lambda: submit_once(queue, media.stream, media.filename or "", asked.options))
    if asked.stream:  # deltas as the job finishes windows, the whole text at the end
        return stream_until_done(
            job, lambda job, transcript, sent: transcript_events(transcript, sent), place,
            delta=delta_event)
    # OpenAI's clients read nothing but the answer: held until it is there (web/http/sync.py)
    return hold_until_done(job, lambda job, transcript: render(asked, transcript), place,
                           heartbeat=asked.response_format in JSON_FORMATS)


# --- answers -------------------------------------------------------------------------------


def render(asked: AudioRequest, transcript: Transcript) -> Response:
    """The transcript in the response_format asked for, as OpenAI answers it."""
    fmt = asked.response_format
    if fmt == "json":
        return jsonify(text=transcript.text.strip(), **_usage(transcript))
    if fmt == "verbose_json":
        return jsonify(verbose(transcript, asked.granularities))
    if fmt == DIARIZED:
        return jsonify(diarized(transcript))
    if fmt == "text":
        return Response(transcript.text.strip() + "\n", content_type=TEXT_TYPE)
    return Response(write(fmt, transcript, asked.options.layout), content_type=MEDIA_TYPES[fmt])


def delta_event(piece: str) -> dict:
    """stream=true: a piece of text the running job finished."""
    return {"type": DELTA_EVENT, "delta": piece}


def transcript_events(transcript: Transcript, sent: str = "") -> Iterator[dict]:
    """stream=true, once the job is done: a delta per segment of what the deltas sent while
    it ran (`sent`) did not carry yet, then the whole text. The deltas, appended, are the
    done event's text (a client printing them as they come ends with the same text). The
    done text has the last word: should it not begin with what was sent (the engine's
    text joined otherwise than its segments', which whisper.transcribe may do where a
    character's bytes span two segments), no more deltas come, and only done is right."""
    text = transcript.text.strip()
    pieces = [s.text for s in transcript.segments if s.text]
    if "".join(pieces).strip() != text:  # a text not made of its segments': as one piece
        pieces = [text]
    if pieces:
        pieces[0] = pieces[0].lstrip()
        pieces[-1] = pieces[-1].rstrip()
    if not text.startswith(sent):
        pieces = []
    skip = len(sent)  # characters of the pieces already sent
    for piece in pieces:
        piece, skip = piece[skip:], max(0, skip - len(piece))
        if piece:
            yield delta_event(piece)
    yield {"type": DONE_EVENT, "text": text}


def verbose(transcript: Transcript, granularities: Sequence[str]) -> dict:
    """OpenAI's verbose_json: segments and/or words, as the granularities ask."""
    translated = transcript.task == "translate"
    body: Dict[str, Any] = {
        "task": transcript.task,
        "language": TRANSLATION_LANGUAGE if translated else language_name(transcript.language),
        "duration": transcript.duration,
        "text": transcript.text.strip(),
    }
    if "segment" in granularities:
        body["segments"] = [
            {"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text,
             "tokens": list(s.tokens), "temperature": s.temperature,
             "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
             "no_speech_prob": s.no_speech_prob}
            for s in transcript.segments
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in transcript.segments for w in s.words
        ]
    body.update(_usage(transcript))
    return body


def diarized(transcript: Transcript) -> dict:
    """OpenAI's diarized_json: the text, and segments each with its speaker."""
    letters = {s.id: _speaker_letter(i) for i, s in enumerate(transcript.speakers)}
    return {
        "task": "transcribe",
        "duration": transcript.duration,
        "text": transcript.text.strip(),
        "segments": [
            {"type": DIARIZED_SEGMENT_TYPE, "id": f"seg_{s.id}", "start": s.start, "end": s.end,
             "text": s.text.strip(), "speaker": letters.get(s.speaker, SPEAKER_LETTERS[0])}
            for s in transcript.segments
        ],
        **_usage(transcript),
    }


def _speaker_letter(index: int) -> str:
    """A, B, ... Z, then AA, AB, ..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, len(SPEAKER_LETTERS))
        letters = SPEAKER_LETTERS[rest] + letters
    return letters


def _usage(transcript: Transcript) -> dict:
    # OpenAI bills whisper-1 transcriptions by whole seconds of audio; translations carry
    # no usage in its responses
    if transcript.task == "translate":
        return {}
    return {"usage": {"type": "duration", "seconds": math.ceil(transcript.duration)}}


def _model_ids() -> Tuple[str, ...]:
    return (OPENAI_MODEL, *current_app.extensions["whisper_service"].models.allowed)


def _model_entry(model_id: str) -> dict:
    """OpenAI's model object, plus what the menus show of it (model_menu.ModelChoice):
    label, available (and why not, and the bundled stand-in), English only, translates.
    whisper-1 is the default model."""
    registry = current_app.extensions["whisper_service"].models
    name = registry.default if model_id == OPENAI_MODEL else model_id
    return {**model_menu.choice(registry, name).to_dict(),
            "id": model_id, "object": "model", "created": 0, "owned_by": MODEL_OWNER}
