"""Render a Transcript as TXT, SRT, WebVTT, TSV or JSON text.

TXT, SRT, VTT and TSV reproduce openai-whisper's command-line writers (whisper/utils.py)
byte for byte, layout options and quirks included, so a file from this service matches one
from `whisper audio.wav`. The differences are for safety only:

* spoken text cannot break a cue: "-->" (or "--->", ...) becomes "->", and line breaks
  inside spoken text become one space; the layout's own line breaks stay;
* a cue whose text is empty (a segment of only spaces or control characters) is left out
  of SRT and VTT: a blank line right after its timing would end it, and players would read
  the next cue's number as its text;
* TSV turns line breaks into spaces, as it does tabs;
* a negative timestamp is written as zero instead of failing an assertion.

JSON is this service's own shape, `Transcript.to_dict()`, not whisper's result dict.

A diarized transcript (one with speakers) carries them in every format, by the names the
speakers have now (renamed or "Speaker 1"): TXT and SRT put "Name: " before a line or cue
whose speaker differs from the one before; VTT gives every cue a voice span
(`<v Name>text`); TSV adds a speaker column; JSON holds each segment's and word's speaker
id and the `speakers` list of ids and names. With word timings, no cue spans two speakers.
Transcripts without speakers are written exactly as before.

Every function is pure: it takes a transcript and returns a str; none touches files.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from whisper_service.errors import BadOption
from whisper_service.options import SubtitleLayout
from whisper_service.transcript import Segment, Transcript

FORMATS = ("txt", "srt", "vtt", "tsv", "json")
MEDIA_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "json": "application/json; charset=utf-8",
}

LONG_PAUSE = 3.0  # seconds between two words' starts that end a cue (when re-flowing)
NO_LIMIT = 1000  # whisper's stand-in for an unset line width or words-per-line
VTT_HEADER = "WEBVTT\n\n"
TSV_HEADER = "start\tend\ttext\n"
TSV_SPEAKER_HEADER = "start\tend\ttext\tspeaker\n"
SPEAKER_SEPARATOR = ": "  # after a speaker's name in TXT and SRT

# "-->" separates a cue's start and end; in spoken text it would start a bogus timing line.
_ARROW = re.compile(r"-{2,}>")
# A line break ends a cue's text (a blank line ends the cue), so spoken text gets none.
_LINE_BREAK = re.compile(r"\s*[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]\s*")

class Cue(NamedTuple):
    start: float  # seconds
    end: float
    text: str  # may hold the layout's line breaks
    speaker: Optional[str] = None  # speaker id, when diarized


class _Piece(NamedTuple):
    """One word in a cue; `text` begins with "\\n" where the word starts a new line."""

    start: float
    end: float
    text: str
    speaker: Optional[str] = None


# --- timestamps ---------------------------------------------------------------------------


def _milliseconds(seconds: float) -> int:
    # round() as whisper does (half to even); clamp instead of asserting non-negative
    return max(0, round(seconds * 1000.0))


def format_timestamp(
    seconds: float, *, always_include_hours: bool = False, decimal_marker: str = "."
) -> str:
    """3725.5 -> '01:02:05.500'; hours appear only when non-zero unless asked for."""
    hours, rest = divmod(_milliseconds(seconds), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole_seconds, millis = divmod(rest, 1_000)
    hours_part = f"{hours:02d}:" if always_include_hours or hours else ""
    return f"{hours_part}{minutes:02d}:{whole_seconds:02d}{decimal_marker}{millis:03d}"


def _timing(start: float, end: float, hours: bool, marker: str) -> str:
    """A cue's timing line, e.g. '00:01.000 --> 00:02.500'."""
    return " --> ".join(
        format_timestamp(t, always_include_hours=hours, decimal_marker=marker) for t in (start, end)
    )


# --- text that is safe inside a cue --------------------------------------------------------


def _one_line(text: str) -> str:
    return _LINE_BREAK.sub(" ", text)


