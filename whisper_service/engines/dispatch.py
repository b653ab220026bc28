"""Audio + options + loaded model -> Transcript, with progress.

Two engines, chosen per request (`options.mode`; by default batched on a GPU, sequential
on the CPU):
- sequential (sequential.py): openai-whisper's own long-form algorithm (`whisper.transcribe`), so results
  are exactly the library's, each window conditioned on the text before it;
- batched (batched.py): speech windows cut at pauses, decoded many at once, each
  window's tokens equal to `whisper.decode`'s for it; several files with the same options
  can be transcribed together, their windows sharing batches.
What we add to both: language probabilities, progress reporting (with the segments that are
final so far, for text shown before the end) and a typed result.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE

from whisper_service.engines import batched, sequential, short_clips
from whisper_service.engines.batched import FileRequest, windows_per_batch
from whisper_service.errors import BadOption, ModelBusy
from whisper_service.models import LoadedModel
from whisper_service.options import TranscribeOptions
from whisper_service.engines.pipeline import StageTimes
from whisper_service.progress import Progress, ProgressCallback, finished_segments
from whisper_service.transcript import Segment, Transcript


BUSY_RETRY_SECONDS = 60  # what a caller refused by a busy model is told to wait


def detect_language(
    loaded: LoadedModel, audio: np.ndarray, wait: Optional[float] = None
) -> Dict[str, float]:
    """Probability of each language from the first 30 s, highest first. wait: seconds to
    wait for the model while it works on something else (None: as long as it takes);
    past that, ModelBusy."""
    if not loaded.is_multilingual:
        return {"en": 1.0}
    mel = _log_mel(loaded, audio)
    if not loaded.lock.acquire(timeout=-1 if wait is None else wait):
        raise ModelBusy(f"model {loaded.name!r} is busy with a long transcription; try again "
                        "in a minute", retry_after=BUSY_RETRY_SECONDS)
    try:
        probabilities = _language_probabilities(loaded, mel)
    finally:
        loaded.lock.release()
    return dict(sorted(probabilities.items(), key=lambda item: -item[1]))


def transcribe(
    loaded: LoadedModel,
    audio: np.ndarray,
    options: TranscribeOptions,
    progress: Optional[ProgressCallback] = None,
    batch_windows: Optional[int] = None,
    times: Optional[StageTimes] = None,
) -> Transcript:
    """Transcribe (or translate) 16 kHz mono audio. batch_windows: windows decoded together
    in batched mode; None chooses from free GPU memory. times: where the batched engine
    adds each stage's seconds. A clip too short to hold more than a word is decoded once
    (short_clips), without the temperature fallback."""
    options = short_clips.for_clip(options, len(audio) / SAMPLE_RATE)
    if mode_of(loaded, options) == "batched":
        outcome = transcribe_together(loaded, [FileRequest(audio, options, progress)],
                                      batch_windows, times)[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    _check_language(loaded, options)
    with loaded.lock:
        language, probability = _language(loaded, audio, options)
        kwargs = options.decode_kwargs()
        kwargs.update(language=language, fp16=loaded.fp16)
        result = sequential.transcribe(loaded, audio, kwargs, progress)
    if progress is not None:
        progress(Progress(len(audio) / SAMPLE_RATE, len(audio) / SAMPLE_RATE,
                          finished_segments(result["segments"])))
    return _transcript(loaded, audio, options, language, probability, result["text"],
                       result["segments"])


def transcribe_together(
    loaded: LoadedModel, requests: Sequence[FileRequest], batch_windows: Optional[int] = None,
    times: Optional[StageTimes] = None,
) -> List[Union[Transcript, Exception]]:
    """Several files in batched mode, their windows sharing batches: for each, its
    Transcript or the error that stopped it alone (a language the model cannot do, its
    progress callback raising). Their shared_options must be equal."""
    outcomes: List[Union[Transcript, Exception, None]] = [None] * len(requests)
    # a short clip decodes at one temperature (short_clips): it shares batches only with
    # files whose schedule is the same
    requests = [replace(r, options=short_clips.for_clip(r.options, len(r.audio) / SAMPLE_RATE))
                for r in requests]
    by_language: Dict[Tuple[str, Tuple[float, ...]], List[int]] = defaultdict(list)
    probabilities: Dict[int, float] = {}
    for index, request in enumerate(requests):
        try:
            _check_language(loaded, request.options)
        except BadOption as error:
            outcomes[index] = error
            continue
        with loaded.lock:
            language, probabilities[index] = _language(loaded, request.audio, request.options)
        by_language[language, request.options.temperature].append(index)
    # the model's lock is taken batch by batch (batched.py), so a language detection
    # asked for meanwhile waits for one batch, not for the whole run
    for (language, _), indexes in by_language.items():
        group = [requests[i] for i in indexes]
        size = batch_windows or windows_per_batch(loaded, group[0].options.beam_size)
        decoded = batched.decode_files(loaded, group, language, size, times)
        for index, request, result in zip(indexes, group, decoded):
            if isinstance(result, Exception):
                outcomes[index] = result
                continue
            text, segments = result
            outcomes[index] = _transcript(loaded, request.audio, request.options, language,
                                          probabilities[index], text, segments)
    for index, request in enumerate(requests):
        if isinstance(outcomes[index], Transcript) and request.progress is not None:
            seconds = len(request.audio) / SAMPLE_RATE
            try:
                request.progress(Progress(seconds, seconds,
                                          finished_segments(outcomes[index].segments)))
            except Exception as error:
                outcomes[index] = error
    return outcomes


def _check_language(loaded: LoadedModel, options: TranscribeOptions) -> None:
    if not loaded.is_multilingual and options.language not in (None, "en"):
        raise BadOption(
            "language",
            f"model {loaded.name!r} is English-only; leave language on auto or choose 'en'",
        )


def _language(loaded: LoadedModel, audio: np.ndarray, options: TranscribeOptions):
    """(language, probability): as asked (probability 1), else detected from the first 30 s
    as whisper.transcribe() would, keeping the probability."""
    if options.language is not None or not loaded.is_multilingual:
        return options.language or "en", 1.0
    probabilities = _language_probabilities(loaded, _log_mel(loaded, audio))
    language = max(probabilities, key=probabilities.get)
    return language, probabilities[language]


def _transcript(loaded: LoadedModel, audio: np.ndarray, options: TranscribeOptions,
                language: str, probability: float, text: str, segments) -> Transcript:
    return Transcript(
        task=options.task,
        language=language,
        language_probability=probability,
        duration=len(audio) / SAMPLE_RATE,
        model=loaded.name,
        text=text,
        segments=tuple(Segment.from_dict(s) for s in segments),
    )


def mode_of(loaded: LoadedModel, options: TranscribeOptions) -> str:
    return resolved_mode(options, loaded.device)


def resolved_mode(options: TranscribeOptions, device: torch.device) -> str:
    """The engine for this request: as asked, else batched on a GPU and sequential on CPU."""
    return options.mode or ("batched" if device.type == "cuda" else "sequential")


def _log_mel(loaded: LoadedModel, audio: np.ndarray) -> torch.Tensor:
    """The mel whisper.transcribe() detects the language from: padded and normalised over
    the whole file, on the CPU whatever the model's device. A GPU's FFT rounds differently,
    and where a model's language probabilities lie close together (random weights, short
    or unclear speech) that is enough to pick another language, and with it another text."""
    return whisper.log_mel_spectrogram(audio, loaded.model.dims.n_mels, padding=N_SAMPLES)


def _language_probabilities(loaded: LoadedModel, mel: torch.Tensor) -> Dict[str, float]:
    dtype = torch.float16 if loaded.fp16 else torch.float32
    first_window = whisper.pad_or_trim(mel, N_FRAMES).to(loaded.device).to(dtype)
    _, probabilities = loaded.model.detect_language(first_window)
    return {code: float(p) for code, p in probabilities.items()}
