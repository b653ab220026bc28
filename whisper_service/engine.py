"""Audio + options + loaded model -> Transcript, with progress.

Two engines, chosen per request (`options.mode`; by default batched on a GPU, sequential
on the CPU):
- sequential: openai-whisper's own long-form algorithm (`whisper.transcribe`), so results
  are exactly the library's, each window conditioned on the text before it;
- batched: voice activity detection cuts the speech into windows of at most 30 s at
  pauses (silence yields no window, so no invented text), and `batched.decode_batch`
  decodes many windows at once; each window's tokens equal `whisper.decode`'s for it.
  Windows are independent: the initial prompt is given to each, previous text is not.
  Batches are decoded as the detector delivers windows, so detection of the rest of a
  long file overlaps decoding.
What we add to both: language probabilities, progress reporting and a typed result.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
import whisper
from whisper.audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE

from whisper.timing import add_word_timestamps
from whisper.tokenizer import get_tokenizer

from .batched import decode_batch
from .errors import BadOption
from .models import LoadedModel
from .options import TranscribeOptions
from .transcript import Segment, Transcript
from .vad import Window, iter_speech_windows

TIME_PRECISION = 0.02  # seconds per timestamp token
BATCH_WINDOWS_CPU = 8  # more gains little on a few cores and delays the first progress
MAX_BATCH_WINDOWS = 64  # past this the GPU is busy anyway; bigger batches only add latency
GPU_MEMORY_SHARE = 0.7  # of the free memory; the rest absorbs what the estimate leaves out
ENCODER_ACTIVATIONS = 8  # encoder tensors alive at once, in (audio frames x width): MLP, q/k/v


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
    batch_windows: Optional[int] = None,
) -> Transcript:
    """Transcribe (or translate) 16 kHz mono audio. batch_windows: windows decoded together
    in batched mode; None chooses from free GPU memory."""
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
        language = language or "en"
        if mode_of(loaded, options) == "batched":
            size = batch_windows or windows_per_batch(loaded, options.beam_size)
            text, segments = _batched(loaded, audio, options, language, progress, size)
        else:
            kwargs = options.decode_kwargs()
            kwargs.update(language=language, fp16=loaded.fp16)
            token = _progress_callback.set(progress)
            try:
                result = whisper.transcribe(loaded.model, audio, verbose=None, **kwargs)
            finally:
                _progress_callback.reset(token)
            text, segments = result["text"], result["segments"]
    if progress is not None:
        progress(Progress(duration, duration))
    return Transcript(
        task=options.task,
        language=language,
        language_probability=probability,
        duration=duration,
        model=loaded.name,
        text=text,
        segments=tuple(Segment.from_dict(s) for s in segments),
    )


def mode_of(loaded: LoadedModel, options: TranscribeOptions) -> str:
    """The engine for this request: as asked, else batched on a GPU and sequential on CPU."""
    return options.mode or ("batched" if loaded.device.type == "cuda" else "sequential")


def windows_per_batch(loaded: LoadedModel, beam_size: Optional[int]) -> int:
    """Windows per batch: as many as free GPU memory holds (see _bytes_per_window), a
    small fixed number on the CPU."""
    if loaded.device.type != "cuda":
        return BATCH_WINDOWS_CPU
    free, _ = torch.cuda.mem_get_info(loaded.device)
    fitting = int(free * GPU_MEMORY_SHARE // _bytes_per_window(loaded, beam_size or 1))
    return max(1, min(MAX_BATCH_WINDOWS, fitting))


def _bytes_per_window(loaded: LoadedModel, rows: int) -> int:
    """What one more window costs the batched decoder: cross-attention keys and values
    (every decoder layer, all audio frames), the self-attention cache of its rows (beams)
    and the copy a beam reorder makes of it, and the encoder's widest activations."""
    dims = loaded.model.dims
    item = 2 if loaded.fp16 else 4
    cross = dims.n_text_layer * 2 * dims.n_audio_ctx * dims.n_text_state
    cache = dims.n_text_layer * 2 * rows * dims.n_text_ctx * dims.n_text_state * 2
    encoder = ENCODER_ACTIVATIONS * dims.n_audio_ctx * dims.n_audio_state
    return (cross + cache + encoder) * item


def _batches(windows: Iterable[Window], size: int) -> Iterator[List[Window]]:
    batch: List[Window] = []
    for window in windows:
        batch.append(window)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _batched(
    loaded: LoadedModel, audio: np.ndarray, options: TranscribeOptions, language: str,
    progress: Optional[ProgressCallback], size: int,
):
    """Decode the speech windows together, a batch at a time while voice activity
    detection of the rest goes on; returns (text, segment dicts)."""
    model = loaded.model
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                              language=language, task=options.task)
    prompt = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else None
    total = len(audio) / SAMPLE_RATE
    segments: List[dict] = []
    with contextlib.closing(iter_speech_windows(audio)) as windows:
        for batch in _batches(windows, size):
            mels = _window_mels(loaded, audio, batch)
            results = _decode_with_fallback(model, mels, options, language, prompt, loaded.fp16)
            for window, mel, result in zip(batch, mels, results):
                if not _is_silence(result, options):
                    segments.extend(_window_segments(
                        model, tokenizer, window, mel, result, options, segments))
            if progress is not None:
                progress(Progress(batch[-1].end / SAMPLE_RATE, total))
    return "".join(s["text"] for s in segments), segments


