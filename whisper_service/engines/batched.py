"""The batched engine: the speech windows of one file, or of several files transcribed
with the same options, decoded together.

Voice activity detection cuts each file's speech into windows of at most 30 s at pauses
(silence yields no window, so no invented text; speech with no pause for longer is one
window); `decode_batch` decodes a batch of windows at once, and each window's tokens equal
`whisper.decode`'s for it alone (on the CPU, CTranslate2 decodes them where the model has
a twin there: loaded.windows). Like whisper.transcribe, a decode that stops early is taken
up to its last timestamp and the rest of its window decoded again (_decode_windows, _rest),
prompted with the window's text before it. Windows are independent of each other: a
file's initial prompt is given to each, the text of the window before is not. Batches are
decoded as the detector delivers windows, so detection of the rest of a long file overlaps
decoding; windows of several files fill the same batches, so many short files keep a GPU
as busy as one long one. A window's segments are reported (Progress.segments) as soon as
its decode is final and every earlier window of its file is reported.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from whisper.timing import add_word_timestamps
from whisper.tokenizer import get_tokenizer

from whisper_service.engines import window_progress
from whisper_service.engines.decoding import decode_batch
from whisper_service.models import LoadedModel
from whisper_service.options import TranscribeOptions
from whisper_service.engines.pipeline import Prefetcher, StageTimes
from whisper_service.progress import FinishedSegment, Progress, ProgressCallback, finished_segments
from whisper_service.engines.vad import Window, iter_speech_windows

TIME_PRECISION = 0.02  # seconds per timestamp token
BATCH_WINDOWS_CPU = 8  # more gains little on a few cores and delays the first progress
MAX_BATCH_WINDOWS = 64  # past this the GPU is busy anyway; bigger batches only add latency
GPU_MEMORY_SHARE = 0.7  # of the free memory; the rest absorbs what the estimate leaves out
ENCODER_ACTIVATIONS = 8  # encoder tensors alive at once, in (audio frames x width): MLP, q/k/v
MIN_REST_SECONDS = 1.0  # less audio left after a decode's last timestamp is not decoded again
MAX_PIECES = 16  # decodes of one window at most (each takes at least a second of it)
WINDOW_SECONDS = N_FRAMES * HOP_LENGTH / SAMPLE_RATE  # the audio one decode sees

log = logging.getLogger(__name__)


@dataclass
class FileRequest:
    """One file of a batched run: its samples, its options, where its progress goes."""

    audio: np.ndarray
    options: TranscribeOptions
    progress: Optional[ProgressCallback] = None


@dataclass
class _FileState:
    request: FileRequest
    prompt: Optional[List[int]]  # the initial prompt's tokens, given to every window
    segments: List[dict] = field(default_factory=list)
    error: Optional[Exception] = None  # what its progress callback raised (a cancel)
    reported: float = 0.0  # the furthest audio second reported; progress never moves back
    finished: Tuple[FinishedSegment, ...] = ()  # `segments` as progress reports them

    @property
    def seconds(self) -> float:
        return len(self.request.audio) / SAMPLE_RATE

    def report(self, done_seconds: float) -> None:
        if self.request.progress is None or self.error is not None:
            return
        self.reported = max(self.reported, min(done_seconds, self.seconds))
        try:
            self.request.progress(Progress(self.reported, self.seconds, self.finished))
        except Exception as error:  # this file is given up; the others go on
            self.error = error


def decode_files(
    loaded: LoadedModel, requests: Sequence[FileRequest], language: str, size: int,
    times: Optional[StageTimes] = None,
) -> List[Union[Tuple[str, List[dict]], Exception]]:
    """(text, segment dicts) for each file, or the exception its progress callback raised.

    Every request's options must agree on what decoding depends on (shared_options), and
    `language` is the language of all of them. `size` windows are decoded at a time. The
    windows and mels of the next batch are made in a background thread while this one
    decodes. times: where each stage's seconds are added (they are logged either way)."""
    model = loaded.model
    options = requests[0].options
    times = times if times is not None else StageTimes(loaded.device)
    started = time.perf_counter()
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                              language=language, task=options.task)
    files = [
        _FileState(request, tokenizer.encode(" " + request.options.initial_prompt.strip())
                   if request.options.initial_prompt else None)
        for request in requests
    ]
    batches = _prepared_batches(loaded, _speech_windows(files), size, times)
    with Prefetcher(batches, name="batches") as prepared:
        ahead = iter(prepared)
        while True:
            with times.stage("handover"):  # what the model waits for the next batch
                item = next(ahead, None)
            if item is None:
                break
            batch, mels, features = item
            with loaded.lock, times.recording():  # held a batch at a time: others
                # wait for one batch, not the run
                _decode_windows(loaded, batch, mels, features, options, language, tokenizer,
                                _report_inside(batch),
                                _segments_in_order(model, tokenizer, batch, options, times))
            done = {id(state): (state, window.end) for state, window in batch}
            for state, end in done.values():
                state.report(end / SAMPLE_RATE)
    log.info("batched run of %d file(s) in %.2f s: %s", len(files),
             time.perf_counter() - started, times.summary())
    return [
        state.error if state.error is not None
        else ("".join(s["text"] for s in state.segments), state.segments)
        for state in files
    ]


