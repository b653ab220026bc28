"""How a consumer waits out a job database that is away: longer waits the longer it lasts,
one log line when it starts and one when it ends (not one per try)."""

from __future__ import annotations

import logging

from whisper_service.errors import StoreUnavailable

log = logging.getLogger(__name__)

FACTOR = 2.0  # each failed try in a row waits this much longer than the one before


class Backoff:
    """The wait after each failed try of one loop: first, first*2, ... at most `most`."""

    def __init__(self, what: str, first: float, most: float):
        self._what = what  # who waits, for the log ("job consumer jobs-0")
        self._first = first  # seconds after the first failure
        self._most = most  # seconds: the longest wait, so the end is noticed soon enough
        self.failures = 0  # tries failed in a row

    def failed(self, error: BaseException) -> float:
        """Note a failed try; the seconds to wait before the next. Logged the first time."""
        if self.failures == 0:
            log.warning("%s: the job store is away (%s); trying again, waiting up to %g s "
                        "between tries", self._what, error, self._most,
                        # StoreUnavailable says it all; anything else keeps its traceback
                        exc_info=not isinstance(error, StoreUnavailable))
        self.failures += 1
        return min(self._most, self._first * FACTOR ** (self.failures - 1))

    def succeeded(self) -> None:
        """A try worked: the next failure starts from the first wait again."""
        if self.failures:
            log.warning("%s: the job store answers again, after %d failed tries; resuming",
                        self._what, self.failures)
        self.failures = 0

