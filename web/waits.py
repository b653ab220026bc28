"""How long a queued job will wait, as the pages can tell: its place in the queue times
the typical run time of the jobs the pages saw finish lately in this process."""

from __future__ import annotations

import statistics
import threading
from collections import OrderedDict
from typing import Optional

from whisper_service.jobs import Job, JobState

RUNS_REMEMBERED = 20  # the most recent finished jobs the typical run time is taken from


class RecentRuns:
    def __init__(self) -> None:
        self._seconds: "OrderedDict[str, float]" = OrderedDict()  # job id -> run time
        self._lock = threading.Lock()

    def record(self, job: Job) -> None:
        """Remember how long a done job ran; other jobs are ignored."""
        if job.state != JobState.DONE or job.started_at is None or job.finished_at is None:
            return
        with self._lock:
            self._seconds[job.id] = max(0.0, job.finished_at - job.started_at)
            self._seconds.move_to_end(job.id)
            while len(self._seconds) > RUNS_REMEMBERED:
                self._seconds.popitem(last=False)

    def wait_seconds(self, position: Optional[int]) -> Optional[float]:
        """About how long until a job at this place in the queue is done; None before any
        run was seen."""
        with self._lock:
            if not position or not self._seconds:
                return None
            return position * statistics.median(self._seconds.values())