def _report_inside(batch: List[Tuple[_FileState, Window]]) -> window_progress.Report:
    """Each file's progress while its windows decode: the stretch of the file its windows
    in this batch span, covered in the share of their speech decoded so far
    (window_progress), so that progress moves through the pauses between them too."""
    def report(reached: Sequence[float]) -> None:
        spans: Dict[int, List] = {}  # file -> [state, start, end, speech decoded, speech]
        for (state, window), seconds in zip(batch, reached):
            span = spans.setdefault(id(state), [state, window.offset, 0.0, 0.0, 0.0])
            span[2] = window.offset + window.seconds  # a file's windows come in order
            span[3] += window_progress.within(seconds, window.seconds)
            span[4] += window.seconds
        for state, start, end, decoded, speech in spans.values():
            state.report(start + (end - start) * decoded / speech)

    return report


def _segments_in_order(model, tokenizer, batch: List[Tuple[_FileState, Window]],
                       options: TranscribeOptions, times: StageTimes) -> "Settled":
    """_decode_windows' `settled` for a batch: each window's segments once its decode is
    final (every piece of it, see _decode_windows), added to its file's, and reported
    (progress carries them) at once. A file's windows lie in order in a batch, and a window
    waits for the file's windows before it (a later one is often final first: the earlier
    one falls back to a higher temperature or goes on past an early end), so a file's
    segments are never skipped nor reordered; word timestamps, which start from the file's
    last segment, see the same segments before them as in one go. Reports from here come
    while the model is held, so only while windows of the batch still decode: those of the
    batch's end wait for decode_files, after the model is let go."""
    final: List[Optional[List[_Piece]]] = [None] * len(batch)
    taken = [False] * len(batch)

    def settled(indexes: Sequence[int], pieces: Sequence[Optional[List["_Piece"]]]) -> None:
        for index in indexes:
            final[index] = pieces[index]
        grown: Dict[int, Tuple[_FileState, Window]] = {}
        waiting = set()  # files with a window before still decoding
        with times.stage("segments"):
            for index, (state, window) in enumerate(batch):
                if taken[index] or id(state) in waiting:
                    continue
                if final[index] is None:
                    waiting.add(id(state))
                    continue
                taken[index] = True
                for piece in final[index]:
                    if _is_silence(piece.result, options):
                        continue
                    found = _window_segments(model, tokenizer, piece, state.request.options,
                                             state.segments)
                    state.segments.extend(found)
                    state.finished += finished_segments(found)
                grown[id(state)] = (state, window)
        if all(taken):  # decode_files reports them once the model is free for others
            return
        for state, window in grown.values():  # the file is done up to this window's end
            state.report(window.end / SAMPLE_RATE)

    return settled


PreparedBatch = Tuple[List[Tuple[_FileState, Window]], torch.Tensor, Optional[torch.Tensor]]


def _prepared_batches(loaded: LoadedModel, windows: Iterator[Tuple[_FileState, Window]],
                      size: int, times: StageTimes) -> Iterator[PreparedBatch]:
    """Batches of `size` windows with their mels and, on a GPU, their encoded audio: there
    mel and encoder run on a stream of their own, overlapping the decoding of the batch
    before (the encoder only reads the model's weights, as the decoder does). On the CPU
    the encoder would only take cores from the decoder: it runs in decode_batch."""
    stream = torch.cuda.Stream(loaded.device) if loaded.device.type == "cuda" else None
    with contextlib.closing(windows):
        while True:
            with times.stage("vad"):  # what the detector's threads had not yet delivered
                batch = list(itertools.islice(windows, size))
            if not batch:
                return
            features = None
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                with times.stage("mel"):
                    mels = _window_mels(loaded, [(state.request.audio, window)
                                                 for state, window in batch])
                if stream is not None:
                    with times.stage("encoder"), torch.no_grad():
                        features = loaded.model.encoder(mels)
            if stream is not None:  # used on the consumer's stream from now on
                for tensor in (mels, features):
                    tensor.record_stream(torch.cuda.current_stream(loaded.device))
            yield batch, mels, features


