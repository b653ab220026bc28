"""Speakers of a live stream, named one utterance at a time.

A file is diarized once its audio is whole: embedded.py clusters all its windows at once. A
live session has its audio an utterance at a time and must say who spoke each one when it
ends, with the same label for the same voice all session long. OnlineSpeakers keeps each
speaker's mean voice (GE2E, encoder.py) and mean pitch (pitch.py), as clustering.py's second
pass does: an utterance's voice is the mean of its 1.6 s windows, and it joins the nearest
speaker when they are within NEW_SPEAKER_DISTANCE, or becomes a new speaker. One utterance's
voice scatters more than a file's pieces do (one to five seconds, no second pass to move it
later), and a speaker heard for only a few seconds has a mean that is still moving, so the
distance to such a young speaker may be YOUNG_MARGIN larger. An utterance too short to trust
(fewer than clustering.SURE_WINDOWS windows: "Right.", "Yes.") joins the nearest speaker there
is and never starts one. Past `max_speakers`, the nearest speaker takes it. A speaker's mean
moves with every utterance it gets, weighted by windows.

Labels are numbers from 0 in order of first appearance, as numbered_in_order gives files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from whisper.audio import SAMPLE_RATE

from whisper_service.speakers import clustering
from whisper_service.speakers import encoder as voice
from whisper_service.speakers.base import SpeakerHints
from whisper_service.speakers.embedded import WINDOW_SECONDS, window_centres, window_pitch

MIN_SECONDS = 0.3  # an utterance shorter than this has no voice to tell (a click, a cough)
# Measured on bench/diarize.py's dialogues and conversations fed one turn at a time (252
# turns, 2-4 voices; bench/RESULTS.md): a single cut mislabels 11-13 turns wherever it is put
# between 0.28 and 0.42 (young speakers split) and more above 0.5 (voices merge); 0.36 with
# 0.1 more for speakers heard under YOUNG_WINDOWS mislabels 6, 5 of them espeak-ng's whisper
# voice, which has no pitch, taken for the man it sounds like.
NEW_SPEAKER_DISTANCE = 0.36
YOUNG_WINDOWS = 16  # 6.4 s of a speaker's speech, after which their mean voice is settled
YOUNG_MARGIN = 0.1


@dataclass(frozen=True)
class Voice:
    """What an utterance sounds like."""
    embedding: np.ndarray  # (256,) unit vector: the mean of its windows' GE2E embeddings
    pitch: float  # median log2 F0 of its windows, NaN when none is voiced
    windows: int  # how many 1.6 s windows (every embedded.HOP_SECONDS) it holds


def utterance_voice(audio: np.ndarray, device: str = "cpu") -> Optional[Voice]:
    """The voice of one utterance (16 kHz float32 samples, shape (n,)); None when it is
    shorter than MIN_SECONDS or silent."""
    seconds = len(audio) / SAMPLE_RATE
    if seconds < MIN_SECONDS or not np.any(audio):
        return None
    level = voice.normalize_volume(audio)
    mel = voice.mel_spectrogram(level)
    stretches = [(0.0, seconds)]
    centres, owner = window_centres(stretches)
    starts = np.clip(np.round((centres - WINDOW_SECONDS / 2) * SAMPLE_RATE / voice.HOP),
                     0, None).astype(int)
    embeddings = voice.embed_frames(voice.load_encoder(device), mel, starts, device)
    pitches = window_pitch(level, stretches, centres, owner)
    known = pitches[~np.isnan(pitches)]
    mean = embeddings.mean(axis=0)
    return Voice(embedding=mean / max(float(np.linalg.norm(mean)), 1e-12),
                 pitch=float(np.median(known)) if len(known) else float("nan"),
                 windows=len(embeddings))


class OnlineSpeakers:
    """The speakers met so far in one stream; label() is safe to call from any thread."""

    def __init__(self, hints: SpeakerHints = SpeakerHints(), device: str = "cpu",
                 threshold: float = NEW_SPEAKER_DISTANCE):
        """hints: max_speakers (or num_speakers) caps how many speakers are told apart;
        min_speakers has no meaning here and is ignored."""
        self.device = device
        self.threshold = threshold
        self.most = hints.num_speakers or hints.max_speakers or None
        self._voices: List[np.ndarray] = []  # each speaker's summed (not unit) embedding
        self._pitch: List[List[float]] = []  # each speaker's [sum of pitch x windows, windows]
        self._windows: List[int] = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._voices)

    def label(self, audio: np.ndarray) -> Optional[int]:
        """The speaker (0, 1, ...) of one utterance's audio; None when it has no voice to
        tell (too short, silent) and no speaker has been met yet to give it."""
        heard = utterance_voice(audio, self.device)
        with self._lock:
            if heard is None:
                return None
            return self._place(heard)

    def _place(self, heard: Voice) -> int:
        if not self._voices:
            return self._new(heard)
        apart = self._distances(heard)
        nearest = int(np.argmin(apart))
        sure = heard.windows >= clustering.SURE_WINDOWS
        room = self.most is None or self.count < self.most
        limit = self.threshold + (YOUNG_MARGIN if self._windows[nearest] < YOUNG_WINDOWS else 0.0)
        if sure and room and apart[nearest] > limit:
            return self._new(heard)
        self._join(nearest, heard)
        return nearest

    def _distances(self, heard: Voice) -> np.ndarray:
        voices = np.stack([v / max(float(np.linalg.norm(v)), 1e-12) for v in self._voices])
        tones = np.array([total / count if count else np.nan for total, count in self._pitch])
        return clustering.distances(heard.embedding[None, :], np.array([heard.pitch]),
                                    voices, tones)[0]

    def _new(self, heard: Voice) -> int:
        self._voices.append(np.zeros_like(heard.embedding))
        self._pitch.append([0.0, 0])
        self._windows.append(0)
        self._join(len(self._voices) - 1, heard)
        return len(self._voices) - 1

    def _join(self, speaker: int, heard: Voice) -> None:
        self._voices[speaker] = self._voices[speaker] + heard.embedding * heard.windows
        self._windows[speaker] += heard.windows
        if not np.isnan(heard.pitch):
            self._pitch[speaker][0] += heard.pitch * heard.windows
            self._pitch[speaker][1] += heard.windows
