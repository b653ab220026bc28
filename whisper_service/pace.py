"""How fast this host transcribes, as measured here: the time left of a running job.

A job's estimate comes from the real-time factor (processing seconds per second of audio)
of the most recent stretches this process decoded with the same model and the decoding
options that change the pace (task, beam, temperatures, engine, word timing, speakers).
Each progress report closes a stretch: the audio it covered and the seconds it took. The
first report of a job opens its first stretch, so loading the model, decoding the file
and detecting its language count toward no rate (the first estimate of the first job on
a host comes with its first window, not from a guess). A job that runs slower or faster
than the ones before moves the factor within a few stretches: the estimate is corrected
as its windows finish.

    pace = Pace()
    left = TimeLeft(pace, pace_key("small", options))
    left.update(done_seconds=30.0, total_seconds=300.0)  # None until a stretch is measured
    -> 270 * factor  (seconds)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Hashable, Optional, Tuple

from whisper_service.options import TranscribeOptions

RECENT_STRETCHES = 12  # the stretches a factor is taken from, newest kept
# a stretch shorter than this (in audio seconds) waits to be joined with the next: a
# report a few milliseconds after another says nothing about the pace
MIN_STRETCH_SECONDS = 0.5

PaceKey = Tuple[Hashable, ...]


def pace_key(model: Optional[str], options: TranscribeOptions) -> PaceKey:
    """What the pace depends on: the model and the options that change the work per second."""
    return (model, options.task, options.beam_size, options.best_of, tuple(options.temperature),
            options.mode, options.word_timestamps, options.diarize)


class Pace:
    """The real-time factors this process measured, per PaceKey (thread-safe: every
    consumer thread of a process shares one)."""

    def __init__(self, recent: int = RECENT_STRETCHES):
        self._recent = recent
        self._stretches: Dict[PaceKey, Deque[Tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def record(self, key: PaceKey, audio_seconds: float, processing_seconds: float) -> None:
        """A stretch of `audio_seconds` that took `processing_seconds` to transcribe."""
        if audio_seconds <= 0 or processing_seconds < 0:
            return
        with self._lock:
            stretches = self._stretches.setdefault(key, deque(maxlen=self._recent))
            stretches.append((audio_seconds, processing_seconds))

    def usual_audio(self, key: PaceKey) -> float:
        """The mean audio seconds of the recent stretches (0 before any)."""
        with self._lock:
            stretches = list(self._stretches.get(key, ()))
        return sum(a for a, _ in stretches) / len(stretches) if stretches else 0.0

    def factor(self, key: PaceKey, extra: Optional[Tuple[float, float]] = None) -> Optional[float]:
        """Processing seconds per audio second over the recent stretches (and `extra`, a
        stretch (audio, seconds) under way); None before any."""
        with self._lock:
            stretches = list(self._stretches.get(key, ()))
        if extra is not None:
            stretches.append(extra)
        audio = sum(a for a, _ in stretches)
        if audio <= 0:
            return None
        return sum(p for _, p in stretches) / audio


class TimeLeft:
    """One running job's estimate, from its progress reports and the host's pace."""

    def __init__(self, pace: Pace, key: PaceKey, clock: Callable[[], float] = time.monotonic):
        self._pace = pace
        self._key = key
        self._clock = clock
        self._mark: Optional[Tuple[float, float]] = None  # (clock, done seconds) a stretch began

    def update(self, done_seconds: float, total_seconds: float) -> Optional[float]:
        """Seconds left after a report that `done_seconds` of `total_seconds` are done;
        None while nothing of this key was ever measured here."""
        now = self._clock()
        if self._mark is None:
            self._mark = (now, done_seconds)
        else:
            began, done_before = self._mark
            covered = done_seconds - done_before
            if covered >= MIN_STRETCH_SECONDS or (covered > 0 and done_seconds >= total_seconds):
                self._pace.record(self._key, covered, now - began)
                self._mark = (now, done_seconds)
        factor = self._pace.factor(self._key, self._open_stretch(now, done_seconds))
        if factor is None:
            return None
        return max(0.0, total_seconds - done_seconds) * factor

    def _open_stretch(self, now: float, done_seconds: float) -> Optional[Tuple[float, float]]:
        """The stretch begun and not yet recorded (audio, seconds), when it has taken longer
        than the pace gives a usual stretch: a window decoded again at a higher
        temperature, a slower passage. It counts then, so the estimate grows rather than
        runs out."""
        began, done_before = self._mark
        covered, seconds = max(0.0, done_seconds - done_before), now - began
        factor = self._pace.factor(self._key)
        if factor is None or seconds <= factor * max(covered, self._pace.usual_audio(self._key)):
            return None
        return covered, seconds
