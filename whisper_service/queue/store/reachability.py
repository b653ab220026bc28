"""Whether a store's database answers: the one place where a backend turns "cannot reach it"
or "locked past the timeout" into StoreUnavailable, logging once per outage.

Each backend calls unavailable() from its connection helper (never from each method) and
answered() when a connection worked, so an outage of any length is two log lines per
process: the cause when it starts, its length when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from whisper_service.errors import StoreUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5  # what a client refused during an outage is told to wait


class Reachability:
    """One store's view of its database: away since when (None: answering)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic):
        self._name = name  # the backend, for the log ("PostgreSQL", "SQLite")
        self._clock = clock
        self._lock = threading.Lock()
        self._away_since: Optional[float] = None

    @property
    def away(self) -> bool:
        return self._away_since is not None

    def unavailable(self, reason: str, cause: BaseException) -> StoreUnavailable:
        """The error to raise (from cause) for a failed call; the first of an outage is
        logged with the driver's own words, which name what an operator must look at."""
        with self._lock:
            first = self._away_since is None
            if first:
                self._away_since = self._clock()
        if first:
            log.warning("the job database (%s) is unreachable (%s): %s; requests get 503 "
                        "until it answers", self._name, reason, cause)
        return StoreUnavailable(reason, RETRY_AFTER_SECONDS)

    def answered(self) -> None:
        """A call reached the database: an outage, if there was one, is over."""
        if self._away_since is None:  # the common case: no lock taken
            return
        with self._lock:
            since, self._away_since = self._away_since, None
        if since is not None:
            log.warning("the job database (%s) answers again, after %.1f s", self._name,
                        self._clock() - since)
