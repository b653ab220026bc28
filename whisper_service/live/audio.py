"""A live stream's audio: PCM16 frames to samples, other rates to 16 kHz, and the recording.

Live clients send 16-bit signed little-endian mono PCM: 16 kHz natively, 24 kHz from
OpenAI Realtime clients. A stream at another rate is resampled as it comes (polyphase: up by
p, a windowed-sinc low-pass, down by q), with the filter's memory carried from one frame
to the next, so frame edges leave no clicks. The recording is the 16 kHz stream as a
WAV file, written as it arrives: a session that ends any way keeps everything it heard.
"""

from __future__ import annotations

import wave
from math import gcd

import numpy as np
from whisper.audio import SAMPLE_RATE

BYTES_PER_SAMPLE = 2  # PCM16
PCM_SCALE = 32768.0
TAPS_PER_PHASE = 16  # low-pass length per output phase: ~60 dB down past the new Nyquist
LOWEST_RATE, HIGHEST_RATE = 8000, 96000  # the input rates taken


class BadAudio(ValueError):
    """Frames that are not the PCM16 the stream promised; the message says why."""


def pcm16_samples(frame: bytes) -> np.ndarray:
    """float32 samples in [-1, 1) of a PCM16 little-endian frame."""
    if len(frame) % BYTES_PER_SAMPLE:
        raise BadAudio(f"a PCM16 frame has an even number of bytes; this one has {len(frame)}")
    return np.frombuffer(frame, dtype="<i2").astype(np.float32) / PCM_SCALE


class Resampler:
    """A stream at `rate` Hz to 16 kHz, frame by frame."""

    def __init__(self, rate: int):
        if not LOWEST_RATE <= rate <= HIGHEST_RATE:
            raise BadAudio(f"sample rates from {LOWEST_RATE} to {HIGHEST_RATE} Hz are taken; "
                           f"got {rate}")
        self.rate = rate
        common = gcd(rate, SAMPLE_RATE)
        self.up, self.down = SAMPLE_RATE // common, rate // common
        self._taps = None
        if (self.up, self.down) != (1, 1):
            self._taps = _low_pass(TAPS_PER_PHASE * max(self.up, self.down) + 1,
                                   1.0 / max(self.up, self.down)) * self.up
            self._history = np.zeros(len(self._taps) - 1)  # the filter's memory
        self._position = 0  # samples of the upsampled stream so far

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self._taps is None:
            return samples
        upsampled = np.zeros(len(samples) * self.up)
        upsampled[::self.up] = samples
        padded = np.concatenate([self._history, upsampled])
        filtered = np.convolve(padded, self._taps, mode="valid")
        self._history = padded[len(padded) - len(self._history):]
        first = (-self._position) % self.down  # the next kept sample, on the global grid
        self._position += len(upsampled)
        return filtered[first::self.down].astype(np.float32)


def _low_pass(taps: int, cutoff: float) -> np.ndarray:
    """A windowed-sinc (Hamming) low-pass FIR with unit gain at DC; cutoff as a fraction of
    the Nyquist frequency."""
    middle = (taps - 1) / 2
    kernel = cutoff * np.sinc(cutoff * (np.arange(taps) - middle)) * np.hamming(taps)
    return kernel / kernel.sum()


class Recording:
    """The 16 kHz stream as a mono PCM16 WAV file; close() completes its header."""

    def __init__(self, path: str):
        self.path = path
        self._file = wave.open(path, "wb")
        self._file.setnchannels(1)
        self._file.setsampwidth(BYTES_PER_SAMPLE)
        self._file.setframerate(SAMPLE_RATE)
        self.samples = 0

    def write(self, samples: np.ndarray) -> None:
        pcm = np.clip(samples * PCM_SCALE, -PCM_SCALE, PCM_SCALE - 1).astype("<i2")
        self._file.writeframes(pcm.tobytes())
        self.samples += len(samples)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
