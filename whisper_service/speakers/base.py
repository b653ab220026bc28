"""What every diarization backend takes and gives: audio and hints in, speaker turns out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol

import numpy as np

from whisper_service.errors import ModelUnavailable, ServiceError

# reports how far diarization has come, 0.0 to 1.0
FractionCallback = Callable[[float], None]


@dataclass(frozen=True)
class SpeakerHints:
    """What the caller knows about the number of speakers; None: not known."""

    num_speakers: Optional[int] = None  # exactly this many
    min_speakers: Optional[int] = None  # at least
    max_speakers: Optional[int] = None  # at most


@dataclass(frozen=True)
class SpeakerTurn:
    """A stretch of audio in which one speaker talks."""

    start: float  # seconds from the start of the audio
    end: float
    speaker: int  # 0, 1, ... numbered in the order speakers first talk


class Diarizer(Protocol):
    """A diarization backend: 16 kHz mono float32 samples -> speaker turns in time order."""

    name: str

    def check(self) -> None:
        """Raise DiarizationUnavailable, with a sentence saying what to set, when this
        backend cannot run on this host; cheap, so a submit can call it."""

    def diarize(self, audio: np.ndarray, hints: SpeakerHints,
                progress: Optional[FractionCallback] = None) -> List[SpeakerTurn]:
        ...


class DiarizationUnavailable(ModelUnavailable):
    """The configured diarization backend cannot run here: a server-side condition, answered
    as a model that cannot be had is (503), with a sentence saying what to set."""

    def __init__(self, message: str):
        ServiceError.__init__(self, message, field="diarize")


def numbered_in_order(turns: List[SpeakerTurn]) -> List[SpeakerTurn]:
    """The same turns in time order, speakers renumbered 0, 1, ... by first appearance, so
    that 'Speaker 1' is whoever talks first whatever the clustering called them."""
    ordered = sorted(turns, key=lambda t: (t.start, t.end))
    numbers: dict = {}
    for turn in ordered:
        numbers.setdefault(turn.speaker, len(numbers))
    return [SpeakerTurn(t.start, t.end, numbers[t.speaker]) for t in ordered]


def merged(turns: List[SpeakerTurn], gap: float = 0.0) -> List[SpeakerTurn]:
    """Consecutive turns of the same speaker at most `gap` seconds apart become one."""
    out: List[SpeakerTurn] = []
    for turn in sorted(turns, key=lambda t: t.start):
        if out and out[-1].speaker == turn.speaker and turn.start - out[-1].end <= gap:
            out[-1] = SpeakerTurn(out[-1].start, max(out[-1].end, turn.end), turn.speaker)
        else:
            out.append(turn)
    return out
