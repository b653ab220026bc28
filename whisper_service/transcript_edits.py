"""Corrections a person makes to a transcript: new text for a line, two lines merged, a line
split in two, a line given another speaker, a line's start or end moved.

`parse_edits(data)` reads the JSON a client sends (`{"edits": [...]}`) into typed edits;
`apply_edits(transcript, edits)` applies them in order and returns the transcript that
results. Both are pure and raise BadOption naming the edit, the line and the field at fault
("edits[2].start: ..."), so a client is told exactly what to fix and nothing is half done.

Lines are named by their place in the transcript (0 for the first), as it is when the edit
is applied: after a merge or a split, the lines that follow are numbered anew, and the
next edit in the list sees that numbering. The model's output is never changed here: the
job keeps it beside the edited transcript (queue/jobs.py), so it can be restored.

A line whose text changed loses its tokens, and its words are spelled anew from the text,
their times shared out over the line's (the writers lay out subtitles from words where a
transcript has them); a person wrote them, so their probability is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, List, Optional, Sequence, Tuple, Union

from whisper_service.errors import BadOption
from whisper_service.transcript import Segment, Transcript, Word

EDITS_FIELD = "edits"
MAX_EDITS = 1000  # in one request: more is a client gone wrong
MAX_TEXT_CHARS = 5000  # of one line's text
TIME_DECIMALS = 3  # times are kept to the millisecond, as the writers show them
OPERATIONS = ("text", "merge", "split", "speaker", "retime")


@dataclass(frozen=True)
class SetText:
    segment: int  # the line's place in the transcript
    text: str  # what it says now, cleaned (one line, no control characters)


@dataclass(frozen=True)
class Merge:
    segment: int  # this line and the one after it become one line


@dataclass(frozen=True)
class Split:
    segment: int
    at: int  # character offset into the line's text (without its leading space)
    time: Optional[float] = None  # where the second line starts; None: from words or length


@dataclass(frozen=True)
class SetSpeaker:
    segment: int
    speaker: str  # the id of one of the transcript's speakers ("S2")


@dataclass(frozen=True)
class Retime:
    segment: int
    start: Optional[float] = None  # None: unchanged
    end: Optional[float] = None


Edit = Union[SetText, Merge, Split, SetSpeaker, Retime]


# --- reading a request ---------------------------------------------------------------------


def parse_edits(data: Any) -> Tuple[Edit, ...]:
    """The edits of a request body `{"edits": [{"op": ..., "segment": ..., ...}, ...]}`."""
    if not isinstance(data, dict) or not isinstance(data.get(EDITS_FIELD), list):
        raise BadOption(EDITS_FIELD, 'send a JSON object {"edits": [...]}, each edit an object '
                        f'with "op" (one of {", ".join(OPERATIONS)}) and "segment"')
    items = data[EDITS_FIELD]
    if not items:
        raise BadOption(EDITS_FIELD, "the list of edits is empty")
    if len(items) > MAX_EDITS:
        raise BadOption(EDITS_FIELD, f"at most {MAX_EDITS} edits at once; {len(items)} were sent")
    return tuple(_parse_one(item, f"{EDITS_FIELD}[{n}]") for n, item in enumerate(items))


def _parse_one(item: Any, where: str) -> Edit:
    if not isinstance(item, dict):
        raise BadOption(where, "each edit is a JSON object")
    op = item.get("op")
    if op not in OPERATIONS:
        raise BadOption(f"{where}.op", f"{op!r} is no edit; use one of {', '.join(OPERATIONS)}")
    known = {"op", "segment", *_FIELDS[op]}
    unknown = sorted(set(item) - known)
    if unknown:
        raise BadOption(f"{where}.{unknown[0]}", f"a {op} edit takes no {unknown[0]!r}; it "
                        f"takes {', '.join(sorted(known))}")
    segment = _index(item.get("segment"), f"{where}.segment")
    if op == "text":
        return SetText(segment, _text(item.get("text"), f"{where}.text"))
    if op == "merge":
        return Merge(segment)
    if op == "split":
        time = item.get("time")
        return Split(segment, _index(item.get("at"), f"{where}.at"),
                     None if time is None else _seconds(time, f"{where}.time"))
    if op == "speaker":
        speaker = item.get("speaker")
        if not isinstance(speaker, str) or not speaker:
            raise BadOption(f"{where}.speaker", "give a speaker's id, such as \"S2\"")
        return SetSpeaker(segment, speaker)
    start, end = item.get("start"), item.get("end")
    if start is None and end is None:
        raise BadOption(where, "a retime edit needs a new start, a new end or both")
    return Retime(segment, None if start is None else _seconds(start, f"{where}.start"),
                  None if end is None else _seconds(end, f"{where}.end"))


_FIELDS = {"text": ("text",), "merge": (), "split": ("at", "time"), "speaker": ("speaker",),
           "retime": ("start", "end")}


def _index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadOption(where, f"must be a whole number from 0; got {value!r}")
    return value


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadOption(where, f"must be a number of seconds; got {value!r}")
    return round(float(value), TIME_DECIMALS)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadOption(where, "must be a string")
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    if not cleaned:
        raise BadOption(where, "a line cannot be empty; merge it with its neighbour instead")
    if len(cleaned) > MAX_TEXT_CHARS:
        raise BadOption(where, f"a line has at most {MAX_TEXT_CHARS} characters; this has "
                        f"{len(cleaned)}")
    return cleaned


# --- applying ------------------------------------------------------------------------------


def apply_edits(transcript: Transcript, edits: Sequence[Edit]) -> Transcript:
    """The transcript with every edit applied in order; BadOption for the first that cannot
    be (a line that does not exist, a time outside the audio or out of order, ...)."""
    segments = list(transcript.segments)
    speakers = {speaker.id for speaker in transcript.speakers}
    for n, edit in enumerate(edits):
        where = f"{EDITS_FIELD}[{n}]"
        if edit.segment >= len(segments):
            raise BadOption(f"{where}.segment", f"line {edit.segment} does not exist; the "
                            f"transcript has {len(segments)} lines (0 to {len(segments) - 1})")
        if isinstance(edit, SetText):
            segments[edit.segment] = _with_text(segments[edit.segment], edit.text)
        elif isinstance(edit, Merge):
            if edit.segment + 1 >= len(segments):
                raise BadOption(f"{where}.segment", f"line {edit.segment} is the last one; "
                                "there is no next line to merge it with")
            segments[edit.segment:edit.segment + 2] = [_merged(*segments[edit.segment:edit.segment + 2])]
        elif isinstance(edit, Split):
            segments[edit.segment:edit.segment + 1] = _split(segments[edit.segment], edit, where)
        elif isinstance(edit, SetSpeaker):
            if not speakers:
                raise BadOption(f"{where}.speaker", "this transcript has no speakers; "
                                "transcribe with speakers on to tell them apart")
            if edit.speaker not in speakers:
                raise BadOption(f"{where}.speaker", f"{edit.speaker!r} is not a speaker of this "
                                f"transcript; its speakers are {', '.join(sorted(speakers))}")
            segments[edit.segment] = _with_speaker(segments[edit.segment], edit.speaker)
        else:
            segments[edit.segment] = _retimed(segments, edit, transcript.duration, where)
        segments = [replace(segment, id=i) for i, segment in enumerate(segments)]
    return replace(transcript, segments=tuple(segments),
                   text="".join(segment.text for segment in segments))


def _spoken(text: str) -> str:
    """A line's text as the model writes it: one leading space."""
    return " " + text.strip()


