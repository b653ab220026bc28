"""How far a transcription has come, as engines report it: audio seconds, and the segments
that are final so far, so that their text can be shown (or streamed) before the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Tuple, Union


@dataclass(frozen=True)
class FinishedSegment:
    """A segment no later step of the engine changes: its window is decoded for good."""

    start: float  # seconds from the start of the audio
    end: float
    text: str  # as the transcript will have it, with its leading space


@dataclass(frozen=True)
class Progress:
    done_seconds: float  # audio seconds transcribed so far
    total_seconds: float
    # every final segment so far, in the transcript's order (not only the new ones: a
    # report that is dropped, or throttled, loses nothing). Their text, joined, begins the
    # transcript's text; a report without segments says nothing new about them.
    segments: Tuple[FinishedSegment, ...] = ()

    @property
    def fraction(self) -> float:
        return 1.0 if self.total_seconds <= 0 else min(1.0, self.done_seconds / self.total_seconds)

    @property
    def text_so_far(self) -> str:
        """The text of the final segments, joined as the transcript joins them."""
        return "".join(segment.text for segment in self.segments)


def finished_segments(segments: Iterable[Union[Mapping, object]]) -> Tuple[FinishedSegment, ...]:
    """FinishedSegments of engine segment dicts or transcript Segments; those without
    text (whisper.transcribe empties an instantaneous one) are left out."""
    found = []
    for segment in segments:
        if isinstance(segment, Mapping):
            start, end, text = segment["start"], segment["end"], segment["text"]
        else:
            start, end, text = segment.start, segment.end, segment.text
        if text:
            found.append(FinishedSegment(float(start), float(end), str(text)))
    return tuple(found)


ProgressCallback = Callable[[Progress], None]
