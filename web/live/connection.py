"""The connection every live protocol shares: messages in, events out, nothing else.

Two wire protocols run on this one connection loop (LiveConnection): the native one at
/api/live (native.py; README "The native protocol") and OpenAI Realtime transcription at
/v1/realtime (realtime.py). A protocol turns client messages into calls on the session
(audio, commit, clear, stop) and the session's events (whisper_service.live.session) into
its messages.

A connection holds one HTTP thread for as long as it lasts; WHISPER_LIVE_SESSIONS bounds
them per process (one more is told `too_many_sessions` and closed with 1013 at once). Audio
is recorded as it comes; when the session ends (stop, a dropped connection, the length
limit, a refused frame), its last decodes and speaker labels are awaited
(WHISPER_LIVE_STOP_SECONDS at most) and it is kept as a finished job.

Backpressure: messages are read from a bounded inbox (socket.py) as fast as they come;
audio past WHISPER_LIVE_MAX_SPEED times real time, or while WHISPER_LIVE_BUFFER_SECONDS of
audio wait for the decoder, is dropped (backpressure.py) and reported as an `audio_dropped`
error, at most once a second, the session going on. So a session's memory is bounded
whatever a client sends, and `stop` is answered within WHISPER_LIVE_STOP_SECONDS and a
moment.
"""

from __future__ import annotations

import abc
import json
import logging
import queue
import time
from typing import Any, List, Mapping, Optional, Union
from urllib.parse import urlsplit

from flask import Blueprint, current_app, request
from simple_websocket import ConnectionClosed

from web.http.auth import ApiKeyRequired, bearer_key, check_key
from web.http.signin import signed_in
from whisper_service.errors import BadOption
from whisper_service.queue.jobs import Job
from whisper_service.live.audio import (
    BYTES_PER_SAMPLE, BadAudio, Recording, Resampler, pcm16_samples,
)
from whisper_service.live.backpressure import Intake, IntakeLimits
from whisper_service.live.scheduler import LiveScheduler, TooManySessions
from whisper_service.live.session import (
    Event, LiveOptions, LiveSession, SessionTooLong,
)

log = logging.getLogger(__name__)

blueprint = Blueprint("live", __name__)

NATIVE_RATE = 16000  # Hz of the native protocol's PCM16 frames
MAX_MESSAGE_BYTES = 1 << 20  # larger messages are closed with 1009 by the WebSocket layer
POLL_SECONDS = 0.05  # while no message comes, events are sent at least this often
PING_SECONDS = 20  # keeps proxies from closing a connection through long silences

# close codes (RFC 6455)
NORMAL, POLICY, TOO_BIG, SERVER_ERROR, TRY_LATER = 1000, 1008, 1009, 1011, 1013

Message = Union[str, bytes]


class EndSession(Exception):
    """Raised by a protocol to end the session: an error event (if any) goes first."""

    def __init__(self, code: str, message: str, close: int = NORMAL):
        super().__init__(message)
        self.code, self.message, self.close = code, message, close


class LiveProtocol(abc.ABC):
    """One wire protocol's messages; LiveConnection runs it."""

    max_frame_seconds = 1.0  # the most audio one message may carry

    @abc.abstractmethod
    def options(self) -> Mapping[str, Any]:
        """The session's options, as named by LiveOptions, from the opening request."""

    @abc.abstractmethod
    def opened(self, session_id: str, options: LiveOptions) -> List[dict]:
        """The first messages."""

    @abc.abstractmethod
    def receive(self, message: Message, connection: "LiveConnection") -> None:
        """Act on one client message (connection.feed, .session, .send, .stop)."""

    @abc.abstractmethod
    def event(self, event: Event) -> List[dict]:
        """The messages that tell the client of a session's event."""

    @abc.abstractmethod
    def finished(self, job: Optional[Job], text: str) -> List[dict]:
        """The last messages, once the session is kept as a job (None: nothing was kept)."""

    @abc.abstractmethod
    def error(self, code: str, message: str, param: Optional[str] = None) -> dict:
        """An error message in the protocol's shape."""