def _with_text(segment: Segment, text: str) -> Segment:
    if text == segment.text.strip():
        return segment
    return replace(segment, text=_spoken(text), tokens=(),
                   words=_respelled(segment, text, segment.start, segment.end))


def _respelled(segment: Segment, text: str, start: float, end: float) -> Tuple[Word, ...]:
    """Words for a line's new text where it had words: the writers lay out cues from words
    when a transcript has them, so a line without would vanish from SRT and VTT. Their times
    share the line's in proportion to their length; a person wrote them: probability 1."""
    if not segment.words:
        return ()
    spoken = text.split()
    total = sum(len(word) + 1 for word in spoken)
    words, at = [], 0
    for word in spoken:
        begin = start + (end - start) * at / total
        at += len(word) + 1
        words.append(Word(word=" " + word, start=round(begin, TIME_DECIMALS),
                          end=round(start + (end - start) * at / total, TIME_DECIMALS),
                          probability=1.0, speaker=segment.speaker))
    return tuple(words)


def _merged(first: Segment, second: Segment) -> Segment:
    return replace(
        first, end=max(first.end, second.end), text=_spoken(f"{first.text.strip()} {second.text.strip()}"),
        tokens=first.tokens + second.tokens, words=first.words + second.words,
        avg_logprob=min(first.avg_logprob, second.avg_logprob),
        compression_ratio=max(first.compression_ratio, second.compression_ratio),
        no_speech_prob=min(first.no_speech_prob, second.no_speech_prob),
    )


