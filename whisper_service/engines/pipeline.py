"""Where a run's time goes: seconds per stage, measured inside the engine.

Stages are timed where their work happens, and on a GPU the calling thread's stream is
synchronised at each stage's edges, so a stage's seconds include the kernels it queued. Stages that run
in other threads (voice activity detection, the next batch's mel) overlap the decoding:
their seconds are busy time, and `handover` is what the decoding actually waited for them.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Generic, Iterator, Optional, Tuple, TypeVar

import torch

Item = TypeVar("Item")
PUT_POLL_SECONDS = 0.1  # how often a producer waiting on a full queue looks for a stop
_ITEM, _END, _ERROR = "item", "end", "error"

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

    @contextmanager
    def recording(self) -> Iterator["StageTimes"]:
        """Within the block, in this thread, current_times() is this object: code deep in
        the engine (the decoder) adds its stages here without being handed it."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def as_dict(self) -> Dict[str, float]:
        with self._lock:
            return {stage: self.seconds[stage] for stage in STAGES if stage in self.seconds}

    def summary(self) -> str:
        """'vad 1.20 s, mel 0.31 s, ...' in pipeline order."""
        return ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in self.as_dict().items())

    def _synchronize(self) -> None:
        # the calling thread's stream only: a producer thread on its own stream must not
        # wait for the decoder's queued work
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


_current: "contextvars.ContextVar[Optional[StageTimes]]" = contextvars.ContextVar(
    "whisper_service_stage_times", default=None
)


def current_times(device: Optional[torch.device] = None) -> StageTimes:
    """The StageTimes being recorded in this thread, or a fresh one nobody reads."""
    times = _current.get()
    return times if times is not None else StageTimes(device)


class Prefetcher(Generic[Item]):
    """Runs an iterator in a background thread, `depth` items ahead of the consumer: the
    next batch's voice activity detection and mel are made while this one decodes.

    The iterator is advanced and closed in its own thread only; an exception it raises is
    raised to the consumer in its place. Use as a context manager: leaving stops the
    thread (after the item it is making) and closes the iterator there."""

    def __init__(self, items: Iterator[Item], depth: int = 1, name: str = "prefetch"):
        self._items = items
        self._queue: "queue.Queue[Tuple[str, object]]" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __enter__(self) -> "Prefetcher[Item]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Item]:
        while True:
            kind, value = self._queue.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            with contextlib.closing(self._items):  # type: ignore[arg-type]
                for item in self._items:
                    if not self._put((_ITEM, item)):
                        return
        except BaseException as error:  # handed to the consumer, raised there
            self._put((_ERROR, error))
            return
        self._put((_END, None))

    def _put(self, entry: Tuple[str, object]) -> bool:
        """Queue an entry unless the consumer has gone; False once it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=PUT_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
