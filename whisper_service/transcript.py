"""The typed result of a transcription, and its JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Mapping, Optional, Tuple

SPEAKER_KEY = "speaker"  # of a segment or word in the JSON form, present only when diarized


@dataclass(frozen=True)
class Word:
    word: str  # as spoken, with its leading space
    start: float  # seconds from the start of the audio
    end: float
    probability: float
    speaker: Optional[str] = None  # id of a Speaker of the transcript, when diarized

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Word":
        return cls(
            word=str(data["word"]),
            start=float(data["start"]),
            end=float(data["end"]),
            probability=float(data.get("probability", 0.0)),
            speaker=_optional_text(data.get(SPEAKER_KEY)),
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
    speaker: Optional[str] = None  # id of a Speaker of the transcript, when diarized

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
            speaker=_optional_text(data.get(SPEAKER_KEY)),
        )


@dataclass(frozen=True)
class Speaker:
    id: str  # "S1", "S2", ...: what segments and words refer to; never changes
    name: str  # shown in every output: "Speaker 1" until a person renames it


@dataclass(frozen=True)
class Transcript:
    task: str  # "transcribe" or "translate"
    language: str  # code of the spoken language, e.g. "en"
    language_probability: float  # 1.0 when the caller named the language
    duration: float  # seconds of decoded audio
    model: str  # the model that produced it (may differ from the one asked for)
    text: str
    segments: Tuple[Segment, ...] = field(default_factory=tuple)
    speakers: Tuple[Speaker, ...] = ()  # in order of first appearance; empty: not diarized

    @property
    def has_word_timestamps(self) -> bool:
        return any(segment.words for segment in self.segments)

    @property
    def speaker_names(self) -> Dict[str, str]:
        """Speaker id -> the name shown for it."""
        return {speaker.id: speaker.name for speaker in self.speakers}

    def renamed(self, names: Mapping[str, str]) -> "Transcript":
        """The transcript with speakers given new names (id -> name); others keep theirs."""
        return replace(self, speakers=tuple(
            replace(s, name=names.get(s.id, s.name)) for s in self.speakers))

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.speakers:  # not diarized: the same JSON as before speakers existed
            del data["speakers"]
            for segment in data["segments"]:
                segment.pop(SPEAKER_KEY)
                for word in segment["words"]:
                    word.pop(SPEAKER_KEY)
        return data

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
            speakers=tuple(Speaker(id=str(s["id"]), name=str(s["name"]))
                           for s in data.get("speakers") or ()),
        )


def _optional_text(value: Any) -> Optional[str]:
    return None if value is None else str(value)

