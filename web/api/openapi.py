"""The OpenAPI 3.1 description of the whole HTTP API, as a Python dict.

The options' schemas are made from the fields of TranscribeOptions and SubtitleLayout
(type, default and help text), the results' from the Transcript dataclasses, and the
OpenAI-compatible fields from web/api/openai_compat.py's own constants, so the document
cannot drift from the code; tests/test_openapi.py checks that it names every route.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, Dict, Union, get_args, get_origin, get_type_hints

from web.api import openai_compat
from web.api.jumpstart import JUMPSTART_IGNORED, JUMPSTART_RENAMED, RAW_TYPES
from whisper_service.options import (
    MAX_BEAM_SIZE, MAX_BEST_OF, MAX_PROMPT_CHARS, MAX_SPEAKERS, MAX_TEMPERATURES, OPTION_NAMES,
    SubtitleLayout,
    TranscribeOptions,
)
from whisper_service.transcript import Segment, Speaker, Transcript, Word
from whisper_service.writers import FORMATS, MEDIA_TYPES

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
JSON = "application/json"
MULTIPART = "multipart/form-data"
TEXT = "text/plain; charset=utf-8"
EVENT_STREAM = "text/event-stream"
FINE_TUNE_FIELDS = ("language", "epochs", "max_steps", "batch_size", "learning_rate",
                    "warmup_steps", "eval_fraction", "eval_steps", "save_steps", "seed",
                    "method", "lora_rank", "lora_alpha")
JOB_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"}
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
# not a field of TranscribeOptions: from_mapping turns it into the temperature schedule
INCREMENT_HELP = "with one temperature: fall back from it up to 1.0 in steps of this size"
# what options.py refuses beyond the types, stated where a schema can say it
DIARIZED_ONLY = ("speaker", "speakers")  # transcript keys present only when diarized
OPTION_BOUNDS = {
    "beam_size": {"minimum": 0, "maximum": MAX_BEAM_SIZE},
    "best_of": {"minimum": 1, "maximum": MAX_BEST_OF},
    "temperature": {"maxItems": MAX_TEMPERATURES, "minimum": 0, "maximum": 1},
    "initial_prompt": {"maxLength": MAX_PROMPT_CHARS},
    **{name: {"minimum": 1, "maximum": MAX_SPEAKERS}
       for name in ("num_speakers", "min_speakers", "max_speakers")},
}
ERROR_TEXT = {
    400: "A field is missing or wrong; `field` names it.",
    401: "An API key is configured and the request has none, or a wrong one.",
    404: "No such job (or its transcript is not ready yet).",
    409: "The job failed or was cancelled: it has no transcript.",
    413: "The upload is larger than WHISPER_MAX_UPLOAD_MB.",
    415: "Not audio or video, a refused format, or a body that is neither multipart nor JSON.",
    422: "Media that cannot be used: empty, truncated, too long, or without an audio stream.",
    429: "Too many wrong API keys from this address lately (WHISPER_KEY_FAILURES within "
         "WHISPER_KEY_FAILURE_WINDOW); try again after Retry-After.",
    500: "The transcription failed repeatedly on the server.",
    503: "The queue is full, every place for a synchronous call or every upload place is "
         "taken (code too_many_uploads, WHISPER_MAX_UPLOADS; see Retry-After), the model "
         "cannot be loaded, or the job database is unreachable (code store_unavailable; try "
         "again after Retry-After).",
    504: "Not finished within WHISPER_SYNC_LIMIT; the job is cancelled.",
    507: "The server's disk is full, or below WHISPER_MIN_FREE_MB: nothing of the upload "
         "is kept (code disk_full; try again after Retry-After).",
}


def document() -> Dict[str, Any]:
    """A fresh dict each call (a few milliseconds), so no caller can change another's."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Whisper transcription service",
            "version": API_VERSION,
            "description": (
                "Speech to text with openai-whisper. Every transcription is a job in a queue; "
                "the native synchronous call waits up to WHISPER_SYNC_TIMEOUT seconds, then "
                "answers 202 with the job; /v1 and /invocations answer only with the result or "
                "an error (504 after WHISPER_SYNC_LIMIT), JSON kept alive with leading spaces. "
                "The bearer key is needed only when WHISPER_API_KEYS is set."
            ),
        },
        "security": [{"bearer": []}],
        "tags": [{"name": name} for name in ("native", "sagemaker", "openai", "health")],
        "paths": {**_native_paths(), **_editing_paths(), **_fine_tune_paths(), **_root_paths(),
                  **_openai_paths()},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
    }