class LiveConnection:
    def __init__(self, ws, protocol: LiveProtocol):
        self.ws = ws
        self.protocol = protocol
        self.settings = current_app.extensions["whisper_settings"]
        self.scheduler: Optional[LiveScheduler] = current_app.extensions.get("whisper_live")
        self.jobs = current_app.extensions["whisper_jobs"]
        self.session: Optional[LiveSession] = None
        self.events: "queue.SimpleQueue[Event]" = queue.SimpleQueue()
        self.stopping = False
        self.connected = True
        self._recording: Optional[Recording] = None
        self._job_id = ""
        self._resampler = Resampler(NATIVE_RATE)
        self.intake = Intake(IntakeLimits(max_speed=self.settings.live_max_speed,
                                          max_backlog_seconds=self.settings.live_buffer_seconds))

    # --- what protocols call -------------------------------------------------------------

    def send(self, message: dict) -> None:
        if self.connected:
            try:
                self.ws.send(json.dumps(message, ensure_ascii=False))
            except ConnectionClosed:
                self.connected = False

    def feed(self, pcm: bytes, rate: int) -> None:
        """PCM16 at `rate` Hz into the session, unless the intake drops it (too fast, or the
        decoder too far behind); BadAudio or EndSession when refused."""
        limit = int(self.protocol.max_frame_seconds * rate * BYTES_PER_SAMPLE)
        if len(pcm) > limit:
            raise EndSession("frame_too_large",
                             f"an audio frame holds at most {self.protocol.max_frame_seconds:g} s"
                             f" ({limit} bytes at {rate} Hz); this one has {len(pcm)} bytes",
                             TOO_BIG)
        if len(pcm) % BYTES_PER_SAMPLE == 0 and not self.intake.admit(
                len(pcm) / (BYTES_PER_SAMPLE * rate), self.session.backlog_seconds):
            return  # dropped: reported by _flush
        if self._resampler.rate != rate:  # the stream's rate, set by its first frame
            self._resampler = Resampler(rate)
        samples = self._resampler(pcm16_samples(pcm))
        try:
            self.session.feed(samples)  # what it takes goes to the recording
        except SessionTooLong as error:
            raise EndSession("session_too_long", error.message) from None

    def stop(self) -> None:
        self.stopping = True

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        try:
            options = LiveOptions.from_mapping(
                self.protocol.options(), max_seconds=self.settings.live_max_minutes * 60)
            if self.scheduler is None:
                raise TooManySessions(0)
            self._job_id, path = self.jobs.new_recording()
            self._recording = Recording(path)
            self.session = self.scheduler.open(options, self.events.put, self._recording.write)
        except (BadOption, TooManySessions) as error:
            if self._recording is not None:
                self._recording.close()
                self.jobs.discard_recording(self._job_id)
            if isinstance(error, BadOption):
                return self._refuse("bad_option", error.message, POLICY, error.field)
            return self._refuse("too_many_sessions", error.message, TRY_LATER)
        log.info("live session %s opened (%d live now)", self._job_id, self.scheduler.active)
        ending: Optional[EndSession] = None
        try:
            for message in self.protocol.opened(self._job_id, options):
                self.send(message)
            ending = self._converse()
        finally:
            self._finish(ending)

    def _converse(self) -> Optional[EndSession]:
        """Messages in, events out, until the client stops, leaves or is refused."""
        while not self.stopping:
            try:
                message = self.ws.receive(timeout=POLL_SECONDS)
            except ConnectionClosed:
                self.connected = False
                log.info("live session %s: the client left", self._job_id)
                return None
            if message is not None:
                try:
                    self.protocol.receive(message, self)
                except BadAudio as error:
                    self.send(self.protocol.error("bad_frame", str(error)))
                except EndSession as ending:
                    return ending
                except Exception:  # a bug here must still end the session cleanly, kept
                    log.exception("live session %s: a message could not be handled", self._job_id)
                    return EndSession("server_error", "the server failed to handle a message; "
                                      "the session ends here, kept as a job", SERVER_ERROR)
            self._flush()
        return None

    def _finish(self, ending: Optional[EndSession]) -> None:
        if ending is not None:
            self.send(self.protocol.error(ending.code, ending.message))
        session = self.session
        session.stop()
        wait = self.settings.live_stop_seconds
        deadline = time.monotonic() + wait
        while not session.settled and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            self._flush()
        self._flush()
        if not session.settled:  # the decoder (or labeler) is far behind: keep what is done
            log.warning("live session %s: last decodes or speaker labels not done in %g s",
                        self._job_id, wait)
            self.send(self.protocol.error(
                "unfinished", f"the server could not decode the last words"
                f"{' or tell their speakers' if session.labelling else ''} within "
                f"{wait:g} s (it is overloaded); what was committed and the whole "
                "recording are kept"))
        self.scheduler.close(session)
        self._recording.close()
        job = self._keep(session)
        for message in self.protocol.finished(job, session.text):
            self.send(message)
        self._close(ending.close if ending is not None else NORMAL,
                    ending.code if ending is not None else "session ended")

    def _keep(self, session: LiveSession) -> Optional[Job]:
        if not self._recording.samples:
            self.jobs.discard_recording(self._job_id)
            return None
        try:
            return self.jobs.add_recorded(self._job_id, f"live-{time.strftime('%Y%m%d-%H%M%S')}.wav",
                                          session.options.as_transcribe_options(),
                                          session.transcript())
        except Exception:
            log.exception("live session %s could not be kept", self._job_id)
            return None

    def _flush(self) -> None:
        dropped = self.intake.report()
        if dropped is not None:
            log.info("live session %s: %.1f s of audio dropped (%s)", self._job_id,
                     dropped.seconds, dropped.reason)
            self.send(self.protocol.error("audio_dropped", dropped.message, "audio"))
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            for message in self.protocol.event(event):
                self.send(message)

    def _refuse(self, code: str, message: str, close: int, param: Optional[str] = None) -> None:
        self.send(self.protocol.error(code, message, param))
        self._close(close, code)

    def _close(self, code: int, reason: str) -> None:
        if self.connected:
            try:
                self.ws.close(reason=code, message=reason[:120])
            except Exception:  # already gone
                pass
            self.connected = False


# --- who may connect ---------------------------------------------------------------------

def live_access_allowed() -> bool:
    """An API key in the Authorization header, or (for the live page) a browser of this
    site: signed in where keys are needed, any where the pages are open. A browser's
    WebSocket carries its cookies to any site, so its Origin must be this site's."""
    settings = current_app.extensions["whisper_settings"]
    if not settings.api_keys:
        return _same_origin() or "Origin" not in request.headers
    if check_key(bearer_key(), settings.api_keys):  # 429 past the wrong keys' limit
        return True
    if not _same_origin():
        return False
    return settings.web_ui == "open" or signed_in()


def _same_origin() -> bool:
    origin = request.headers.get("Origin")
    return bool(origin) and urlsplit(origin).netloc == request.host


def serve(ws, protocol: LiveProtocol) -> None:
    """Run one connection (a view's whole work: see socket.route)."""
    LiveConnection(ws, protocol).run()


@blueprint.before_request
def check_access() -> None:
    if not live_access_allowed():
        raise ApiKeyRequired()
