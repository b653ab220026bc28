"""Every live session of a process, decoded together by one thread.

Sessions ring the doorbell when a decode may be due. The scheduler's thread then asks every
session for its next decode and hands them all to the decoder at once, MAX_BATCH at a time:
one batch serves many sessions, so the GPU's cost per session falls as sessions are added.
The decoder takes the model's lock before file jobs (models.TurnLock), which wait between
their batches. A session whose decode fails ends its utterance with what it had committed;
the others, and the thread, go on. Speaker labels (diarize) are told on the scheduler's
SpeakerLabeler thread (labels.py), never on this one: embedding a voice delays no decode.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional

import numpy as np

from whisper_service.errors import ServiceError
from whisper_service.live.decoder import LiveDecoder
from whisper_service.live.labels import SpeakerLabeler
from whisper_service.live.session import DecodeRequest, DecodeResult, Event, LiveOptions, LiveSession

log = logging.getLogger(__name__)

MAX_BATCH = 16  # sessions decoded in one call at most
IDLE_WAKE_SECONDS = 1.0  # the thread looks for work at least this often


class TooManySessions(ServiceError):
    def __init__(self, limit: int):
        super().__init__(
            f"this server takes {limit} live session(s) at a time and all are in use; try "
            "again in a minute" if limit else "this server takes no live sessions "
            "(WHISPER_LIVE_SESSIONS is 0, or it is a web-only host): connect to one that "
            "transcribes")


class LiveScheduler:
    def __init__(self, decoder: LiveDecoder, max_sessions: int, max_batch: int = MAX_BATCH,
                 labeler: Optional[SpeakerLabeler] = None):
        """labeler: tells every session's speakers (None: one of its own)."""
        self.decoder = decoder
        self.labeler = labeler or SpeakerLabeler()
        self.max_sessions = max_sessions
        self.max_batch = max_batch
        self._sessions: List[LiveSession] = []
        self._lock = threading.Lock()
        self._doorbell = threading.Event()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(self, options: LiveOptions, on_event: Callable[[Event], None],
             record: Callable[[np.ndarray], None] = lambda samples: None) -> LiveSession:
        """A new session, decoded from now on (on_event and record: as LiveSession takes
        them); TooManySessions when all places are taken, BadOption when the decoder cannot
        take its options."""
        self.decoder.check(options)
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise TooManySessions(self.max_sessions)
            session = LiveSession(options, on_event, wake=self._doorbell.set, record=record,
                                  labeler=self.labeler)
            self._sessions.append(session)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="live-scheduler",
                                                daemon=True)
                self._thread.start()
        return session

    def close(self, session: LiveSession) -> None:
        """Forget the session: its pending decodes and speaker labels are dropped (a label
        being told is waited for, a few seconds at most). Not with the session's lock held."""
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)
        self.labeler.cancel(session)

    def stop(self) -> None:
        self._stopping.set()
        self._doorbell.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.labeler.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._doorbell.wait(IDLE_WAKE_SECONDS)
            self._doorbell.clear()
            while not self._stopping.is_set():
                requests = self._due()
                if not requests:
                    break
                for start in range(0, len(requests), self.max_batch):
                    self._decode(requests[start:start + self.max_batch])

    def _due(self) -> List[DecodeRequest]:
        with self._lock:
            sessions = list(self._sessions)
        return [r for r in (s.next_request() for s in sessions) if r is not None]

    def _decode(self, requests: List[DecodeRequest]) -> None:
        try:
            outcomes = self.decoder.decode(requests)
        except Exception as error:  # a decoder bug must not stop every session's captions
            log.exception("live decoder failed")
            outcomes = [error] * len(requests)
        for request, outcome in zip(requests, outcomes):
            try:
                if isinstance(outcome, DecodeResult):
                    request.session.apply(request, outcome)
                else:
                    request.session.abandon(request, outcome)
            except Exception as error:
                log.exception("live session failed to take its decode")
                request.session.abandon(request, error)
