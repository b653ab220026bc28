"""Where the speech is: windows of at most 30 s, cut at pauses, from Silero VAD.

The batched engine decodes these windows independently and together. Stretches with no
speech (silence, music, noise) become no window at all, so Whisper never gets the chance to
invent text for them. Silero's models ship inside the `silero-vad` wheel; its sequence model
(run by onnxruntime in a few block-level calls) gives the same timestamps as the streaming
one, about five times faster.

Long audio is cut into sections of a few minutes at their quietest moment, and the sections
are detected in parallel threads (onnxruntime releases the GIL) while the caller already
decodes the windows of the first ones, so detection does not bound the engine's throughput.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from whisper.audio import CHUNK_LENGTH, SAMPLE_RATE

MAX_WINDOW_SECONDS = float(CHUNK_LENGTH)  # what one Whisper window holds
MIN_SILENCE_MS = 300  # a pause this long may end a stretch of speech
SPEECH_PAD_MS = 200  # kept around speech so word edges are not clipped
MIN_SPEECH_MS = 250  # shorter blips are not speech

SECTION_SECONDS = 120  # detected independently of each other, in parallel
SECTION_SEARCH_SECONDS = 5  # a section ends at the quietest moment this near its nominal end
QUIET_FRAME = 512  # samples (32 ms) over which loudness is measured to find that moment
QUIET_FRAMES = 12  # frames (384 ms) that must be quiet together: a pause, not a consonant
MAX_THREADS = 8  # detection threads at most (each runs one onnxruntime call at a time)

_model = None
_model_lock = threading.Lock()


@dataclass(frozen=True)
class Window:
    start: int  # first sample
    end: int  # one past the last sample

    @property
    def offset(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def speech_windows(audio: np.ndarray, max_seconds: float = MAX_WINDOW_SECONDS,
                   split_long: bool = True) -> List[Window]:
    """All speech windows of the audio, in order."""
    return list(iter_speech_windows(audio, max_seconds, split_long=split_long))


def iter_speech_windows(
    audio: np.ndarray, max_seconds: float = MAX_WINDOW_SECONDS, threads: Optional[int] = None,
    split_long: bool = True,
) -> Iterator[Window]:
    """Speech windows in order, produced while detection of later sections goes on in
    background threads. Consecutive speech stretches merge into windows of at most
    `max_seconds`; a window never spans two sections. A stretch of speech longer than
    `max_seconds` with no pause to cut at is cut inside speech into windows of at most
    that, or with split_long=False is one window of its own, longer than `max_seconds`
    (for an engine that goes on from where its decode of the first 30 s ended); then a
    window never starts after a pause shorter than the two pads either."""
    model = load_model()
    sections = audio_sections(audio)
    threads = threads or min(len(sections), os.cpu_count() or 1, MAX_THREADS)
    if threads <= 1:
        for start, end in sections:
            yield from _section_windows(model, audio, start, end, max_seconds, split_long)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="vad")
    try:
        futures = [
            pool.submit(_section_windows, model, audio, start, end, max_seconds, split_long)
            for start, end in sections
        ]
        for future in futures:
            yield from future.result()
    finally:
        # a consumer that stops early (an error, a cancelled job) leaves nothing running
        pool.shutdown(wait=True, cancel_futures=True)


def audio_sections(audio: np.ndarray) -> List[Tuple[int, int]]:
    """(start, end) samples of consecutive sections of about SECTION_SECONDS, each ending
    in the middle of the quietest QUIET_FRAMES frames near its nominal end, so a cut
    falls in a pause."""
    size, search = SECTION_SECONDS * SAMPLE_RATE, SECTION_SEARCH_SECONDS * SAMPLE_RATE
    bounds = [0]
    while len(audio) - bounds[-1] > size + search:
        low = bounds[-1] + size - search
        count = 2 * search // QUIET_FRAME
        frames = audio[low:low + count * QUIET_FRAME].reshape(count, QUIET_FRAME)
        loudness = np.square(frames).mean(axis=1)
        # the quietest stretch of QUIET_FRAMES frames, not the quietest single frame: one
        # 32 ms frame can be the gap before a consonant in the middle of a word
        stretch = np.convolve(loudness, np.ones(QUIET_FRAMES), mode="valid")
        quietest = int(stretch.argmin()) + QUIET_FRAMES // 2
        bounds.append(low + quietest * QUIET_FRAME + QUIET_FRAME // 2)
    bounds.append(len(audio))
    return list(zip(bounds, bounds[1:]))


def load_model():
    """Silero's sequence model, loaded once per process (a server does it at start)."""
    global _model
    with _model_lock:
        if _model is None:
            threads = torch.get_num_threads()
            import silero_vad  # imported on first use: only the batched engine needs it

            # importing silero_vad calls torch.set_num_threads(1), which would leave every
            # later transcription in this thread on one core
            torch.set_num_threads(threads)
            _model = silero_vad.load_silero_vad(sequence=True)
    return _model


def _section_windows(model, audio: np.ndarray, start: int, end: int,
                     max_seconds: float, split_long: bool = True) -> List[Window]:
    import silero_vad

    stretches = silero_vad.get_speech_timestamps_sequence(
        audio[start:end], model, sampling_rate=SAMPLE_RATE,
        max_speech_duration_s=max_seconds if split_long else float("inf"),
        min_silence_duration_ms=MIN_SILENCE_MS,
        speech_pad_ms=SPEECH_PAD_MS, min_speech_duration_ms=MIN_SPEECH_MS,
    )
    limit = int(max_seconds * SAMPLE_RATE)
    units = [Window(start + int(s["start"]), min(start + int(s["end"]), end)) for s in stretches]
    if not split_long:
        units = _joined_where_touching(units)
    windows: List[Window] = []
    current: Optional[Window] = None
    for unit in units:
        if current is not None and unit.end - current.start <= limit:
            current = Window(current.start, unit.end)  # the pause between them stays inside
            continue
        if current is not None:
            windows.append(current)
        current = Window(unit.start, min(unit.end, unit.start + limit) if split_long else unit.end)
    if current is not None:
        windows.append(current)
    return windows


def _joined_where_touching(stretches: List[Window]) -> List[Window]:
    """Stretches whose pads touch (a pause shorter than both pads: mid-sentence more often
    than not) as one: no window starts inside them, however long they are."""
    joined: List[Window] = []
    for stretch in stretches:
        if joined and stretch.start <= joined[-1].end:
            joined[-1] = Window(joined[-1].start, stretch.end)
        else:
            joined.append(stretch)
    return joined
