"""Speaker turns + a transcript -> the transcript with a speaker on every segment and word.

A word belongs to the speaker whose turns overlap it most (the nearest turn when none
does); a segment whose words change speaker is split there, at word boundaries. Without
word timings a segment is split where a turn boundary falls inside it, its text cut at the
space nearest to the same share of its characters. Split pieces keep the segment's decoding
figures but no tokens: they are not one decode's output.
"""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from whisper_service.transcript import Segment, Speaker, Transcript, Word
from whisper_service.speakers.base import SpeakerTurn

MIN_PIECE_SECONDS = 0.5  # a segment without words is split only into pieces at least this long


def speaker_id(number: int) -> str:
    return f"S{number + 1}"


def default_name(number: int) -> str:
    return f"Speaker {number + 1}"


def assign_speakers(transcript: Transcript, turns: Sequence[SpeakerTurn]) -> Transcript:
    """The transcript with speakers; segments renumbered after splits. No turns (no speech
    found): the transcript unchanged, with no speakers."""
    if not turns:
        return transcript
    spans = np.array([(t.start, t.end) for t in turns], dtype=float)
    labels = np.array([t.speaker for t in turns])
    pieces: List[Segment] = []
    for segment in transcript.segments:
        if segment.words:
            pieces.extend(_split_by_words(segment, spans, labels))
        else:
            pieces.extend(_split_by_time(segment, spans, labels))
    # speakers numbered by first appearance in the transcript: "Speaker 1" talks first
    order: dict = {}
    for piece in pieces:
        order.setdefault(piece.speaker, len(order))
    segments = tuple(
        replace(piece, id=index, speaker=speaker_id(order[piece.speaker]),
                words=tuple(replace(w, speaker=speaker_id(order[piece.speaker])) for w in piece.words))
        for index, piece in enumerate(pieces)
    )
    speakers = tuple(Speaker(speaker_id(n), default_name(n)) for n in range(len(order)))
    return replace(transcript, segments=segments, speakers=speakers)


def _speaker_of(start: float, end: float, spans: np.ndarray, labels: np.ndarray) -> int:
    overlap = np.clip(np.minimum(spans[:, 1], end) - np.maximum(spans[:, 0], start), 0, None)
    if overlap.max() > 0:
        totals = np.bincount(labels, weights=overlap)
        return int(np.argmax(totals))
    middle = (start + end) / 2
    distance = np.maximum(spans[:, 0] - middle, middle - spans[:, 1])
    return int(labels[np.argmin(distance)])


def _split_by_words(segment: Segment, spans, labels) -> List[Segment]:
    owners = [_speaker_of(w.start, w.end, spans, labels) for w in segment.words]
    runs: List[Tuple[int, List[Word]]] = []
    for word, owner in zip(segment.words, owners):
        if runs and (runs[-1][0] == owner or not word.word.strip()):
            runs[-1][1].append(word)
        else:
            runs.append((owner, [word]))
    if len(runs) == 1:
        return [replace(segment, speaker=runs[0][0])]
    out = []
    for index, (owner, words) in enumerate(runs):
        out.append(replace(
            segment, tokens=(), speaker=owner, words=tuple(words),
            text="".join(w.word for w in words),
            start=segment.start if index == 0 else words[0].start,
            end=segment.end if index == len(runs) - 1 else words[-1].end,
        ))
    return out


def _split_by_time(segment: Segment, spans, labels) -> List[Segment]:
    """Pieces of the segment between the turn boundaries inside it."""
    inside = sorted({float(b) for b in spans.ravel() if segment.start < b < segment.end})
    bounds = [segment.start, *inside, segment.end]
    parts: List[Tuple[float, float, int]] = []
    for start, end in zip(bounds, bounds[1:]):
        owner = _speaker_of(start, end, spans, labels)
        if parts and (parts[-1][2] == owner or end - start < MIN_PIECE_SECONDS):
            parts[-1] = (parts[-1][0], end, parts[-1][2])
        else:
            parts.append((start, end, owner))
    if len(parts) > 1 and parts[0][1] - parts[0][0] < MIN_PIECE_SECONDS:
        parts[1] = (parts[0][0], parts[1][1], parts[1][2])
        parts.pop(0)
    if len(parts) == 1:
        return [replace(segment, speaker=_speaker_of(segment.start, segment.end, spans, labels))]
    texts = _cut_text(segment.text, [(e - segment.start) / (segment.end - segment.start)
                                     for _, e, _ in parts[:-1]])
    if texts is None:  # too few words to cut: one speaker, the one who says most of it
        return [replace(segment, speaker=_speaker_of(segment.start, segment.end, spans, labels))]
    return [replace(segment, tokens=(), speaker=owner, start=start, end=end, text=text)
            for (start, end, owner), text in zip(parts, texts)]


def _cut_text(text: str, shares: Sequence[float]) -> Optional[List[str]]:
    """The text cut at the spaces nearest each share of its length; None when there are
    fewer words than pieces."""
    spaces = [i for i, c in enumerate(text) if c == " " and i > 0 and text[:i].strip()]
    if len(spaces) < len(shares):
        return None
    cuts: List[int] = []
    for share in shares:
        target = share * len(text)
        free = [s for s in spaces if not cuts or s > cuts[-1]]
        if not free:
            return None
        cuts.append(min(free, key=lambda s: abs(s - target)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]
