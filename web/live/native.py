"""The native live protocol at /api/live (README "The native protocol"): 16 kHz PCM16
binary frames in, JSON events out; text frames `stop` and `commit`."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from flask import current_app, request

from web.http.client_json import BadJson, parse_client_json
from web.live.connection import (
    NATIVE_RATE, LiveConnection, LiveProtocol, Message, blueprint, serve,
)
from web.live.socket import route
from whisper_service.live.audio import BYTES_PER_SAMPLE, BadAudio
from whisper_service.live.session import (
    Behind, Committed, DecodeFailed, Event, LanguageFixed, LiveOptions, Partial, SpeakerFound,
    SpeechStarted, SpeechStopped,
)
from whisper_service.queue.jobs import Job
from whisper_service.speakers.assign import default_name, speaker_id


class NativeProtocol(LiveProtocol):
    def options(self) -> Mapping[str, Any]:
        return request.args.to_dict()

    def opened(self, session_id: str, options: LiveOptions) -> List[dict]:
        return [dict(type="ready", session=session_id, sample_rate=NATIVE_RATE,
                     max_frame_bytes=int(self.max_frame_seconds * NATIVE_RATE * BYTES_PER_SAMPLE),
                     max_seconds=options.max_seconds,
                     model=options.model or current_app.extensions["whisper_service"].models.default)]

    def receive(self, message: Message, connection: LiveConnection) -> None:
        if isinstance(message, bytes):
            connection.feed(message, NATIVE_RATE)
            return
        try:
            data = parse_client_json(message)
        except BadJson as error:
            raise BadAudio("text frames are JSON messages of type 'stop' or 'commit'; this one "
                           f"is {error}") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "stop":
            connection.stop()
        elif kind == "commit":
            connection.session.commit()
        else:
            raise BadAudio(f"text frames are JSON messages of type 'stop' or 'commit'; got "
                           f"{message[:80]!r}")

    def event(self, event: Event) -> List[dict]:
        if isinstance(event, SpeechStarted):
            return [dict(type="speech_started", at=round(event.at, 3))]
        if isinstance(event, SpeechStopped):
            return [dict(type="speech_stopped", at=round(event.at, 3))]
        if isinstance(event, Partial):
            return [dict(type="partial", text=event.text)]
        if isinstance(event, Committed):
            return [dict(type="committed", text=event.text, start=round(event.start, 3),
                         end=round(event.end, 3), utterance=event.utterance)]
        if isinstance(event, SpeakerFound):
            return [dict(type="speaker", utterance=event.utterance,
                         speaker=speaker_id(event.speaker), name=default_name(event.speaker))]
        if isinstance(event, LanguageFixed):
            return [dict(type="language", language=event.language)]
        if isinstance(event, Behind):
            return [dict(type="behind", seconds=event.seconds)]
        if isinstance(event, DecodeFailed):
            return [self.error("decode_failed", event.message)]
        return []

    def finished(self, job: Optional[Job], text: str) -> List[dict]:
        if job is None:
            return [dict(type="done", job=None, url=None, text=text)]
        return [dict(type="done", job=job.id, url=f"/jobs/{job.id}", text=text)]

    def error(self, code: str, message: str, param: Optional[str] = None) -> dict:
        return dict(type="error", code=code, message=message,
                    **({"param": param} if param else {}))


@route("/api/live", blueprint)
def native(ws) -> None:
    serve(ws, NativeProtocol())
