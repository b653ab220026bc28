"""OpenAI Realtime transcription at /v1/realtime, so OpenAI's SDKs work unchanged:
`client.realtime.connect(extra_query={"intent": "transcription"})`.

Client events taken: `session.update` (a session of type "transcription": audio.input's
format, transcription {model, language, prompt} and turn_detection) and the older
`transcription_session.update` (input_audio_format, input_audio_transcription,
turn_detection); `input_audio_buffer.append` (base64 PCM16 mono at 24 kHz, resampled to
16 kHz here), `.commit` and `.clear`.

Server events: `session.created` first; `session.updated` / `transcription_session.updated`;
`input_audio_buffer.speech_started`, `.speech_stopped` and `.committed` (our voice activity
detection is always on: it is what keeps silence off the GPU, and a client's commit ends
the current utterance at once); `conversation.item.input_audio_transcription.delta` with
each run of committed words (the partials, as appended text: never retracted) and
`.completed` with the utterance's whole transcript; `error` in OpenAI's shape, the session
going on unless the error ends it. OpenAI's model names (whisper-1, gpt-4o-transcribe, ...)
mean the default model; any model of the allow-list may be named too.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any, Dict, List, Mapping, Optional

from flask import current_app, request

from web.http.client_json import BadJson, parse_client_json
from web.live.connection import LiveConnection, LiveProtocol, Message, blueprint, serve
from web.live.socket import route
from whisper_service.errors import BadOption
from whisper_service.queue.jobs import Job
from whisper_service.live.audio import BadAudio
from whisper_service.live.gate import END_SILENCE_MS, SPEECH_PROBABILITY
from whisper_service.live.session import (
    START_PAD_SECONDS, Committed, DecodeFailed, Event, LiveOptions, SpeechStarted,
    SpeechStopped, UtteranceDone,
)

REALTIME_RATE = 24000  # Hz: the only PCM rate OpenAI's Realtime API takes
PCM_FORMAT = "audio/pcm"  # the GA name of that format ...
BETA_PCM_FORMAT = "pcm16"  # ... and the older one
# OpenAI's transcription models: here they mean the default model
OPENAI_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                 "gpt-4o-transcribe-latest", "gpt-4o-mini-transcribe-latest",
                 "gpt-4o-transcribe-diarize", "gpt-realtime-whisper")
REALTIME_FRAME_SECONDS = 15.0  # one append may carry this much audio (1 MiB of base64)
ERROR_TYPE = "invalid_request_error"


def _event_id() -> str:
    return "event_" + secrets.token_urlsafe(12)


class RealtimeProtocol(LiveProtocol):
    max_frame_seconds = REALTIME_FRAME_SECONDS

    def __init__(self) -> None:
        self._session_id = ""
        self._items: Dict[int, str] = {}  # utterance -> item id
        self._previous: Optional[str] = None  # the last committed item
        self._options: Dict[str, Any] = {}  # as LiveOptions names them
        self._turn_detection: Optional[dict] = _server_vad()

    # --- LiveProtocol ---------------------------------------------------------------------

    def options(self) -> Mapping[str, Any]:
        model = request.args.get("model")
        self._options = {"model": _model(model)} if model else {}
        return self._options

    def opened(self, session_id: str, options: LiveOptions) -> List[dict]:
        self._session_id = "sess_" + session_id
        return [self._message("session.created", session=self._session(options))]

    def receive(self, message: Message, connection: LiveConnection) -> None:
        if isinstance(message, bytes):
            raise BadAudio("binary frames are not part of the Realtime protocol: send audio as "
                           "input_audio_buffer.append events (base64 PCM16, 24 kHz)")
        try:
            data = parse_client_json(message)
        except BadJson as error:
            connection.send(self.error("invalid_json", "a client event is a JSON object with "
                                       f"a 'type'; this message is {error}"))
            return
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            connection.send(self.error("invalid_json", "a client event is a JSON object with "
                                       "a 'type'; this message is not"))
            return
        handler = _HANDLERS.get(data["type"])
        if handler is None:
            connection.send(self.error(
                "unknown_event", f"unsupported event type {data['type'][:60]!r}; this server "
                f"takes {', '.join(sorted(_HANDLERS))}", "type", data.get("event_id")))
            return
        handler(self, data, connection)

    def event(self, event: Event) -> List[dict]:
        if isinstance(event, SpeechStarted):
            return [self._message("input_audio_buffer.speech_started",
                                  audio_start_ms=int(event.at * 1000),
                                  item_id=self._item(event.utterance))]
        if isinstance(event, SpeechStopped):
            item = self._item(event.utterance)
            committed = self._message("input_audio_buffer.committed", item_id=item,
                                      previous_item_id=self._previous)
            self._previous = item
            return [self._message("input_audio_buffer.speech_stopped",
                                  audio_end_ms=int(event.at * 1000), item_id=item), committed]
        if isinstance(event, Committed):
            return [self._message("conversation.item.input_audio_transcription.delta",
                                  item_id=self._item(event.utterance), content_index=0,
                                  delta=event.text)]
        if isinstance(event, UtteranceDone):
            return [self._message("conversation.item.input_audio_transcription.completed",
                                  item_id=self._item(event.utterance), content_index=0,
                                  transcript=event.text,
                                  usage={"type": "duration",
                                         "seconds": round(max(0.0, event.end - event.start), 3)})]
        if isinstance(event, DecodeFailed):
            return [self.error("transcription_failed", event.message)]
        return []

    def finished(self, job: Optional[Job], text: str) -> List[dict]:
        return []  # Realtime has no closing event: the connection closes

    def error(self, code: str, message: str, param: Optional[str] = None,
              event_id: Optional[str] = None) -> dict:
        return self._message("error", error={
            "type": ERROR_TYPE, "code": code, "message": message, "param": param,
            "event_id": event_id})

    # --- client events -------------------------------------------------------------------

    def _append(self, data: dict, connection: LiveConnection) -> None:
        audio = data.get("audio")
        try:
            pcm = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
        except (binascii.Error, ValueError):
            pcm = None
        if pcm is None:
            connection.send(self.error("invalid_value", "audio must be base64 of PCM16 mono at "
                                       f"{REALTIME_RATE} Hz", "audio", data.get("event_id")))
            return
        connection.feed(pcm, REALTIME_RATE)

    def _commit(self, data: dict, connection: LiveConnection) -> None:
        if not connection.session.speaking:
            connection.send(self.error(
                "input_audio_buffer_commit_empty", "there is no speech in the buffer to commit "
                "(silence is not transcribed)", None, data.get("event_id")))
            return
        connection.session.commit()

    def _clear(self, data: dict, connection: LiveConnection) -> None:
        connection.session.clear()
        connection.send(self._message("input_audio_buffer.cleared"))

    def _update(self, data: dict, connection: LiveConnection) -> None:
        """session.update (GA): session.audio.input.{format, transcription, turn_detection}."""
        session = data.get("session") if isinstance(data.get("session"), dict) else {}
        audio_input = _dig(session, "audio", "input")
        fmt = audio_input.get("format")
        if isinstance(fmt, dict) and (fmt.get("type", PCM_FORMAT) != PCM_FORMAT
                                      or fmt.get("rate", REALTIME_RATE) != REALTIME_RATE):
            return self._refuse_format(connection, data, "session.audio.input.format")
        self._apply(connection, data, audio_input.get("transcription"),
                    audio_input.get("turn_detection", self._turn_detection),
                    "session.audio.input.transcription", "session.updated")

    def _update_beta(self, data: dict, connection: LiveConnection) -> None:
        """transcription_session.update: the older shape of the same settings."""
        session = data.get("session") if isinstance(data.get("session"), dict) else {}
        if session.get("input_audio_format", BETA_PCM_FORMAT) != BETA_PCM_FORMAT:
            return self._refuse_format(connection, data, "session.input_audio_format")
        self._apply(connection, data, session.get("input_audio_transcription"),
                    session.get("turn_detection", self._turn_detection),
                    "session.input_audio_transcription", "transcription_session.updated")

    def _apply(self, connection: LiveConnection, data: dict, transcription: Any,
               turn_detection: Any, param: str, answer: str) -> None:
        wanted = dict(self._options)
        if isinstance(transcription, dict):
            for ours, theirs in (("model", "model"), ("language", "language"),
                                 ("initial_prompt", "prompt")):
                if theirs in transcription:
                    wanted[ours] = transcription[theirs] or None
            if wanted.get("model"):
                wanted["model"] = _model(wanted["model"])
        try:
            options = LiveOptions.from_mapping(
                {k: v for k, v in wanted.items() if v is not None},
                max_seconds=connection.session.options.max_seconds,
                end_silence_ms=_silence_ms(turn_detection, connection.session.options))
        except BadOption as error:
            connection.send(self.error("invalid_value", error.message,
                                       f"{param}.{error.field}", data.get("event_id")))
            return
        self._options = wanted
        self._turn_detection = turn_detection if isinstance(turn_detection, dict) else None
        connection.session.reconfigure(options)
        if answer == "session.updated":
            connection.send(self._message(answer, session=self._session(options)))
        else:
            connection.send(self._message(answer, session=self._beta_session(options)))

    def _refuse_format(self, connection: LiveConnection, data: dict, param: str) -> None:
        connection.send(self.error(
            "unsupported_format", f"this server takes {PCM_FORMAT} at {REALTIME_RATE} Hz "
            f"({BETA_PCM_FORMAT}) only", param, data.get("event_id")))

    # --- shapes --------------------------------------------------------------------------

    def _message(self, kind: str, **fields: Any) -> dict:
        return {"type": kind, "event_id": _event_id(), **fields}

    def _item(self, utterance: int) -> str:
        if utterance not in self._items:
            self._items[utterance] = "item_" + secrets.token_urlsafe(12)
        return self._items[utterance]

    def _transcription(self, options: LiveOptions) -> dict:
        default = current_app.extensions["whisper_service"].models.default
        return {"model": options.model or default, "language": options.language,
                "prompt": options.initial_prompt}

    def _session(self, options: LiveOptions) -> dict:
        return {
            "type": "transcription", "object": "realtime.transcription_session",
            "id": self._session_id, "expires_at": 0, "include": None,
            "audio": {"input": {
                "format": {"type": PCM_FORMAT, "rate": REALTIME_RATE},
                "transcription": self._transcription(options),
                "noise_reduction": None, "turn_detection": self._turn_detection,
            }},
        }

    def _beta_session(self, options: LiveOptions) -> dict:
        return {
            "id": self._session_id, "object": "realtime.transcription_session",
            "input_audio_format": BETA_PCM_FORMAT, "modalities": ["text"],
            "input_audio_transcription": self._transcription(options),
            "turn_detection": self._turn_detection, "client_secret": None,
        }


_HANDLERS = {
    "input_audio_buffer.append": RealtimeProtocol._append,
    "input_audio_buffer.commit": RealtimeProtocol._commit,
    "input_audio_buffer.clear": RealtimeProtocol._clear,
    "session.update": RealtimeProtocol._update,
    "transcription_session.update": RealtimeProtocol._update_beta,
}


def _server_vad() -> dict:
    return {"type": "server_vad", "threshold": SPEECH_PROBABILITY,
            "prefix_padding_ms": int(START_PAD_SECONDS * 1000),
            "silence_duration_ms": END_SILENCE_MS}


def _silence_ms(turn_detection: Any, current: LiveOptions) -> int:
    """The silence that ends an utterance: turn_detection's, when it names one."""
    wanted = turn_detection.get("silence_duration_ms") if isinstance(turn_detection, dict) else None
    return wanted if isinstance(wanted, int) and wanted > 0 else current.end_silence_ms


def _model(name: str) -> Optional[str]:
    """OpenAI's model names mean the default model; others are ours, checked as such."""
    return None if name in OPENAI_MODELS else name


def _dig(data: dict, *keys: str) -> dict:
    for key in keys:
        data = data.get(key) if isinstance(data.get(key), dict) else {}
    return data


@route("/v1/realtime", blueprint)
def realtime(ws) -> None:
    serve(ws, RealtimeProtocol())