def _speech_windows(files: List[_FileState]) -> Iterator[Tuple[_FileState, Window]]:
    """Every file's windows, file after file; a file given up yields no more. Speech with
    no pause to cut at for more than 30 s is one window here: its decodes go on from each
    other's last timestamp, with the text before as their prompt (_decode_windows), as
    whisper.transcribe does, rather than each starting blind in the middle of a word."""
    for state in files:
        with contextlib.closing(iter_speech_windows(state.request.audio,
                                                    split_long=False)) as windows:
            for window in windows:
                if state.error is not None:
                    break  # closing the detector stops its threads
                yield state, window


def shared_options(options: TranscribeOptions) -> TranscribeOptions:
    """The options with what only concerns one file (its prompt, word timing, subtitle
    layout) and the mode (the caller resolves it) at their defaults: files in batched mode
    whose shared options are equal can share batches."""
    defaults = TranscribeOptions()
    return TranscribeOptions(**{
        **vars(options),
        "initial_prompt": defaults.initial_prompt,
        "word_timestamps": defaults.word_timestamps,
        "layout": defaults.layout,
        "mode": defaults.mode,
    })


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



def _window_mels(loaded: LoadedModel, windows: List[Tuple[np.ndarray, Window]]) -> torch.Tensor:
    """(windows, n_mels, 3000) on the model's device, each normalised on its own as
    whisper.decode would see it alone."""
    mels = torch.stack([
        whisper.log_mel_spectrogram(
            whisper.pad_or_trim(audio[w.start:w.end]), loaded.model.dims.n_mels,
            device=loaded.device,
        )
        for audio, w in windows
    ])
    return mels.half() if loaded.fp16 else mels