# --- schemas from the code's own types ------------------------------------------------------


def schema_of(hint: Any) -> Dict[str, Any]:
    """The JSON schema of a type annotation: str, int, float, bool, Optional[X],
    Tuple[X, ...] and dataclasses (as references)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is Union:  # Optional[X]
        inner = schema_of(args[0])
        if "type" in inner:
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}
    if get_origin(hint) is tuple:
        return {"type": "array", "items": schema_of(args[0])}
    if is_dataclass(hint):
        return _ref(hint.__name__)
    return {"type": JSON_TYPES[hint]}


def dataclass_schema(cls: type) -> Dict[str, Any]:
    """An object with every field of `cls`, as dataclasses.asdict() writes it."""
    hints = get_type_hints(cls)
    return {
        "type": "object",
        "properties": {f.name: _described(schema_of(hints[f.name]), f) for f in fields(cls)},
        "required": [f.name for f in fields(cls) if f.name not in DIARIZED_ONLY],
    }


def option_properties() -> Dict[str, Any]:
    """Every option a request may set (OPTION_NAMES), flat, as from_mapping reads them:
    the typed value or the same as a string (forms send strings); null keeps the default."""
    hints = {**get_type_hints(TranscribeOptions), **get_type_hints(SubtitleLayout)}
    known = {f.name: f for cls in (TranscribeOptions, SubtitleLayout) for f in fields(cls)}
    properties = {}
    for name in OPTION_NAMES:
        if name in known:
            properties[name] = _described(_as_input(schema_of(hints[name])), known[name])
        else:
            properties[name] = {"type": ["number", "string", "null"], "description": INCREMENT_HELP}
        properties[name].update(OPTION_BOUNDS.get(name, {}))
    return properties


def _as_input(schema: Dict[str, Any]) -> Dict[str, Any]:
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if "array" in types:  # a list may also be one value, or "a, b" as a string
        types.append(schema["items"]["type"])
    return {**schema, "type": list(dict.fromkeys([*types, "string", "null"]))}


def _described(schema: Dict[str, Any], field: Field) -> Dict[str, Any]:
    if "help" in field.metadata:
        schema["description"] = field.metadata["help"]
    if field.default is not MISSING:
        default = field.default
        schema["default"] = list(default) if isinstance(default, tuple) else default
    return schema


def _schemas() -> Dict[str, Any]:
    options = option_properties()
    return {
        **{cls.__name__: dataclass_schema(cls)
           for cls in (TranscribeOptions, SubtitleLayout, Transcript, Segment, Word, Speaker)},
        "Error": _object(error=_object(
            code={"type": "string", "description": "the error's kind, e.g. not_media"},
            message={"type": "string", "description": "one sentence for people"},
            field={"type": ["string", "null"], "description": "the field at fault, if any"},
        )),
        "OpenAIError": _object(error=_object(
            message={"type": "string"}, type={"type": "string"},
            param={"type": ["string", "null"]}, code={"type": ["string", "null"]},
        )),
        "TranscriptionUpload": _upload({**options}),
        "TranscriptionBody": _base64_body({**options}),
        "DetectionUpload": _upload({"model": options["model"]}),
        "DetectionBody": _base64_body({"model": options["model"]}),
        "TranscriptResult": {"allOf": [_ref("Transcript"), _object(job_id=JOB_ID)]},
        "Job": _job_schema(),
        **_editing_schemas(),
        "LanguageDetection": _object(
            language={"type": "string", "description": "code of the likeliest language"},
            language_name={"type": "string"},
            probabilities={"type": "array", "description": "every language, likeliest first",
                           "items": _object(language={"type": "string"}, name={"type": "string"},
                                            probability={"type": "number"})},
        ),
        "Models": _object(
            default={"type": "string"},
            allowed={"type": "array", "items": {"type": "string"}},
            loaded={"type": "array", "items": {"type": "string"}},
            translate_model={"type": "string",
                             "description": "runs translations for models that cannot translate"},
            models={"type": "array", "items": _ref("ModelChoice"),
                    "description": "each allowed model as the menus show it"},
        ),
        "ModelChoice": _model_choice_schema(),
        "MissingModel": _object(
            model={"type": "string"},
            reason={"type": "string", "description": "why it cannot be had here, in people's terms"},
            stand_in={"type": ["string", "null"],
                      "description": "the bundled model a plain transcription asked of it runs"}),
        "Readiness": {
            "type": "object", "required": ["status"],
            "description": "queued and max_queued are there unless the job database is "
                           "unreachable (status unavailable, error says so, Retry-After set)",
            "properties": {
                "status": {"enum": ["ready", "loading", "unavailable", "busy", "low_on_disk"]},
                "queued": {"type": "integer"}, "max_queued": {"type": "integer"},
                "disk": _object(free_mb={"type": "integer"}, min_free_mb={"type": "integer"}),
                "error": {"type": "string", "description": "unavailable: why the model did "
                          "not load, or that the job database is unreachable; low_on_disk: "
                          "the data folder's disk is below WHISPER_MIN_FREE_MB (uploads get "
                          "507 until room is made)"},
                "notice": {"type": "string", "description": "ready (or loading), but bundled "
                           "models stand in for configured ones that could not be downloaded"},
                "missing": {"type": "array", "items": _ref("MissingModel"),
                            "description": "with notice: each configured model missing here"},
            },
        },
        "JumpStartRequest": _jumpstart_schema(options),
        "OpenAIUpload": _openai_upload_schema(options),
        "OpenAITranscription": {
            "type": "object", "required": ["text"],
            "description": "response_format json: the text; verbose_json adds task, language, "
                           "duration, segments and (with word granularity) words; diarized_json "
                           "(OpenAI's TranscriptionDiarized) has task, duration, text and segments "
                           "of type transcript.text.segment with id, start, end, text and "
                           "speaker (A, B, ... in order of first appearance)",
            "properties": {"text": {"type": "string"}, "task": {"type": "string"},
                           "language": {"type": "string"}, "duration": {"type": "number"},
                           "segments": {"type": "array", "items": {"type": "object"}},
                           "words": {"type": "array", "items": {"type": "object"}},
                           "usage": {"type": "object"}},
        },
        "OpenAITranscriptionEvent": {"oneOf": [
            _object(type={"const": openai_compat.DELTA_EVENT},
                    delta={"type": "string", "description": "text added"}),
            _object(type={"const": openai_compat.DONE_EVENT},
                    text={"type": "string", "description": "the whole text"}),
        ]},
        "OpenAIModel": {"allOf": [
            _object(id={"type": "string"}, object={"const": "model"},
                    created={"type": "integer"}, owned_by={"type": "string"}),
            _model_choice_schema()]},
        "OpenAIModels": _object(object={"const": "list"},
                                data={"type": "array", "items": _ref("OpenAIModel")}),
    }


def _model_choice_schema() -> Dict[str, Any]:
    """A model as the menus offer it (whisper_service.model_menu.ModelChoice)."""
    maybe = {"type": ["boolean", "null"]}
    return _object(
        id={"type": "string"}, label={"type": "string", "description": "for people"},
        available={"type": "boolean", "description": "false: cannot be had here (reason)"},
        reason={"type": ["string", "null"]},
        stand_in={"type": ["string", "null"], "description": "the bundled model that runs "
                  "instead of one missing here"},
        download_gb={"type": ["number", "null"], "description": "what its first use downloads"},
        english_only={**maybe, "description": "null: not known until it loads"},
        translates={**maybe, "description": "whether it translates itself"})


def _job_schema() -> Dict[str, Any]:
    time = {"type": ["string", "null"], "format": "date-time"}
    return _object(
        id=JOB_ID,
        state={"enum": ["queued", "running", "done", "failed", "cancelled"]},
        position={"type": ["integer", "null"], "description": "1-based place while queued"},
        progress={"type": "number", "minimum": 0, "maximum": 1},
        eta_seconds={"type": ["number", "null"]},
        error={"type": ["string", "null"], "description": "why a failed job failed"},
        created_at={"type": "string", "format": "date-time"},
        started_at=time, finished_at=time,
        attempts={"type": "integer"},
        model={"type": ["string", "null"], "description": "the model that made the transcript"},
        model_label={"type": ["string", "null"], "description": "that model for people: a "
                     "bundled one by what it is"},
        stand_in={"type": ["string", "null"], "description": "a bundled model stood in for the "
                  "one asked for, which this server could not download: says so"},
        filename={"type": "string"},
        options=_ref("TranscribeOptions"),
        links=_object(self={"type": "string"}, transcript=_object(
            **{fmt: {"type": "string"} for fmt in FORMATS})),
    )


def _upload(properties: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "type": "object", "required": ["file"], "additionalProperties": False,
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "the audio or video file"}, **properties},
    }


def _base64_body(properties: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "type": "object", "required": ["audio"], "additionalProperties": False,
        "properties": {
            "audio": {"type": "string", "contentEncoding": "base64",
                      "description": "the file's bytes in base64"},
            "filename": {"type": "string", "description": "the file's name, for messages"},
            **properties,
        },
    }


def _jumpstart_schema(options: Dict[str, Any]) -> Dict[str, Any]:
    renamed = {old: {**options[new], "description": f"our {new}"}
               for old, new in JUMPSTART_RENAMED.items()}
    ignored = {name: {"description": "accepted and ignored: whisper has no counterpart"}
               for name in sorted(JUMPSTART_IGNORED)}
    return {
        "type": "object", "required": ["audio_input"], "additionalProperties": False,
        "properties": {
            "audio_input": {"type": "string", "pattern": "^([0-9A-Fa-f]{2}\\s*)*$",
                            "description": "the file's bytes in hexadecimal"},
            **renamed, **options, **ignored,
        },
    }


def _openai_upload_schema(options: Dict[str, Any]) -> Dict[str, Any]:
    oa = openai_compat
    properties = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "default": oa.OPENAI_MODEL,
                  "description": f"{oa.OPENAI_MODEL} (the default model) or an allowed model"},
        "language": options["language"],
        # a string (not null, which a form cannot send), bounded like initial_prompt
        "prompt": {**{k: v for k, v in options["initial_prompt"].items() if k != "default"},
                   "type": "string"},
        "response_format": {"enum": list(oa.RESPONSE_FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1,
                        "description": "0 (default): the fallback schedule 0.0, 0.2 ... 1.0"},
        oa.GRANULARITY_FIELD: {"type": "array", "items": {"enum": list(oa.GRANULARITIES)},
                               "description": "needs response_format verbose_json"},
        "stream": {"type": "boolean", "default": False,
                   "description": "true: server-sent events (text/event-stream), "
                                  f"{oa.DELTA_EVENT} with each segment's text, then "
                                  f"{oa.DONE_EVENT} with the whole text; with "
                                  f"response_format {' or '.join(oa.STREAM_FORMATS)}"},
        **{name: options[name] for name in oa.EXTRA_FIELDS},
    }
    return {"type": "object", "required": ["file"], "properties": properties}


def _object(**properties: Any) -> Dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def _ref(name: str) -> Dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# --- paths ----------------------------------------------------------------------------------


def _native_paths() -> Dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": JOB_ID}
    return {
        "/api/v1/transcriptions": {"post": {
            "tags": ["native"], "operationId": "createTranscription",
            "summary": "Transcribe a file: the transcript, or 202 and the job when it takes longer",
            "parameters": [
                {"name": "async", "in": "query", "schema": {"type": "boolean"},
                 "description": "true: answer 202 with the job at once"},
                {"name": "Prefer", "in": "header", "schema": {"type": "string"},
                 "description": "respond-async (RFC 7240): the same as async=true"},
            ],
            "requestBody": _body("TranscriptionUpload", "TranscriptionBody"),
            "responses": {
                "200": _json_response("The transcript, with the job's id.", "TranscriptResult"),
                "202": _accepted(),
                **_errors(400, 401, 409, 413, 415, 422, 500, 503, 507),
            },
        }},
        "/api/v1/jobs/{job_id}": {
            "parameters": [job_id],
            "get": {
                "tags": ["native"], "operationId": "getJob", "summary": "A job's state",
                "responses": {"200": _json_response("The job.", "Job"), **_errors(401, 404)},
            },
            "delete": {
                "tags": ["native"], "operationId": "deleteJob",
                "summary": "Cancel a queued or running job; delete a finished one",
                "responses": {"204": {"description": "Cancelled or deleted."}, **_errors(401, 404)},
            },
        },
        "/api/v1/jobs/{job_id}/transcript.{fmt}": {"get": {
            "tags": ["native"], "operationId": "getTranscript",
            "summary": "A done job's transcript in one format",
            "parameters": [job_id, {"name": "fmt", "in": "path", "required": True,
                                    "schema": {"enum": list(FORMATS)}}],
            "responses": {
                "200": {"description": "The transcript.", "content": {
                    MEDIA_TYPES[fmt]: {"schema": _ref("Transcript") if fmt == "json"
                                       else {"type": "string"}} for fmt in FORMATS}},
                **_errors(401, 404, 409),
            },
        }},
        "/api/v1/detect-language": {"post": {
            "tags": ["native"], "operationId": "detectLanguage",
            "summary": "The spoken language of a file's first 30 seconds",
            "requestBody": _body("DetectionUpload", "DetectionBody"),
            "responses": {"200": _json_response("Probabilities.", "LanguageDetection"),
                          **_errors(400, 401, 413, 415, 422, 503, 507)},
        }},
        "/api/v1/models": {"get": {
            "tags": ["native"], "operationId": "listModels", "summary": "The models offered",
            "responses": {"200": _json_response("The models.", "Models"), **_errors(401)},
        }},
    }


def _editing_schemas() -> Dict[str, Any]:
    number = {"type": "number", "minimum": 0}
    line = {"type": "integer", "minimum": 0,
            "description": "the line's place (0 for the first), after the edits before it"}
    return {
        "TranscriptEdits": {**_object(edits={"type": "array", "minItems": 1, "items": {"oneOf": [
            _object(op={"const": "text"}, segment=line, text={"type": "string"}),
            _object(op={"const": "merge"}, segment=line),
            {"type": "object", "required": ["op", "segment", "at"],
             "properties": {"op": {"const": "split"}, "segment": line, "at": {
                 "type": "integer", "description": "character offset into the line's text"},
                            "time": {**number, "description": "where the second line starts"}}},
            _object(op={"const": "speaker"}, segment=line, speaker={"type": "string"}),
            {"type": "object", "required": ["op", "segment"],
             "properties": {"op": {"const": "retime"}, "segment": line, "start": number,
                            "end": number}},
        ]}}), "description": "applied in order; 400 names the first that cannot apply"},
        "Envelope": _object(
            duration={"type": "number", "description": "seconds of audio"},
            seconds_per_bin={"type": "number"},
            bins={"type": "integer"},
            floor_db={"type": "number", "description": "the level drawn as silence"},
            levels={"type": "string", "description": "base64: one byte per bin, 0 (floor_db "
                    "or quieter) to 255 (full scale)"},
        ),
    }


def _editing_paths() -> Dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": JOB_ID}
    return {
        "/api/v1/jobs/{job_id}/transcript": {"patch": {
            "tags": ["native"], "operationId": "editTranscript", "parameters": [job_id],
            "summary": "Correct a done job's transcript; the model's is kept",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("TranscriptEdits")}}},
            "responses": {"200": _json_response("The corrected transcript.", "Transcript"),
                          **_errors(400, 401, 404, 409)},
        }},
        "/api/v1/jobs/{job_id}/transcript/edits": {"delete": {
            "tags": ["native"], "operationId": "restoreTranscript", "parameters": [job_id],
            "summary": "Drop the corrections: the model's transcript again",
            "responses": {"204": {"description": "Restored."}, **_errors(401, 404, 409)},
        }},
        "/api/v1/jobs/{job_id}/original.{fmt}": {"get": {
            "tags": ["native"], "operationId": "getOriginalTranscript",
            "summary": "The model's transcript in one format, whatever the corrections",
            "parameters": [job_id, {"name": "fmt", "in": "path", "required": True,
                                    "schema": {"enum": list(FORMATS)}}],
            "responses": {
                "200": {"description": "The transcript.", "content": {
                    MEDIA_TYPES[fmt]: {"schema": _ref("Transcript") if fmt == "json"
                                       else {"type": "string"}} for fmt in FORMATS}},
                **_errors(401, 404, 409),
            },
        }},
        "/api/v1/jobs/{job_id}/envelope": {"get": {
            "tags": ["native"], "operationId": "getEnvelope", "parameters": [job_id],
            "summary": "The audio's loudness over time, for drawing it",
            "responses": {"200": _json_response("The envelope.", "Envelope"),
                          **_errors(401, 404, 409)},
        }},
    }


def _fine_tune_paths() -> Dict[str, Any]:
    fine_tune = {"type": "object", "description": "A fine-tune's state: id, name, base, state "
                 "(queued, running, done, failed, cancelled), step, total_steps, loss, wer, "
                 "eta_seconds, error, before and after (the held-out error rates), losses and "
                 "wers (the curves' points)"}
    fine_tune_id = {"name": "fine_tune_id", "in": "path", "required": True, "schema": JOB_ID}
    upload = {"type": "object", "required": ["dataset", "model", "name"], "properties": {
        "dataset": {"type": "string", "format": "binary",
                    "description": "a zip of the clips and a .csv / .jsonl table (audio, text), "
                                   "or of a Common Voice folder"},
        "model": {"type": "string", "description": "the base model, one this server offers"},
        "name": {"type": "string", "description": "the fine-tuned model's name"},
        **{field: {"type": "string"} for field in FINE_TUNE_FIELDS}}}
    return {
        "/api/v1/fine-tunes": {
            "post": {"tags": ["native"], "operationId": "createFineTune",
                     "summary": "Fine-tune a model on an uploaded dataset archive",
                     "requestBody": {"required": True, "content": {MULTIPART: {"schema": upload}}},
                     "responses": {"202": _json_response("Queued: poll Location.", fine_tune),
                                   **_errors(400, 401, 413, 503, 507)}},
            "get": {"tags": ["native"], "operationId": "listFineTunes",
                    "summary": "Every fine-tune, oldest first",
                    "responses": {"200": _json_response("The fine-tunes.", _object(
                        fine_tunes={"type": "array", "items": fine_tune})), **_errors(401)}},
        },
        "/api/v1/fine-tunes/{fine_tune_id}": {
            "get": {"tags": ["native"], "operationId": "getFineTune", "parameters": [fine_tune_id],
                    "summary": "A fine-tune's state, step, loss, WER and time left",
                    "responses": {"200": _json_response("The fine-tune.", fine_tune),
                                  **_errors(401, 404)}},
            "delete": {"tags": ["native"], "operationId": "cancelFineTune",
                       "parameters": [fine_tune_id],
                       "summary": "Cancel a fine-tune: at once while queued, after the step running",
                       "responses": {"202": _json_response("The fine-tune, cancelling.", fine_tune),
                                     **_errors(401, 404)}},
        },
    }


def _root_paths() -> Dict[str, Any]:
    return {
        "/invocations": {"post": {
            "tags": ["sagemaker"], "operationId": "invoke",
            "summary": "SageMaker transcription: the audio file itself as the body (as "
                       "invoke_endpoint(ContentType='audio/wav', Body=...) sends it, default "
                       "options), or JumpStart's JSON with hex-encoded audio and options",
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _ref("JumpStartRequest")},
                **{media: {"schema": {"type": "string", "format": "binary",
                                      "description": "the audio or video file"}}
                   for media in _raw_types()},
            }},
            "responses": {
                "200": _json_response("The text.", _object(text={"type": "string"})),
                **_errors(400, 401, 409, 413, 415, 422, 500, 503, 504, 507),
            },
        }},
        "/ping": {"get": {
            "tags": ["sagemaker"], "operationId": "ping", "security": [],
            "summary": "SageMaker's health check: the same answer as /readyz",
            "responses": {"200": _json_response("Ready.", "Readiness"),
                          "503": _json_response("Loading the model, the model failed to load "
                                                "(error says why), busy, low on disk, or the "
                                                "job database is unreachable.", "Readiness")},
        }},
        "/readyz": {"get": {
            "tags": ["health"], "operationId": "readiness", "security": [],
            "summary": "Ready when the default model is loaded and the queue has room",
            "responses": {"200": _json_response("Ready.", "Readiness"),
                          "503": _json_response("Loading the model, the model failed to load "
                                                "(error says why), busy, low on disk, or the "
                                                "job database is unreachable.", "Readiness")},
        }},
        "/healthz": {"get": {
            "tags": ["health"], "operationId": "liveness", "security": [],
            "summary": "The process answers",
            "responses": {"200": _json_response("Alive.", _object(status={"const": "ok"}))},
        }},
        "/api/openapi.json": {"get": {
            "tags": ["health"], "operationId": "openapi", "security": [],
            "summary": "This document",
            "responses": {"200": _json_response("OpenAPI 3.1.", {"type": "object"})},
        }},
    }


def _raw_types():

    return RAW_TYPES


def _openai_paths() -> Dict[str, Any]:
    def audio(task: str) -> Dict[str, Any]:
        return {"post": {
            "tags": ["openai"], "operationId": f"openai{task.title()}",
            "summary": f"OpenAI-compatible {task}",
            "requestBody": {"required": True, "content": {
                MULTIPART: {"schema": _ref("OpenAIUpload")}}},
            "responses": {
                "200": {"description": "The transcript in the response_format asked for.",
                        "content": {JSON: {"schema": _ref("OpenAITranscription")},
                                    **{MEDIA_TYPES[f]: {"schema": {"type": "string"}}
                                       for f in ("srt", "vtt")},
                                    TEXT: {"schema": {"type": "string"}},
                                    EVENT_STREAM: {"schema": {
                                        "type": "string",
                                        "description": "stream=true: `data: {event}` lines, "
                                                       "each event an OpenAITranscriptionEvent; "
                                                       "an error as `data: {\"error\": ...}`"}}}},
                **_errors(400, 401, 409, 500, 503, 504, 507, schema="OpenAIError"),
            },
        }}

    model_id = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/v1/audio/transcriptions": audio("transcription"),
        "/v1/audio/translations": audio("translation"),
        "/v1/models": {"get": {
            "tags": ["openai"], "operationId": "openaiModels", "summary": "OpenAI-style model list",
            "responses": {"200": _json_response("The models.", "OpenAIModels"),
                          **_errors(401, schema="OpenAIError")},
        }},
        "/v1/models/{model_id}": {"get": {
            "tags": ["openai"], "operationId": "openaiModel", "summary": "One model",
            "parameters": [model_id],
            "responses": {"200": _json_response("The model.", "OpenAIModel"),
                          **_errors(401, 404, schema="OpenAIError")},
        }},
    }


def _body(multipart: str, json_body: str) -> Dict[str, Any]:
    return {"required": True, "content": {
        MULTIPART: {"schema": _ref(multipart)}, JSON: {"schema": _ref(json_body)}}}


def _json_response(description: str, schema: Any) -> Dict[str, Any]:
    return {"description": description,
            "content": {JSON: {"schema": _ref(schema) if isinstance(schema, str) else schema}}}


def _accepted() -> Dict[str, Any]:
    response = _json_response("Queued or running: poll Location.", "Job")
    response["headers"] = {"Location": {"schema": {"type": "string"},
                                        "description": "/api/v1/jobs/{job_id}"}}
    return response


def _errors(*statuses: int, schema: str = "Error") -> Dict[str, Any]:
    if 401 in statuses:  # every key check counts wrong keys per address
        statuses = tuple(sorted({*statuses, 429}))
    responses = {str(status): _json_response(ERROR_TEXT[status], schema) for status in statuses}
    if 429 in statuses:
        responses["429"]["headers"] = {"Retry-After": {
            "schema": {"type": "integer"}, "description": "seconds until a key may be tried again"}}
    if 503 in statuses:
        responses["503"]["headers"] = {"Retry-After": {
            "schema": {"type": "integer"},
            "description": "seconds, when the queue is full or the job database is away"}}
    if 507 in statuses:
        responses["507"]["headers"] = {"Retry-After": {
            "schema": {"type": "integer"}, "description": "seconds until room may be made"}}
    return responses
