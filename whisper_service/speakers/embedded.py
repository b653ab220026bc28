"""The default diarization backend: no download, no account.

Where the speech is comes from Silero VAD (as for the batched engine); every speech stretch
is covered by 1.6 s windows every HOP_SECONDS, each window becomes a voice embedding
(encoder.py: Resemblyzer's GE2E network, from its wheel) and a pitch (pitch.py: the median
F0 of its speech), the windows are clustered by both (clustering.py), labels are smoothed
over neighbouring windows, and each window speaks for the HOP_SECONDS around its centre.
"""

from __future__ import annotations

import logging
import time
from typing import List, Optional, Tuple

import numpy as np
from whisper.audio import SAMPLE_RATE

from whisper_service.speakers import encoder as voice
from whisper_service.speakers import pitch as tone
from whisper_service.speakers.base import (
    DiarizationUnavailable, FractionCallback, SpeakerHints, SpeakerTurn, merged,
    numbered_in_order,
)
from whisper_service.speakers.clustering import cluster

log = logging.getLogger(__name__)

NAME = "embedded"
HOP_SECONDS = 0.4  # one embedding per 0.4 s of speech: the resolution of speaker changes
WINDOW_SECONDS = voice.PARTIAL_FRAMES * voice.HOP / SAMPLE_RATE  # 1.6 s
PIECE_WINDOWS = 6  # windows (2.4 s of a stretch) whose mean voice is clustered
SMOOTHING = 5  # windows (2 s) over which a label is the majority's: no 0.4 s flickers
MIN_SPEECH_MS = 250  # Silero: shorter blips are not speech
MIN_SILENCE_MS = 100  # a pause this long separates two stretches (a turn may change there)
SPEECH_PAD_MS = 30
SAME_TURN_GAP = 0.35  # seconds of pause within which one speaker's stretches are one turn
PROGRESS_BATCHES = 8  # progress is reported this many times while embedding


class EmbeddedDiarizer:
    name = NAME

    def __init__(self, device: str = "cpu"):
        self.device = device

    def check(self) -> None:
        try:
            voice.weights_path()
        except voice.EncoderMissing as error:
            raise DiarizationUnavailable(f"Speaker labels are not available: {error}.") from None

    def diarize(self, audio: np.ndarray, hints: SpeakerHints = SpeakerHints(),
                progress: Optional[FractionCallback] = None) -> List[SpeakerTurn]:
        self.check()
        began = time.perf_counter()
        stretches = speech_stretches(audio)
        if not stretches:
            return []
        encoder = voice.load_encoder(self.device)
        level = voice.normalize_volume(
            np.concatenate([audio[int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)] for s, e in stretches]))
        gain = _gain(audio, stretches, level)
        mel = voice.mel_spectrogram(audio * gain)
        centres, owner = window_centres(stretches)
        starts = np.clip(np.round((centres - WINDOW_SECONDS / 2) * SAMPLE_RATE / voice.HOP),
                         0, None).astype(int)
        chunks = np.array_split(np.arange(len(starts)), min(PROGRESS_BATCHES, len(starts)))
        parts = []
        for done, chunk in enumerate(chunks, start=1):
            parts.append(voice.embed_frames(encoder, mel, starts[chunk], self.device))
            if progress is not None:
                progress(0.9 * done / len(chunks))
        labels = cluster(np.concatenate(parts), hints, pieces=pieces(owner),
                         pitch=window_pitch(audio, stretches, centres, owner))
        labels = smoothed(labels, owner)
        turns = to_turns(stretches, centres, owner, labels)
        if progress is not None:
            progress(1.0)
        log.info("diarization: %d speakers in %.1f s of audio, %.2f s", len({t.speaker for t in turns}),
                 len(audio) / SAMPLE_RATE, time.perf_counter() - began)
        return turns


def _gain(audio: np.ndarray, stretches, level: np.ndarray) -> float:
    """The factor normalize_volume applied to the speech, applied to the whole audio."""
    speech = np.concatenate([audio[int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)] for s, e in stretches])
    rms_in = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64))))
    rms_out = float(np.sqrt(np.mean(np.square(level, dtype=np.float64))))
    return rms_out / rms_in if rms_in > 0 else 1.0


