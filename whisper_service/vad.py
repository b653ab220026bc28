"""Where the speech is: windows of at most 30 s, cut at pauses, from Silero VAD.

The batched engine decodes these windows independently and together. Stretches with no
speech (silence, music, noise) become no window at all, so Whisper never gets the chance to
invent text for them. Silero's models ship inside the `silero-vad` wheel; its sequence model
(run by onnxruntime in a few block-level calls) gives the same timestamps as the streaming
one, about five times faster, so detection does not bound the engine's throughput.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from whisper.audio import CHUNK_LENGTH, SAMPLE_RATE

MAX_WINDOW_SECONDS = float(CHUNK_LENGTH)  # what one Whisper window holds
MIN_SILENCE_MS = 300  # a pause this long may end a stretch of speech
SPEECH_PAD_MS = 200  # kept around speech so word edges are not clipped
MIN_SPEECH_MS = 250  # shorter blips are not speech

_model = None
_model_lock = threading.Lock()  # the model keeps state between chunks: one caller at a time


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


def speech_windows(audio: np.ndarray, max_seconds: float = MAX_WINDOW_SECONDS) -> List[Window]:
    """Consecutive speech stretches merged into windows of at most `max_seconds`."""
    import silero_vad  # imported on first use: only the batched engine needs it

    global _model
    with _model_lock:
        if _model is None:
            _model = silero_vad.load_silero_vad(sequence=True)
        stretches = silero_vad.get_speech_timestamps_sequence(
            torch.from_numpy(audio), _model, sampling_rate=SAMPLE_RATE,
            max_speech_duration_s=max_seconds, min_silence_duration_ms=MIN_SILENCE_MS,
            speech_pad_ms=SPEECH_PAD_MS, min_speech_duration_ms=MIN_SPEECH_MS,
        )
    limit = int(max_seconds * SAMPLE_RATE)
    windows: List[Window] = []
    current: Optional[Window] = None
    for stretch in stretches:
        start, end = int(stretch["start"]), min(int(stretch["end"]), len(audio))
        if current is not None and end - current.start <= limit:
            current = Window(current.start, end)  # the pause between them stays inside
            continue
        if current is not None:
            windows.append(current)
        current = Window(start, min(end, start + limit))
    if current is not None:
        windows.append(current)
    return windows
