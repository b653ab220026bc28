"""Audio + options + loaded model -> Transcript, with progress.

This is the only module that calls into the model. The sequential engine is
openai-whisper's own long-form algorithm (`whisper.transcribe`), so its results are
exactly the library's; what we add is language probabilities, progress reporting and
a typed result.
"""

from __future__ import annotations

import contextvars
import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch
import whisper
from whisper.audio import FRAMES_PER_SECOND, N_FRAMES, N_SAMPLES, SAMPLE_RATE

from .errors import BadOption
from .models import LoadedModel
from .options import TranscribeOptions
from .transcript import Segment, Transcript


@dataclass(frozen=True)
class Progress:
    done_seconds: float  # audio seconds transcribed so far
    total_seconds: float

    @property
    def fraction(self) -> float:
        return 1.0 if self.total_seconds <= 0 else min(1.0, self.done_seconds / self.total_seconds)


ProgressCallback = Callable[[Progress], None]

# The callback of the transcription running in this thread (each thread has its own).
_progress_callback: contextvars.ContextVar[Optional[ProgressCallback]] = contextvars.ContextVar(
    "whisper_service_progress", default=None
)


class _ProgressBar:
    """Stands in for the tqdm bar whisper.transcribe() draws, counting mel frames, and
    forwards its updates to the current thread's callback instead of the terminal."""

    def __init__(self, total: int = 0, **_ignored):
        self.total = total
        self.done = 0

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, frames: int) -> None:
        self.done = min(self.total, max(0, self.done + frames))
        callback = _progress_callback.get()
        if callback is not None:
            callback(Progress(self.done / FRAMES_PER_SECOND, self.total / FRAMES_PER_SECOND))


class _ProgressBars:
    tqdm = _ProgressBar


# whisper.transcribe() reaches its bar as `tqdm.tqdm(...)`; the name `whisper.transcribe`
# is the function, so the module is looked up by its full name.
importlib.import_module("whisper.transcribe").tqdm = _ProgressBars


def detect_language(loaded: LoadedModel, audio: np.ndarray) -> Dict[str, float]:
    """Probability of each language from the first 30 s, highest first."""
    if not loaded.is_multilingual:
        return {"en": 1.0}
    with loaded.lock:
        probabilities = _language_probabilities(loaded, _log_mel(loaded, audio))
    return dict(sorted(probabilities.items(), key=lambda item: -item[1]))


def transcribe(
    loaded: LoadedModel,
    audio: np.ndarray,
    options: TranscribeOptions,
    progress: Optional[ProgressCallback] = None,
) -> Transcript:
    duration = len(audio) / SAMPLE_RATE
    if not loaded.is_multilingual and options.language not in (None, "en"):
        raise BadOption(
            "language",
            f"model {loaded.name!r} is English-only; leave language on auto or choose 'en'",
        )
    with loaded.lock:
        language, probability = options.language, 1.0
        if language is None and loaded.is_multilingual:
            # the same detection whisper.transcribe() would run, keeping the probability
            probabilities = _language_probabilities(loaded, _log_mel(loaded, audio))
            language = max(probabilities, key=probabilities.get)
            probability = probabilities[language]
        kwargs = options.decode_kwargs()
        kwargs.update(language=language or "en", fp16=loaded.fp16)
        token = _progress_callback.set(progress)
        try:
            result = whisper.transcribe(loaded.model, audio, verbose=None, **kwargs)
        finally:
            _progress_callback.reset(token)
    if progress is not None:
        progress(Progress(duration, duration))
    return Transcript(
        task=options.task,
        language=result["language"],
        language_probability=probability,
        duration=duration,
        model=loaded.name,
        text=result["text"],
        segments=tuple(Segment.from_dict(s) for s in result["segments"]),
    )


def _log_mel(loaded: LoadedModel, audio: np.ndarray) -> torch.Tensor:
    # padded and normalised over the whole file, exactly as whisper.transcribe() does
    return whisper.log_mel_spectrogram(
        audio, loaded.model.dims.n_mels, padding=N_SAMPLES, device=loaded.device
    )


def _language_probabilities(loaded: LoadedModel, mel: torch.Tensor) -> Dict[str, float]:
    dtype = torch.float16 if loaded.fp16 else torch.float32
    first_window = whisper.pad_or_trim(mel, N_FRAMES).to(loaded.device).to(dtype)
    _, probabilities = loaded.model.detect_language(first_window)
    return {code: float(p) for code, p in probabilities.items()}