def _window_mels(loaded: LoadedModel, audio: np.ndarray, batch: List[Window]) -> torch.Tensor:
    """(windows, n_mels, 3000) on the model's device, each normalised on its own as
    whisper.decode would see it alone."""
    mels = torch.stack([
        whisper.log_mel_spectrogram(
            whisper.pad_or_trim(audio[w.start:w.end]), loaded.model.dims.n_mels,
            device=loaded.device,
        )
        for w in batch
    ])
    return mels.half() if loaded.fp16 else mels


def _window_segments(model, tokenizer, window: Window, mel: torch.Tensor, result,
                     options: TranscribeOptions, before: List[dict]) -> List[dict]:
    """One window's segments on the file's timeline, with word timestamps if asked."""
    found = _segments(window, result, tokenizer, start_id=len(before))
    if options.word_timestamps and found:
        add_word_timestamps(
            segments=found, model=model, tokenizer=tokenizer, mel=mel,
            num_frames=min(N_FRAMES, (window.end - window.start) // HOP_LENGTH),
            last_speech_timestamp=before[-1]["end"] if before else 0.0,
        )
    return found


def _decode_with_fallback(model, mels, options: TranscribeOptions, language: str, prompt,
                          fp16: bool) -> list:
    """whisper.transcribe's temperature fallback, window by window: only the windows that
    fail the thresholds are decoded again, at the next temperature."""
    results: list = [None] * len(mels)
    pending = list(range(len(mels)))
    for temperature in options.temperature:
        beam = options.beam_size if temperature == 0 else None
        decoding = whisper.DecodingOptions(
            task=options.task, language=language, temperature=temperature,
            beam_size=beam, patience=options.patience if beam else None,
            best_of=options.best_of if temperature > 0 else None,
            length_penalty=options.length_penalty, prompt=prompt, fp16=fp16,
        )
        decoded = decode_batch(model, mels[pending], decoding)
        for index, result in zip(pending, decoded):
            results[index] = result
        pending = [i for i in pending if _needs_fallback(results[i], options)]
        if not pending:
            break
    return results


def _needs_fallback(result, options: TranscribeOptions) -> bool:
    too_repetitive = (options.compression_ratio_threshold is not None
                      and result.compression_ratio > options.compression_ratio_threshold)
    too_unlikely = (options.logprob_threshold is not None
                    and result.avg_logprob < options.logprob_threshold)
    return (too_repetitive or too_unlikely) and not _is_silence(result, options)


def _is_silence(result, options: TranscribeOptions) -> bool:
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return options.logprob_threshold is None or result.avg_logprob <= options.logprob_threshold


def _segments(window: Window, result, tokenizer, start_id: int) -> List[dict]:
    """Segments between pairs of timestamp tokens, placed on the file's timeline; text after
    the last timestamp runs to the window's end."""
    tokens = list(result.tokens)
    cuts = [i for i, t in enumerate(tokens) if t >= tokenizer.timestamp_begin]
    pieces, begin = [], 0
    for previous, current in zip(cuts, cuts[1:]):
        if current == previous + 1:  # two timestamps in a row close one segment
            pieces.append(tokens[begin:current])
            begin = current
    if tokens[begin:] and any(t < tokenizer.eot for t in tokens[begin:]):
        pieces.append(tokens[begin:])
    segments = []
    for piece in pieces:
        stamps = [t - tokenizer.timestamp_begin for t in piece if t >= tokenizer.timestamp_begin]
        # a timestamp past the window's audio (the rest of the 30 s is padding) is clipped
        start = min(stamps[0] * TIME_PRECISION if stamps else 0.0, window.seconds)
        end = min(stamps[-1] * TIME_PRECISION if len(stamps) > 1 else window.seconds, window.seconds)
        text = tokenizer.decode([t for t in piece if t < tokenizer.eot])
        if not text.strip() or end <= start:
            continue
        segments.append(dict(
            id=start_id + len(segments), seek=int(window.start // HOP_LENGTH),
            start=window.offset + start, end=window.offset + end,
            text=text, tokens=piece, temperature=result.temperature,
            avg_logprob=result.avg_logprob, compression_ratio=result.compression_ratio,
            no_speech_prob=result.no_speech_prob, words=[],
        ))
    return segments


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
