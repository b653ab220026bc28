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
is unless it lies FAR_DISTANCE from every one (a second voice's first "Sounds good."). Past
`max_speakers`, the nearest speaker takes it. A speaker's mean
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
TRIM_FRAME = 320  # 20 ms: the frames whose loudness finds where an utterance's speech lies
QUIET = 0.05  # of the loudest frame's RMS (-26 dB): quieter frames at the ends are cut off
SILENT_RMS = 1e-3  # frames this quiet are silence however quiet the rest is
# Measured on bench/diarize.py's dialogues and four-voice conversations, one turn at a time
# (bench/RESULTS.md): one cut for every speaker mislabels 19-26 of 192 turns between 0.28
# and 0.4 (young speakers split, or voices merge); 0.1 more for speakers heard under
# YOUNG_WINDOWS and a short utterance's own speaker past FAR_DISTANCE, 12, 5 of them
# espeak-ng's whisper voice (no pitch) taken for the man it sounds like.
NEW_SPEAKER_DISTANCE = 0.32
YOUNG_WINDOWS = 16  # 6.4 s of a speaker's speech, after which their mean voice is settled
YOUNG_MARGIN = 0.1
FAR_DISTANCE = 0.6  # a short utterance this far from every speaker is a new one


@dataclass(frozen=True)
class Voice:
    """What an utterance sounds like."""
    embedding: np.ndarray  # (256,) unit vector: the mean of its windows' GE2E embeddings
    pitch: float  # median log2 F0 of its windows, NaN when none is voiced
    windows: int  # how many 1.6 s windows (every embedded.HOP_SECONDS) it holds


def utterance_voice(audio: np.ndarray, device: str = "cpu") -> Optional[Voice]:
    """The voice of one utterance (16 kHz float32 samples, shape (n,)); None when it is
    shorter than MIN_SECONDS or silent."""
    audio = _speech_only(audio)
    seconds = len(audio) / SAMPLE_RATE
    if seconds < MIN_SECONDS:
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


def _speech_only(audio: np.ndarray) -> np.ndarray:
    """The audio from its first to its last loud 20 ms frame (louder than QUIET of the
    loudest): the silence a live utterance carries before and after its speech (its pad,
    the gate's wait for the end) would otherwise be windows of no voice at all."""
    frames = len(audio) // TRIM_FRAME
    if frames == 0:
        return audio[:0]
    rms = np.sqrt(np.mean(np.square(audio[:frames * TRIM_FRAME].reshape(frames, TRIM_FRAME),
                                    dtype=np.float64), axis=1))
    loud = np.flatnonzero(rms > max(SILENT_RMS, QUIET * rms.max()))
    if not len(loud):
        return audio[:0]
    return audio[loud[0] * TRIM_FRAME:(loud[-1] + 1) * TRIM_FRAME]


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
        if room and ((sure and apart[nearest] > limit) or apart[nearest] > FAR_DISTANCE):
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