def _no_arrows(text: str) -> str:
    return _ARROW.sub("->", text)


def _tsv_text(text: str) -> str:
    # a tab or a line break inside the text would shift or split the row
    return _one_line(text.strip()).replace("\t", " ")


def _underline(text: str) -> str:
    # keep the leading space or line break outside the tag, as whisper does
    word = text.lstrip()
    return f"{text[: len(text) - len(word)]}<u>{word}</u>"


# --- cues shared by SRT and VTT ------------------------------------------------------------


def _subtitles(segments: Tuple[Segment, ...], layout: SubtitleLayout) -> Iterator[List[_Piece]]:
    """Group words into cues and lines exactly as whisper's SubtitlesWriter does."""
    # Unless both a width and a line count are set, no cue spans two segments.
    keep_segments = layout.max_line_count is None or layout.max_line_width is None
    max_width = layout.max_line_width or NO_LIMIT
    words_per_chunk = layout.max_words_per_line or NO_LIMIT
    cue: List[_Piece] = []
    line_len = 0
    line_count = 1
    last_start: Optional[float] = None
    for segment in segments:
        words = segment.words
        for chunk in range(0, len(words), words_per_chunk):
            for i, word in enumerate(words[chunk : chunk + words_per_chunk]):
                text = _one_line(word.word)
                # whisper measures a pause from the previous word's start, not its end
                long_pause = (
                    not keep_segments and last_start is not None
                    and word.start - last_start > LONG_PAUSE
                )
                # keeping segments, every chunk of max_words_per_line words starts a new cue;
                # so does every change of speaker
                chunk_break = bool(cue) and (
                    (keep_segments and i == 0) or cue[-1].speaker != segment.speaker)
                fits = line_len + len(text) <= max_width  # counts the leading space
                if line_len > 0 and fits and not long_pause and not chunk_break:
                    line_len += len(text)
                else:
                    text = text.strip()
                    full = layout.max_line_count is not None and (
                        long_pause or line_count >= layout.max_line_count
                    )
                    if chunk_break or (cue and full):
                        yield cue
                        cue, line_count = [], 1
                    elif line_len > 0:  # a whitespace-only word leaves no line to break
                        line_count += 1
                        text = "\n" + text
                    line_len = len(text.strip())
                cue.append(_Piece(word.start, word.end, text, segment.speaker))
                last_start = word.start
    if cue:
        yield cue


def _cues(transcript: Transcript, layout: SubtitleLayout) -> Iterator[Cue]:
    """The (start, end, text) cues that SRT and VTT write, in order."""
    if not transcript.has_word_timestamps:
        # one cue per segment: the layout needs word timings to re-flow anything
        for segment in transcript.segments:
            yield Cue(segment.start, segment.end, _no_arrows(_one_line(segment.text.strip())),
                      segment.speaker)
        return
    for cue in _subtitles(transcript.segments, layout):
        plain = _no_arrows("".join(piece.text for piece in cue))
        speaker = cue[0].speaker
        if not layout.highlight_words:
            yield Cue(cue[0].start, cue[-1].end, plain, speaker)
            continue
        # one cue per word with that word underlined; a gap between words shows plain text
        shown_until = cue[0].start
        for i, piece in enumerate(cue):
            if _milliseconds(shown_until) != _milliseconds(piece.start):
                yield Cue(shown_until, piece.start, plain, speaker)
            text = "".join(_underline(p.text) if j == i else p.text for j, p in enumerate(cue))
            yield Cue(piece.start, piece.end, _no_arrows(text), speaker)
            shown_until = piece.end


# --- the formats ---------------------------------------------------------------------------


# --- speakers ------------------------------------------------------------------------------


def _speaker_name(transcript: Transcript, speaker: Optional[str]) -> Optional[str]:
    """The name shown for a speaker id, safe on one line of a cue; None: no speaker."""
    if speaker is None or not transcript.speakers:
        return None
    name = transcript.speaker_names.get(speaker, speaker)
    return _no_arrows(_one_line(name)).strip() or speaker