def speech_stretches(audio: np.ndarray) -> List[Tuple[float, float]]:
    """(start, end) seconds of each stretch of speech, from Silero VAD; short pauses split
    stretches, so that a change of speaker at a pause falls between two of them."""
    from whisper_service.engines import vad

    import silero_vad

    model = vad.load_model()
    out: List[Tuple[float, float]] = []
    for first, last in vad.audio_sections(audio):
        for stretch in silero_vad.get_speech_timestamps_sequence(
            audio[first:last], model, sampling_rate=SAMPLE_RATE,
            min_silence_duration_ms=MIN_SILENCE_MS, speech_pad_ms=SPEECH_PAD_MS,
            min_speech_duration_ms=MIN_SPEECH_MS,
        ):
            out.append(((first + int(stretch["start"])) / SAMPLE_RATE,
                        (first + min(int(stretch["end"]), last - first)) / SAMPLE_RATE))
    return out


def window_centres(stretches) -> Tuple[np.ndarray, np.ndarray]:
    """The centre of every window (seconds) and the stretch it belongs to: windows every
    HOP_SECONDS from the stretch's start, at least one per stretch."""
    centres, owner = [], []
    for index, (start, end) in enumerate(stretches):
        count = max(1, int(np.ceil((end - start) / HOP_SECONDS)))
        centres.extend(start + (i + 0.5) * (end - start) / count for i in range(count))
        owner.extend([index] * count)
    return np.array(centres), np.array(owner)


def window_pitch(audio: np.ndarray, stretches, centres: np.ndarray,
                 owner: np.ndarray) -> np.ndarray:
    """The median log2 F0 of the speech each window covers (its 1.6 s within its stretch),
    NaN where none of it is voiced."""
    out = np.full(len(centres), np.nan)
    frames_per_second = SAMPLE_RATE / tone.HOP
    for index, (start, end) in enumerate(stretches):
        track = tone.log2_f0(audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)])
        for window in np.flatnonzero(owner == index):
            first = (centres[window] - WINDOW_SECONDS / 2 - start) * frames_per_second
            last = (centres[window] + WINDOW_SECONDS / 2 - start) * frames_per_second
            out[window] = tone.median_pitch(track, int(first), int(np.ceil(last)))
    return out


def pieces(owner: np.ndarray) -> np.ndarray:
    """A group number for each window: runs of PIECE_WINDOWS consecutive windows of one
    stretch (the last run of a stretch may be shorter)."""
    out = np.zeros(len(owner), dtype=int)
    group, run = 0, 0
    for i in range(len(owner)):
        if i and (owner[i] != owner[i - 1] or run == PIECE_WINDOWS):
            group, run = group + 1, 0
        out[i] = group
        run += 1
    return out


def smoothed(labels: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Each label replaced by the most common one among the SMOOTHING windows around it
    in the same stretch (ties keep it)."""
    out = labels.copy()
    half = SMOOTHING // 2
    for i in range(len(labels)):
        around = labels[max(0, i - half): i + half + 1][owner[max(0, i - half): i + half + 1] == owner[i]]
        counts = np.bincount(around)
        if counts.max() > counts[labels[i]]:
            out[i] = int(np.argmax(counts))
    return out


def to_turns(stretches, centres: np.ndarray, owner: np.ndarray,
             labels: np.ndarray) -> List[SpeakerTurn]:
    """Each window speaks for the part of its stretch nearest to its centre."""
    turns: List[SpeakerTurn] = []
    for index, (start, end) in enumerate(stretches):
        mine = np.flatnonzero(owner == index)
        bounds = [start, *((centres[mine[:-1]] + centres[mine[1:]]) / 2), end]
        for k, window in enumerate(mine):
            turns.append(SpeakerTurn(float(bounds[k]), float(bounds[k + 1]), int(labels[window])))
    return numbered_in_order(merged(turns, SAME_TURN_GAP))
