"""The pitch of a voice: the fundamental frequency (F0) of voiced speech, per 20 ms frame.

The speaker encoder (encoder.py) tells voices apart by their timbre, but on short turns
(one to five seconds) its embeddings of one voice scatter as far as two voices lie apart;
the pitch of a voice is steadier and differs by up to an octave between people (most between
men and women). clustering.py adds the difference of two pieces' median pitch, in octaves,
to their voice distance.

Boersma's normalised autocorrelation over 40 ms Hann-windowed frames (the frame's
autocorrelation divided by the window's, so that the taper does not favour short lags): a
frame is voiced when a peak between 50 and 400 Hz (a local maximum, not the edge of the
range) reaches VOICED; of the peaks within OCTAVE_TOLERANCE of the strongest, the shortest
lag is the period (a period's multiples repeat almost as well, its fractions do not).
Crude next to a real pitch tracker, which the medians over a piece's many frames absorb.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
FRAME = 640  # 40 ms: two periods of the lowest pitch looked for
HOP = 320  # 20 ms: 80 frames in a 1.6 s window, plenty for its median; half the work of 10 ms
LOWEST_HZ = 50
HIGHEST_HZ = 400
VOICED = 0.6  # the normalised autocorrelation at the period above which a frame is voiced
OCTAVE_TOLERANCE = 0.9  # a shorter lag within this share of the strongest peak is the period
SILENT_RMS = 1e-3  # quieter frames are not voiced whatever their shape
MIN_VOICED = 0.4  # share of a stretch's frames that must be voiced for its pitch to count
CHUNK_FRAMES = 4096  # frames analysed at once: bounds the memory of long stretches (~40 MB)


def log2_f0(audio: np.ndarray) -> np.ndarray:
    """(frames,) float: log2 of the F0 in Hz of each HOP (20 ms) of 16 kHz `audio` (frame i
    covers samples HOP i .. HOP i + FRAME), NaN where the frame is not voiced."""
    count = 1 + max(0, (len(audio) - FRAME) // HOP) if len(audio) >= FRAME else 0
    out = np.full(count, np.nan)
    window = np.hanning(FRAME)
    taper = _autocorrelation(window[None, :])[0]
    taper /= taper[0]
    low, high = SAMPLE_RATE // HIGHEST_HZ, SAMPLE_RATE // LOWEST_HZ
    for first in range(0, count, CHUNK_FRAMES):
        frames = np.arange(first, min(count, first + CHUNK_FRAMES))
        chunk = audio[frames[:, None] * HOP + np.arange(FRAME)[None, :]].astype(np.float64)
        rms = np.sqrt(np.mean(chunk ** 2, axis=1))
        correlation = _autocorrelation((chunk - chunk.mean(axis=1, keepdims=True)) * window)
        correlation = correlation / np.maximum(correlation[:, :1], 1e-12) / taper
        inner = correlation[:, low:high + 1]
        # local maxima strictly inside the range: the edge of the range is no period
        peaks = np.zeros_like(inner, dtype=bool)
        peaks[:, 1:-1] = (inner[:, 1:-1] > inner[:, :-2]) & (inner[:, 1:-1] >= inner[:, 2:])
        heights = np.where(peaks, inner, -np.inf)
        strongest = heights.max(axis=1)
        period = np.argmax(heights >= OCTAVE_TOLERANCE * strongest[:, None], axis=1) + low
        voiced = (strongest > VOICED) & (rms > SILENT_RMS)
        out[frames] = np.where(voiced, np.log2(SAMPLE_RATE / period), np.nan)
    return out


def _autocorrelation(frames: np.ndarray) -> np.ndarray:
    """(n, FRAME) -> (n, FRAME): each row's autocorrelation at lags 0..FRAME-1."""
    power = np.abs(np.fft.rfft(frames, 2 * FRAME, axis=1)) ** 2
    return np.fft.irfft(power, axis=1)[:, :FRAME]


def median_pitch(track: np.ndarray, first: int, last: int) -> float:
    """The median log2 F0 of the voiced frames first..last of a track; NaN when fewer than
    MIN_VOICED of them are voiced (whispered speech, noise: no pitch to compare)."""
    frames = track[max(0, first):max(0, last)]
    voiced = frames[~np.isnan(frames)]
    if not len(voiced) or len(voiced) < MIN_VOICED * len(frames):
        return float("nan")
    return float(np.median(voiced))