def _with_changes(transcript: Transcript, items) -> Iterator[Tuple[Optional[str], object]]:
    """(the speaker's name where it differs from the item before, else None; the item) for
    items (segments or cues) that have a `speaker`."""
    previous: Optional[str] = None
    for item in items:
        name = _speaker_name(transcript, item.speaker)
        yield (name if name is not None and item.speaker != previous else None), item
        previous = item.speaker


def _voice(name: str) -> str:
    """A WebVTT voice span's annotation: '&', '<' and '>' escaped, as the format asks."""
    return name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_txt(transcript: Transcript, layout: SubtitleLayout = SubtitleLayout()) -> str:
    """One line per segment; "Name: " before a line whose speaker differs from the one before."""
    return "".join(
        (f"{name}{SPEAKER_SEPARATOR}" if name else "") + segment.text.strip() + "\n"
        for name, segment in _with_changes(transcript, transcript.segments)
    )


def write_srt(transcript: Transcript, layout: SubtitleLayout = SubtitleLayout()) -> str:
    """Numbered cues with HH:MM:SS,mmm times; "Name: " before a cue whose speaker differs
    from the one before."""
    return "".join(
        f"{number}\n{_timing(cue.start, cue.end, True, ',')}\n"
        f"{name + SPEAKER_SEPARATOR if name else ''}{cue.text}\n\n"
        for number, (name, cue) in enumerate(
            _with_changes(transcript, _shown_cues(transcript, layout)), start=1)
    )


def write_vtt(transcript: Transcript, layout: SubtitleLayout = SubtitleLayout()) -> str:
    """WebVTT cues with MM:SS.mmm times (HH: only from one hour on); a diarized cue is a
    voice span, `<v Speaker 1>text`."""
    return VTT_HEADER + "".join(
        f"{_timing(cue.start, cue.end, False, '.')}\n{_voiced(transcript, cue)}\n\n"
        for cue in _shown_cues(transcript, layout)
    )


def _voiced(transcript: Transcript, cue: Cue) -> str:
    name = _speaker_name(transcript, cue.speaker)
    return f"<v {_voice(name)}>{cue.text}" if name else cue.text


def _shown_cues(transcript: Transcript, layout: SubtitleLayout) -> Iterator[Cue]:
    return (cue for cue in _cues(transcript, layout) if cue.text.strip())


def write_tsv(transcript: Transcript, layout: SubtitleLayout = SubtitleLayout()) -> str:
    """start<TAB>end<TAB>text per segment, times in whole milliseconds; diarized, a fourth
    column holds the speaker's name."""
    if not transcript.speakers:
        return TSV_HEADER + "".join(
            f"{_milliseconds(s.start)}\t{_milliseconds(s.end)}\t{_tsv_text(s.text)}\n"
            for s in transcript.segments
        )
    return TSV_SPEAKER_HEADER + "".join(
        f"{_milliseconds(s.start)}\t{_milliseconds(s.end)}\t{_tsv_text(s.text)}\t"
        f"{_tsv_text(_speaker_name(transcript, s.speaker) or '')}\n"
        for s in transcript.segments
    )


def write_json(transcript: Transcript, layout: SubtitleLayout = SubtitleLayout()) -> str:
    """The whole transcript; `Transcript.from_dict(json.loads(...))` gives it back."""
    return json.dumps(transcript.to_dict(), ensure_ascii=False)


_WRITERS: Dict[str, Callable[[Transcript, SubtitleLayout], str]] = {
    "txt": write_txt,
    "srt": write_srt,
    "vtt": write_vtt,
    "tsv": write_tsv,
    "json": write_json,
}


def write(fmt: str, transcript: Transcript, layout: SubtitleLayout = SubtitleLayout()) -> str:
    """The transcript in format `fmt`, one of FORMATS."""
    writer = _WRITERS.get(fmt)
    if writer is None:
        raise BadOption("format", f"must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return writer(transcript, layout)

