"""Conversations with known speakers, spoken by espeak-ng: the ground truth the speaker
tests and bench/diarize.py score diarization against.

Voices differ as people do in the ways espeak-ng can vary: the variant (formants, breath,
male or female) and the pitch. Turns alternate between the speakers in a fixed, seeded
order; each turn's start and end are where its speech begins and ends (espeak-ng's own
leading and trailing silence trimmed), so the reference is exact to a few milliseconds.
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.config import bundled_ffmpeg

SAMPLE_RATE = 16000
# (espeak-ng voice, pitch 0-99): four voices that differ in variant and pitch
VOICES: Tuple[Tuple[str, int], ...] = (("en+m3", 0), ("en+f2", 99), ("en+f4", 30), ("en+whisper", 50))
WORDS_PER_MINUTE = 160
PAUSE_SECONDS = 0.4  # between turns, as in a calm conversation
SILENT_LEVEL = 0.01  # amplitude below which espeak's leading and trailing samples are silence
# Voices that differ as the people of a meeting do, in pitch and in accent: espeak-ng's
# American, British, Caribbean and Scottish English, male and female variants. The first two
# are an en-us male and an en-gb female voice (`en` is British English; `en-gb+f3` does not
# take the variant in espeak-ng 1.51 and gives the male voice). These four lie 0.19-0.38
# apart in the speaker encoder's cosine distance (the most distinct four of 64 candidates
# that keep the first two), where one voice's 2.4 s pieces lie about 0.07 from their mean.
DIALOGUE_VOICES: Tuple[Tuple[str, int], ...] = (
    ("en-us", 50), ("en+f3", 35), ("en-029+m7", 85), ("en-gb-scotland+f5", 80))
# Turns of one to five seconds, as people take them in a conversation
SHORT_LINES = (
    "Did you get my message about the launch?",
    "Sounds good.",
    "Yes, I read it this morning.",
    "Right.",
    "Can we move the review to Thursday afternoon?",
    "Thursday works for me, but not before three.",
    "Okay, three it is.",
    "Who is writing the notes this time?",
    "I can do it.",
    "Thanks, that helps a lot.",
    "One more thing: the demo needs a new laptop.",
    "Really? The old one was fine last week.",
    "Not since the update.",
    "Fine, I will order one today.",
    "Great, see you on Thursday.",
    "Bye for now.",
)
SENTENCES = (
    "Good morning, shall we start with the budget for next year?",
    "Yes, the numbers came in late on Friday afternoon.",
    "I think the travel costs went up again this spring.",
    "We could hold the meeting online and save the trip.",
    "That works for me, but the clients prefer to meet in person.",
    "Then let us plan one visit in the autumn and keep the rest remote.",
    "Please send me the summary after lunch so I can check it.",
    "Of course, and I will add the new schedule to the shared folder.",
    "The weather in the north was terrible all week long.",
    "Did anyone call the supplier about the late delivery?",
    "I spoke to them yesterday and they promised it for Monday.",
    "Let us hope the trucks are not stuck in the snow again.",
)


@dataclass(frozen=True)
class Conversation:
    audio: np.ndarray  # 16 kHz mono float32
    turns: Tuple[Tuple[float, float, int], ...]  # (start s, end s, speaker index) of each turn
    texts: Tuple[str, ...]  # what each turn says

    @property
    def speakers(self) -> int:
        return len({speaker for _, _, speaker in self.turns})

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def write(self, path: Path) -> Path:
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes((np.clip(self.audio, -1, 1) * 32767).astype("<i2").tobytes())
        return path


def speak(text: str, voice: str, pitch: int) -> np.ndarray:
    """One sentence in one voice, its silences trimmed, 16 kHz float32."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "turn.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(WORDS_PER_MINUTE),
                        "-w", str(path), text], check=True)
        audio = decode_file(str(path), DecodeLimits(max_duration=600, timeout=60,
                                                    ffmpeg=bundled_ffmpeg()))
    loud = np.flatnonzero(np.abs(audio) > SILENT_LEVEL)
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio


def conversation(speakers: int, turns: int, seed: int = 0,
                 voices: Sequence[Tuple[str, int]] = VOICES,
                 lines: Sequence[str] = SENTENCES) -> Conversation:
    """`turns` turns among the first `speakers` voices: every speaker talks, no one twice in
    a row (but one alone), the order otherwise drawn with `seed`."""
    rng = np.random.default_rng(seed)
    order: List[int] = list(range(speakers))
    while len(order) < turns:
        others = [s for s in range(speakers) if s != order[-1]] or order[-1:]
        order.append(int(rng.choice(others)))
    pause = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), np.float32)
    pieces, spans, texts = [pause], [], []
    position = len(pause)
    for index, speaker in enumerate(order[:turns]):
        text = lines[(seed * 5 + index) % len(lines)]
        speech = speak(text, *voices[speaker])
        spans.append((position / SAMPLE_RATE, (position + len(speech)) / SAMPLE_RATE, speaker))
        texts.append(text)
        pieces += [speech, pause]
        position += len(speech) + len(pause)
    return Conversation(np.concatenate(pieces), tuple(spans), tuple(texts))


def dialogue(speakers: int, turns: int, seed: int = 0,
             voices: Sequence[Tuple[str, int]] = DIALOGUE_VOICES) -> Conversation:
    """A conversation of short turns (SHORT_LINES, one to five seconds each) among the first
    `speakers` of `voices`, in the seeded order `conversation` draws."""
    return conversation(speakers, turns, seed=seed, voices=voices, lines=SHORT_LINES)


def line_labels(conversation: Conversation, found) -> List[Tuple[int, int]]:
    """(who said it, the found speaker that covers most of it) for every turn; `found` is
    (start, end, label) triples."""
    out = []
    for start, end, who in conversation.turns:
        overlap: dict = {}
        for first, last, label in found:
            overlap[label] = overlap.get(label, 0.0) + max(0.0, min(end, last) - max(start, first))
        out.append((who, max(overlap, key=overlap.get) if overlap else -1))
    return out


def wrong_lines(conversation: Conversation, found) -> int:
    """Turns labelled with another voice's speaker, under the mapping of found speakers to
    voices that gets the most turns right (each found speaker stands for one voice)."""
    from scipy.optimize import linear_sum_assignment

    labels = line_labels(conversation, found)
    counts = np.zeros((conversation.speakers, max(2, max(h for _, h in labels) + 2)))
    for who, label in labels:
        counts[who, label] += 1  # -1 (nothing found) lands in the last column
    rows, columns = linear_sum_assignment(-counts[:, :-1])
    return len(labels) - int(counts[rows, columns].sum())


def diarization_error_rate(reference, hypothesis, collar: float = 0.0) -> float:
    """pyannote.metrics' DER of speaker turns (start, end, label) against the reference,
    over the whole reference, with the best mapping of labels; `collar` seconds around
    each reference boundary are not scored (0: every frame counts)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns) -> Annotation:
        result = Annotation()
        for start, end, label in turns:
            result[Segment(start, end)] = str(label)
        return result

    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    # scored from 0 to the last moment either side has speech
    extent = max(end for _, end, _ in [*reference, *hypothesis])
    return float(metric(annotation(reference), annotation(hypothesis),
                        uem=Timeline([Segment(0.0, extent)])))
