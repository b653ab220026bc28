"""How many wrong API keys one client address may send: a sliding window per address.

Every key check (the sign-in page, /api, /v1, /invocations, /metrics, live WebSockets)
counts its wrong keys here, in one limiter per server process, so a guesser cannot multiply
its tries by spreading them over the APIs. Past the limit, the address gets 429 with
Retry-After for every key check until its oldest failure leaves the window; right keys
never count. Memory stays bounded: at most MAX_CLIENTS addresses, each holding at most
`attempts` times; the least recently seen address is forgotten first.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Deque

from werkzeug.exceptions import TooManyRequests

MAX_CLIENTS = 10_000  # addresses remembered at once; the least recently seen goes first


@dataclass(frozen=True)
class Limit:
    attempts: int  # failures an address may have within the window; the next try is refused
    window: float  # seconds a failure counts for


class TooManyKeyFailures(TooManyRequests):
    """429 with Retry-After: this address sent too many wrong keys lately."""

    def __init__(self, retry_after: float, limit: Limit):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            f"Too many wrong API keys from this address ({limit.attempts} within "
            f"{limit.window:g} s); try again in {seconds} s.", retry_after=seconds)


class FailureLimiter:
    """Failures per client address in a sliding window. Thread-safe; `clock` is monotonic
    seconds (a FakeClock in tests)."""

    def __init__(self, limit: Limit, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS):
        self.limit = limit
        self.clock = clock
        self.max_clients = max_clients
        self._failures: "OrderedDict[str, Deque[float]]" = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds until `client` may try a key again; 0 when it may now."""
        with self._lock:
            times = self._recent(client)
            if times is None or len(times) < self.limit.attempts:
                return 0.0
            return max(0.0, times[0] + self.limit.window - self.clock())

    def failed(self, client: str) -> int:
        """Count a wrong key from `client`; the failures now in its window."""
        with self._lock:
            times = self._recent(client)
            if times is None:
                times = self._failures[client] = deque(maxlen=self.limit.attempts)
                while len(self._failures) > self.max_clients:
                    self._failures.popitem(last=False)
            times.append(self.clock())
            self._failures.move_to_end(client)
            return len(times)

    def _recent(self, client: str):
        """The client's failures still in the window (older ones dropped), or None."""
        times = self._failures.get(client)
        if times is None:
            return None
        cutoff = self.clock() - self.limit.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times
