"""How much audio a live session takes, and what it drops: the session's backpressure.

A live stream is spoken: a client may send ahead of real time (a network that stalls and
catches up, a file streamed a little fast), but one that sends in a tight loop would fill
the server with audio faster than anything can decode it. An Intake admits each frame or
drops it, for one of two reasons:

- `too_fast`: the stream is ahead of the clock. A token bucket holds `burst_seconds` of
  audio and refills at `max_speed` seconds of audio per second; a frame is taken when the
  bucket holds all of it. A real-time client (1x) never meets it, nor one that catches up
  after a stall of up to `burst_seconds`.
- `behind`: the decoder is `max_backlog_seconds` of audio behind this session (the audio
  waiting for its decode, LiveSession.backlog_seconds). Held audio is what a session's
  memory and the wait for its last words after `stop` grow with; this bounds both.

A dropped frame is neither decoded nor recorded (the recording and the transcript's times
are the audio taken). Drops are reported, at most once per REPORT_SECONDS, as a Dropped
with the seconds dropped since the last report, so a client that never slows down gets a
steady trickle of reports rather than one per frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

REPORT_SECONDS = 1.0  # drops are reported at most this often
BURST_SECONDS = 10.0  # audio a stream may be ahead of the clock at once


@dataclass(frozen=True)
class IntakeLimits:
    max_speed: float = 4.0  # seconds of audio taken per second, after the burst
    burst_seconds: float = BURST_SECONDS  # audio taken at once after a pause (the bucket)
    max_backlog_seconds: float = 30.0  # audio waiting for the decoder; past it, frames drop


@dataclass(frozen=True)
class Dropped:
    reason: str  # "too_fast" (the client) or "behind" (the decoder)
    seconds: float  # audio dropped since the last report
    total_seconds: float  # audio dropped in the whole session
    message: str  # for people: what was dropped, why, and the limit


class Intake:
    def __init__(self, limits: IntakeLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._tokens = limits.burst_seconds  # audio that may come now
        self._filled_at = clock()
        self._unreported = 0.0
        self._reason = ""
        self._reported_at: Optional[float] = None
        self.dropped_seconds = 0.0  # in the whole session

    def admit(self, seconds: float, backlog_seconds: float) -> bool:
        """Whether a frame of `seconds` of audio is taken, given the audio now waiting for
        the decoder; a frame refused counts as dropped."""
        now = self._clock()
        limits = self.limits
        self._tokens = min(limits.burst_seconds,
                           self._tokens + (now - self._filled_at) * limits.max_speed)
        self._filled_at = now
        if backlog_seconds >= limits.max_backlog_seconds:
            return self._drop(seconds, "behind")
        if seconds > self._tokens:
            return self._drop(seconds, "too_fast")
        self._tokens -= seconds
        return True

    def report(self) -> Optional[Dropped]:
        """What was dropped since the last report, if anything was and the last report is
        at least REPORT_SECONDS old."""
        now = self._clock()
        if not self._unreported or (self._reported_at is not None
                                    and now - self._reported_at < REPORT_SECONDS):
            return None
        seconds, self._unreported, self._reported_at = self._unreported, 0.0, now
        return Dropped(self._reason, seconds, self.dropped_seconds, self._message(seconds))

    def _drop(self, seconds: float, reason: str) -> bool:
        self._unreported += seconds
        self.dropped_seconds += seconds
        self._reason = reason
        return False

    def _message(self, seconds: float) -> str:
        limits = self.limits
        if self._reason == "behind":
            why = (f"the decoder is {limits.max_backlog_seconds:g} s of audio behind this "
                   "session (the server is overloaded)")
        else:
            why = (f"audio is taken at most {limits.max_speed:g}x as fast as real time "
                   f"(after {limits.burst_seconds:g} s ahead); send it as it is spoken")
        return (f"{seconds:.2f} s of audio dropped ({self.dropped_seconds:.2f} s in all): "
                f"{why}. Dropped audio is neither transcribed nor recorded")
