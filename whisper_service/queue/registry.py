"""The worker registry's heartbeat: a consumer process says "alive" on a timer of its own.

/readyz and /metrics (whisper_workers) count the consumers that beat within two leases; an
autoscaler reads them. The beat used to run between jobs, so a worker busy with one job
for longer than that vanished from the fleet. Here it runs in its own thread from start()
to stop(), whatever the consumers are doing.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Optional

from whisper_service.queue.store.base import JobStore

log = logging.getLogger(__name__)


class RegistryBeat:
    """Beats `name` into the store's worker registry every `every` seconds until stopped.

    info() is called at each beat (jobs running, GPU use), so the registry stays current.
    A beat the store cannot take is skipped: the store logs its outage once, and the next
    beat tries again.
    """

    def __init__(self, store: JobStore, name: str, info: Callable[[], Dict[str, object]],
                 every: float):
        self._store = store
        self._name = name  # host, pid and the queue's token: one entry per started queue
        self._info = info
        self._every = every  # seconds; a quarter of a lease, so three beats may be missed
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Beat now (so the worker is listed once start() returns), then on the timer."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="worker-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def beat(self) -> bool:
        """One beat; whether the store took it."""
        try:
            self._store.beat_worker(self._name, self._info())
            return True
        except self._store.errors as error:
            log.debug("worker registry beat of %s not written: %s", self._name, error)
            return False

    def _run(self) -> None:
        while not self._stopping.wait(self._every):
            self.beat()