def _split(segment: Segment, edit: Split, where: str) -> List[Segment]:
    text = segment.text.strip()
    at = edit.at
    words = _word_offsets(segment)
    if words is not None and edit.time is None and len(words) > 1:
        # at the start of the word nearest the cursor, so that each word stays whole
        at = min((offset for offset, _ in words[1:]), key=lambda offset: (abs(offset - at), -offset))
    left, right = text[:at].strip(), text[at:].strip()
    if not left or not right:
        raise BadOption(f"{where}.at", f"splitting line {edit.segment} at character {edit.at} "
                        f"leaves an empty line; give a place inside its text (1 to {len(text) - 1})")
    first_words: Tuple[Word, ...] = ()
    second_words: Tuple[Word, ...] = ()
    if words is not None:
        first_words = tuple(w for offset, w in words if offset < at)
        second_words = tuple(w for offset, w in words if offset >= at)
    if edit.time is not None:
        time = edit.time
    elif second_words:
        time = second_words[0].start
    else:  # no word timings: in proportion to the characters
        time = round(segment.start + (segment.end - segment.start) * at / len(text), TIME_DECIMALS)
    if not segment.start < time < segment.end:
        raise BadOption(f"{where}.time", f"the second line must start inside line "
                        f"{edit.segment} ({segment.start:.3f} to {segment.end:.3f} s); "
                        f"{time:.3f} is not")
    if words is None or edit.time is not None:  # the words no longer say where it breaks
        first_words = _respelled(segment, left, segment.start, time)
        second_words = _respelled(segment, right, time, segment.end)
    return [replace(segment, end=time, text=_spoken(left), tokens=(), words=first_words),
            replace(segment, start=time, text=_spoken(right), tokens=(), words=second_words)]


def _word_offsets(segment: Segment) -> Optional[List[Tuple[int, Word]]]:
    """Each word with the offset of its first character in the line's stripped text; None
    when the line has no words or they no longer spell its text."""
    joined = "".join(w.word for w in segment.words)
    if not segment.words or joined.strip() != segment.text.strip():
        return None
    offsets, position = [], len(joined.lstrip()) - len(joined)
    for word in segment.words:
        offsets.append((max(0, position + len(word.word) - len(word.word.lstrip())), word))
        position += len(word.word)
    return offsets


def _with_speaker(segment: Segment, speaker: str) -> Segment:
    return replace(segment, speaker=speaker,
                   words=tuple(replace(word, speaker=speaker) for word in segment.words))


def _retimed(segments: List[Segment], edit: Retime, duration: float, where: str) -> Segment:
    segment = segments[edit.segment]
    start = segment.start if edit.start is None else edit.start
    end = segment.end if edit.end is None else edit.end
    field = f"{where}.start" if edit.start is not None else f"{where}.end"
    if start < 0:
        raise BadOption(f"{where}.start", f"{start:.3f} s is before the audio begins")
    if duration > 0 and end > duration + 10 ** -TIME_DECIMALS:
        raise BadOption(f"{where}.end", f"{end:.3f} s is past the end of the audio "
                        f"({duration:.3f} s)")
    if start >= end:
        raise BadOption(field, f"line {edit.segment} would start ({start:.3f} s) at or after "
                        f"it ends ({end:.3f} s)")
    before = segments[edit.segment - 1] if edit.segment > 0 else None
    after = segments[edit.segment + 1] if edit.segment + 1 < len(segments) else None
    # an edge is checked against its neighbour only when it moved toward it: the model's lines
    # may overlap a little, and a line moved away from its neighbour is always fine
    if before is not None and start < before.end and start < segment.start:
        raise BadOption(f"{where}.start", f"line {edit.segment} would start ({start:.3f} s) "
                        f"before line {edit.segment - 1} ends ({before.end:.3f} s)")
    if after is not None and end > after.start and end > segment.end:
        raise BadOption(f"{where}.end", f"line {edit.segment} would end ({end:.3f} s) after "
                        f"line {edit.segment + 1} starts ({after.start:.3f} s)")
    return replace(segment, start=start, end=end, words=tuple(
        replace(w, start=_moved(w.start, segment, start, end), end=_moved(w.end, segment, start, end))
        for w in segment.words))


def _moved(time: float, segment: Segment, start: float, end: float) -> float:
    """A word's time in a retimed line: stretched with the line, so that the cues the writers
    lay out from words start and end where the line now does."""
    span = segment.end - segment.start
    share = (time - segment.start) / span if span > 0 else 0.0
    return round(start + (end - start) * min(max(share, 0.0), 1.0), TIME_DECIMALS)
