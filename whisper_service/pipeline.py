"""Where a run's time goes: seconds per stage, measured inside the engine.

Stages are timed where their work happens, and on a GPU the device is synchronised at
each stage's edges, so a stage's seconds include the kernels it queued. Stages that run
in other threads (voice activity detection, the next batch's mel) overlap the decoding:
their seconds are busy time, and `handover` is what the decoding actually waited for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import torch

log = logging.getLogger(__name__)

# in the order a window goes through them; the first and the last are timed outside the
# engine (the service decodes the file, the web layer answers)
STAGES = ("ffmpeg", "vad", "mel", "encoder", "decoder", "handover", "segments", "http")


class StageTimes:
    """Seconds per stage of one run; safe to add to from several threads."""

    def __init__(self, device: Optional[torch.device] = None):
        self.device = device
        self.seconds: Dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        with self._lock:
            self.seconds[stage] += seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as `name` (the device's queued work included)."""
        self._synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.add(name, time.perf_counter() - started)

    def merge(self, other: "StageTimes") -> None:
        for stage, seconds in other.as_dict().items():
            self.add(stage, seconds)

    def as_dict(self) -> Dict[str, float]:
        with self._lock:
            return {stage: self.seconds[stage] for stage in STAGES if stage in self.seconds}

    def summary(self) -> str:
        """'vad 1.20 s, mel 0.31 s, ...' in pipeline order."""
        return ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in self.as_dict().items())

    def _synchronize(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
