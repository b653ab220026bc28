"""The typed result of a transcription, and its JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Tuple


@dataclass(frozen=True)
class Word:
    word: str  # as spoken, with its leading space
    start: float  # seconds from the start of the audio
    end: float
    probability: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Word":
        return cls(
            word=str(data["word"]),
            start=float(data["start"]),
            end=float(data["end"]),
            probability=float(data.get("probability", 0.0)),
        )


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int  # mel frame where the 30 s window that produced it began
    start: float
    end: float
    text: str
    tokens: Tuple[int, ...]
    temperature: float  # the temperature whose decode was kept
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: Tuple[Word, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Segment":
        return cls(
            id=int(data["id"]),
            seek=int(data.get("seek", 0)),
            start=float(data["start"]),
            end=float(data["end"]),
            text=str(data["text"]),
            tokens=tuple(int(t) for t in data.get("tokens", ())),
            temperature=float(data.get("temperature", 0.0)),
            avg_logprob=float(data.get("avg_logprob", 0.0)),
            compression_ratio=float(data.get("compression_ratio", 0.0)),
            no_speech_prob=float(data.get("no_speech_prob", 0.0)),
            words=tuple(Word.from_dict(w) for w in data.get("words") or ()),
        )


@dataclass(frozen=True)
class Transcript:
    task: str  # "transcribe" or "translate"
    language: str  # code of the spoken language, e.g. "en"
    language_probability: float  # 1.0 when the caller named the language
    duration: float  # seconds of decoded audio
    model: str  # the model that produced it (may differ from the one asked for)
    text: str
    segments: Tuple[Segment, ...] = field(default_factory=tuple)

    @property
    def has_word_timestamps(self) -> bool:
        return any(segment.words for segment in self.segments)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Transcript":
        return cls(
            task=str(data["task"]),
            language=str(data["language"]),
            language_probability=float(data.get("language_probability", 1.0)),
            duration=float(data["duration"]),
            model=str(data.get("model", "")),
            text=str(data.get("text", "")),
            segments=tuple(Segment.from_dict(s) for s in data.get("segments", ())),
        )

