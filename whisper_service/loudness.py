"""A picture of the audio for the transcript page: its loudness over time, small enough to
send with the page (about 320 bytes per minute) and computed once, on the server, from the
decoded audio, never in the browser from the whole file.

The audio is cut into bins (BINS_PER_SECOND, or more for a short file so that the picture
has at least MIN_BINS); each bin's level is its RMS in decibels, from FLOOR_DB (silence: 0)
to full scale (255), one byte, sent as base64.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from whisper_service.audio import SAMPLE_RATE

Samples = np.ndarray  # 16 kHz mono float32 in [-1, 1), as audio.decode_file returns
BINS_PER_SECOND = 4  # 240 bins a minute: 320 base64 characters
MIN_BINS = 400  # a short file still gets a detailed picture
FLOOR_DB = -60.0  # RMS at or below this is drawn as silence
LEVELS = 255  # the loudest bin's value


@dataclass(frozen=True)
class Envelope:
    duration: float  # seconds of audio
    seconds_per_bin: float  # each level covers this much audio, the first from 0
    levels: bytes  # one byte per bin, 0 (FLOOR_DB or quieter) .. LEVELS (full scale)

    def to_dict(self) -> dict:
        return {"duration": self.duration, "seconds_per_bin": self.seconds_per_bin,
                "bins": len(self.levels), "floor_db": FLOOR_DB,
                "levels": base64.b64encode(self.levels).decode("ascii")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Envelope":
        return cls(duration=float(data["duration"]), seconds_per_bin=float(data["seconds_per_bin"]),
                   levels=base64.b64decode(data["levels"]))


def envelope(samples: Samples, sample_rate: int = SAMPLE_RATE) -> Envelope:
    """The loudness envelope of decoded audio."""
    duration = len(samples) / sample_rate
    if len(samples) == 0:
        return Envelope(duration=0.0, seconds_per_bin=0.0, levels=b"")
    bins = min(len(samples), max(MIN_BINS, math.ceil(duration * BINS_PER_SECOND)))
    per_bin = math.ceil(len(samples) / bins)
    bins = math.ceil(len(samples) / per_bin)
    starts = np.arange(0, len(samples), per_bin)
    power = np.add.reduceat(np.square(samples, dtype=np.float32), starts, dtype=np.float64)
    counts = np.diff(np.append(starts, len(samples)))  # the last bin may be short
    rms = np.sqrt(power / counts)
    decibels = 20.0 * np.log10(np.maximum(rms, 1e-12))
    scaled = np.clip((decibels - FLOOR_DB) / -FLOOR_DB, 0.0, 1.0) * LEVELS
    return Envelope(duration=duration, seconds_per_bin=per_bin / sample_rate,
                    levels=np.round(scaled).astype(np.uint8).tobytes())