def _window_segments(model, tokenizer, piece: "_Piece", options: TranscribeOptions,
                     before: List[dict]) -> List[dict]:
    """One piece's segments on the file's timeline, with word timestamps if asked."""
    window = piece.window
    found = _segments(window, piece.result, tokenizer, start_id=len(before),
                      complete_only=piece.continued)
    if options.word_timestamps and found:
        add_word_timestamps(
            segments=found, model=model, tokenizer=tokenizer, mel=piece.mel,
            num_frames=min(N_FRAMES, (window.end - window.start) // HOP_LENGTH),
            last_speech_timestamp=before[-1]["end"] if before else 0.0,
        )
    return found


@dataclass
class _Piece:
    """What one decode of a window, or of the rest of it, gave. continued: the decode
    stopped early (see _rest): only its complete segments count, and the audio after its
    last timestamp is decoded again as the next piece."""

    window: Window  # the samples decoded, on the file's timeline
    mel: torch.Tensor  # (n_mels, 3000) their log-Mel, for word timing
    result: "whisper.DecodingResult"
    continued: bool = False


def _decode_windows(loaded: LoadedModel, batch: List[Tuple[_FileState, Window]],
                    mels: torch.Tensor, features: Optional[torch.Tensor],
                    options: TranscribeOptions, language: str, tokenizer,
                    reached: window_progress.Report, settled: "Settled") -> None:
    """Decode a batch of windows to the end of their speech, as whisper.transcribe goes on
    from a window's last timestamp: a decode that stops early (end-of-text after a
    timestamp pair while a second or more of the window is left) leaves the rest of its
    window to a next piece, decoded with the windows' other rests as a smaller batch,
    prompted with the text before it when condition_on_previous_text is on. Without this a
    window's last sentence is often lost whole. settled: told each window's pieces once
    the last of them is final."""
    model = loaded.model
    pieces: List[List[_Piece]] = [[] for _ in batch]
    final: List[Optional[List[_Piece]]] = [None] * len(batch)
    todo = list(range(len(batch)))  # the batch's windows whose next piece is decoded now
    windows = [window for _, window in batch]  # each one's piece decoded now
    inputs, piece_mels = (mels if features is None else features), mels
    prompts = [state.prompt for state, _ in batch]
    for _ in range(MAX_PIECES):
        rests: Dict[int, Window] = {}

        def round_settled(indexes: Sequence[int], results: list) -> None:
            ended = []
            for i in indexes:
                index = todo[i]
                rest = _rest(windows[index], results[i], tokenizer, options)
                pieces[index].append(_Piece(windows[index], piece_mels[i], results[i],
                                            continued=rest is not None))
                if rest is None:
                    final[index] = pieces[index]
                    ended.append(index)
                else:
                    rests[index] = rest
            if ended:
                settled(sorted(ended), final)

        def round_reached(seconds: Sequence[float]) -> None:
            every = [math.inf] * len(batch)
            for i, value in zip(range(len(todo)), seconds):
                index = todo[i]
                every[index] = (windows[index].start - batch[index][1].start) / SAMPLE_RATE + value
            reached(every)

        _decode_with_fallback(loaded, inputs, options, language, [prompts[i] for i in todo],
                              round_reached, round_settled)
        if not rests:
            return
        todo = sorted(rests)
        for index in todo:
            windows[index] = rests[index]
            if options.condition_on_previous_text:
                said = [t for piece in pieces[index] for t in _kept_tokens(piece, tokenizer)]
                prompts[index] = (batch[index][0].prompt or []) + said
        piece_mels = _window_mels(loaded, [(batch[index][0].request.audio, windows[index])
                                           for index in todo])
        inputs = piece_mels
    settled(sorted(rests), pieces)  # MAX_PIECES reached: what was decoded stands


def _rest(window: Window, result, tokenizer, options: TranscribeOptions) -> Optional[Window]:
    """The part of `window` a decode left undecoded, or None. As whisper.transcribe seeks,
    a decode is taken up to its last timestamp and what follows is decoded again: after a
    timestamp pair (the text after it was cut off), and here also after a lone timestamp
    at the end (the model's word that nothing follows, which a VAD window, ending where
    speech ends, often proves wrong), when at least MIN_REST_SECONDS of audio is left. A
    window longer than 30 s (speech with no pause to cut at) goes on at least past the
    30 s the decode saw."""
    if _is_silence(result, options):
        return None
    tokens = [t for t in result.tokens if t != tokenizer.eot]
    stamps = [t - tokenizer.timestamp_begin for t in tokens if t >= tokenizer.timestamp_begin]
    seen = min(window.seconds, WINDOW_SECONDS)
    consumed = stamps[-1] * TIME_PRECISION if stamps else seen
    if consumed <= 0:
        consumed = seen
    if window.seconds - consumed < MIN_REST_SECONDS:
        return None
    return Window(window.start + int(round(consumed * SAMPLE_RATE)), window.end)


def _kept_tokens(piece: _Piece, tokenizer) -> List[int]:
    """The tokens of a piece's segments (text and timestamps), as whisper.transcribe
    conditions the next window on them."""
    tokens = [t for t in piece.result.tokens if t != tokenizer.eot]
    if piece.continued:
        ends = [i for i, t in enumerate(tokens) if t >= tokenizer.timestamp_begin]
        tokens = tokens[:ends[-1] + 1] if ends else tokens
    return tokens


Settled = Callable[[Sequence[int], list], None]


def _decode_with_fallback(loaded: LoadedModel, mels, options: TranscribeOptions, language: str,
                          prompts: List[Optional[List[int]]],
                          reached: window_progress.Report,
                          settled: Optional[Settled] = None) -> list:
    """whisper.transcribe's temperature fallback, window by window: only the windows that
    fail the thresholds are decoded again, at the next temperature. The decodes run on
    the model's CTranslate2 twin where it has one (loaded.windows), else decode_batch on
    the torch model. reached: told, now and
    then, how far into each window decoding is (a window not decoded again: finished).
    settled: told after each temperature the windows whose results are now final (their
    indexes, ascending, and the results so far), every window once."""
    results: list = [None] * len(mels)
    pending = list(range(len(mels)))

    def report_pending(seconds: Sequence[float]) -> None:
        every = [math.inf] * len(mels)
        for index, value in zip(pending, seconds):
            every[index] = value
        reached(every)

    temperatures = tuple(options.temperature)
    for step, temperature in enumerate(temperatures):
        beam = options.beam_size if temperature == 0 else None
        decoding = whisper.DecodingOptions(
            task=options.task, language=language, temperature=temperature,
            beam_size=beam, patience=options.patience if beam else None,
            best_of=options.best_of if temperature > 0 else None,
            length_penalty=options.length_penalty, fp16=loaded.fp16,
        )
        decode = loaded.windows.decode if loaded.windows is not None else decode_batch
        with window_progress.watching(report_pending):
            decoded = decode(loaded.model, mels[pending], decoding, [prompts[i] for i in pending])
        for index, result in zip(pending, decoded):
            results[index] = result
        last = step == len(temperatures) - 1
        still = [] if last else [i for i in pending if _needs_fallback(results[i], options)]
        if settled is not None:
            again = set(still)
            settled([i for i in pending if i not in again], results)
        pending = still
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


def _segments(window: Window, result, tokenizer, start_id: int,
              complete_only: bool = False) -> List[dict]:
    """Segments between pairs of timestamp tokens, placed on the file's timeline; text after
    the last timestamp runs to the window's end, unless complete_only (that text is decoded
    again with the rest of the window: only a last segment closed by a timestamp stays)."""
    tokens = list(result.tokens)
    cuts = [i for i, t in enumerate(tokens) if t >= tokenizer.timestamp_begin]
    pieces, begin = [], 0
    for previous, current in zip(cuts, cuts[1:]):
        if current == previous + 1:  # two timestamps in a row close one segment
            pieces.append(tokens[begin:current])
            begin = current
    rest = [t for t in tokens[begin:] if t != tokenizer.eot]
    closed = bool(rest) and rest[-1] >= tokenizer.timestamp_begin
    if rest and any(t < tokenizer.eot for t in rest) and (closed or not complete_only):
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
