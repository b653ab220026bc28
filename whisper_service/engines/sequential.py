"""The sequential engine: openai-whisper's own long-form algorithm (`whisper.transcribe`),
so results are exactly the library's, each window conditioned on the text before it.

What we add is progress: where each window starts (from the tqdm bar whisper.transcribe()
draws, replaced here), how far the decoder is inside a window (window_progress), and the
segments of the windows already done.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import sys
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import whisper
from whisper.audio import FRAMES_PER_SECOND, N_SAMPLES, SAMPLE_RATE
from whisper.tokenizer import get_tokenizer

from whisper_service.engines import window_progress
from whisper_service.models import LoadedModel
from whisper_service.progress import FinishedSegment, Progress, ProgressCallback, finished_segments

WINDOW_SECONDS = N_SAMPLES / SAMPLE_RATE  # the most audio one window holds


def transcribe(loaded: LoadedModel, audio: np.ndarray, kwargs: Dict[str, Any],
               progress: Optional[ProgressCallback]) -> dict:
    """whisper.transcribe(model, audio, **kwargs)'s result, reporting progress on the way.
    The caller holds the model's lock."""
    run = _SequentialProgress(progress, len(audio) / SAMPLE_RATE) if progress else None
    with run.watching(loaded) if run else contextlib.nullcontext():
        return whisper.transcribe(loaded.model, audio, verbose=None, **kwargs)


# The progress of the sequential transcription running in this thread (each has its own).
_current_run: contextvars.ContextVar[Optional["_SequentialProgress"]] = contextvars.ContextVar(
    "whisper_service_progress", default=None
)


class _SequentialProgress:
    """Progress of one whisper.transcribe() run: where each window starts, from the bar it
    draws, and inside a window how far its decoder's timestamps reach (window_progress);
    with it the segments of the windows done, final once whisper.transcribe() moved on.
    Never moves back (a window decoded again at a higher temperature starts over)."""

    def __init__(self, callback: ProgressCallback, total_seconds: float):
        self.callback = callback
        self.total = total_seconds
        self.window_start = 0.0
        self.reported = 0.0
        self.watch: Optional[window_progress.Watch] = None
        self.segments: Tuple[FinishedSegment, ...] = ()
        self.segments_seen = 0  # of whisper.transcribe()'s list, which only grows

    @contextmanager
    def watching(self, loaded: LoadedModel) -> Iterator[None]:
        model = loaded.model
        tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
        with window_progress.watching(self.inside, tokenizer.timestamp_begin) as self.watch:
            token = _current_run.set(self)
            try:
                yield
            finally:
                _current_run.reset(token)

    def window_done(self, seconds: float, segments: Optional[List[dict]] = None) -> None:
        """whisper.transcribe() moved on to the window starting at `seconds`; `segments`:
        its list of every segment so far (those of the windows before are final)."""
        if segments is not None and len(segments) > self.segments_seen:
            self.segments += finished_segments(segments[self.segments_seen:])
            self.segments_seen = len(segments)
        self.window_start = seconds
        if self.watch is not None:
            self.watch.restart()
        self._send(seconds)

    def inside(self, reached: Sequence[float]) -> None:
        window = min(WINDOW_SECONDS, self.total - self.window_start)
        self._send(self.window_start + window_progress.within(reached[0], window))

    def _send(self, seconds: float) -> None:
        self.reported = min(self.total, max(self.reported, seconds))
        self.callback(Progress(self.reported, self.total, self.segments))


class _ProgressBar:
    """Stands in for the tqdm bar whisper.transcribe() draws, counting mel frames, and
    tells the current thread's run where the next window starts instead of drawing, and
    which segments are done: whisper.transcribe() updates its bar right after it added a
    window's segments to its list `all_segments`, read from its frame (the one place they
    are seen before it returns; a version that names the list otherwise only loses the
    early text, not the progress)."""

    def __init__(self, total: int = 0, **_ignored):
        self.total = total
        self.done = 0

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, frames: int) -> None:
        self.done = min(self.total, max(0, self.done + frames))
        run = _current_run.get()
        if run is not None:
            segments = sys._getframe(1).f_locals.get("all_segments")
            run.window_done(self.done / FRAMES_PER_SECOND,
                            segments if isinstance(segments, list) else None)


class _ProgressBars:
    tqdm = _ProgressBar


# whisper.transcribe() reaches its bar as `tqdm.tqdm(...)`; the name `whisper.transcribe`
# is the function, so the module is looked up by its full name.
importlib.import_module("whisper.transcribe").tqdm = _ProgressBars
