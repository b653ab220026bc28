"""Tests for whisper_service.writers: golden strings, safety, and byte-for-byte agreement
with openai-whisper's own command-line writers."""

from __future__ import annotations

import json
import random
import re

import pytest
from whisper.utils import format_timestamp as whisper_format_timestamp, get_writer

from whisper_service.errors import BadOption
from whisper_service.options import SubtitleLayout
from whisper_service.transcript import Segment, Transcript, Word
from whisper_service.writers import (
    FORMATS,
    MEDIA_TYPES,
    format_timestamp,
    write,
    write_json,
    write_srt,
    write_tsv,
    write_txt,
    write_vtt,
)

SRT_TIMING = re.compile(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$")
VTT_TIMING = re.compile(r"^(\d\d:)?\d\d:\d\d\.\d{3} --> (\d\d:)?\d\d:\d\d\.\d{3}$")


# --- building transcripts -----------------------------------------------------------------


def segment(id, start, end, text, words=()):
    return Segment(
        id=id, seek=0, start=start, end=end, text=text, tokens=(50364, 1000 + id),
        temperature=0.0, avg_logprob=-0.25, compression_ratio=1.5, no_speech_prob=0.01,
        words=tuple(Word(w, s, e, 0.9) for w, s, e in words),
    )


def transcript(*segments, language="en"):
    return Transcript(
        task="transcribe", language=language, language_probability=1.0,
        duration=max((s.end for s in segments), default=0.0), model="tiny",
        text="".join(s.text for s in segments), segments=tuple(segments),
    )


TWO = transcript(
    segment(0, 0.0, 2.5, " Hello world."),
    segment(1, 2.5, 4.75, " How are you?"),
)

TWO_WORDS = transcript(
    segment(0, 0.0, 2.5, " Hello world.", [(" Hello", 0.2, 0.6), (" world.", 0.7, 1.2)]),
    segment(1, 2.5, 4.75, " How are you?",
            [(" How", 2.6, 2.9), (" are", 2.9, 3.1), (" you?", 3.2, 4.5)]),
)

EMPTY = transcript()


def parse_srt(text):
    """Cue blocks as (number, timing line, text lines); fails on any malformed block."""
    cues = []
    for block in text.split("\n\n"):
        if not block:
            continue
        number, timing, *lines = block.split("\n")
        assert number == str(len(cues) + 1), block
        assert SRT_TIMING.match(timing), block
        assert lines and all("-->" not in line for line in lines), block
        cues.append((number, timing, lines))
    return cues


def parse_vtt(text):
    assert text.startswith("WEBVTT\n\n")
    cues = []
    for block in text[len("WEBVTT\n\n"):].split("\n\n"):
        if not block:
            continue
        timing, *lines = block.split("\n")
        assert VTT_TIMING.match(timing), block
        assert lines and all("-->" not in line for line in lines), block
        cues.append((timing, lines))
    return cues


# --- golden strings -----------------------------------------------------------------------


def test_txt_golden():
    assert write_txt(TWO) == "Hello world.\nHow are you?\n"


def test_srt_golden():
    assert write_srt(TWO) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello world.\n\n"
        "2\n00:00:02,500 --> 00:00:04,750\nHow are you?\n\n"
    )


def test_vtt_golden():
    assert write_vtt(TWO) == (
        "WEBVTT\n\n"
        "00:00.000 --> 00:02.500\nHello world.\n\n"
        "00:02.500 --> 00:04.750\nHow are you?\n\n"
    )


def test_tsv_golden():
    assert write_tsv(TWO) == "start\tend\ttext\n0\t2500\tHello world.\n2500\t4750\tHow are you?\n"


def test_json_golden():
    one = transcript(segment(0, 0.0, 1.5, " Hi."))
    assert write_json(one) == (
        '{"task": "transcribe", "language": "en", "language_probability": 1.0, '
        '"duration": 1.5, "model": "tiny", "text": " Hi.", "segments": [{"id": 0, '
        '"seek": 0, "start": 0.0, "end": 1.5, "text": " Hi.", "tokens": [50364, 1000], '
        '"temperature": 0.0, "avg_logprob": -0.25, "compression_ratio": 1.5, '
        '"no_speech_prob": 0.01, "words": []}]}'
    )


def test_word_cues_use_word_times_golden():
    assert write_srt(TWO_WORDS) == (
        "1\n00:00:00,200 --> 00:00:01,200\nHello world.\n\n"
        "2\n00:00:02,600 --> 00:00:04,500\nHow are you?\n\n"
    )


def test_highlight_words_golden():
    assert write_vtt(TWO_WORDS, SubtitleLayout(highlight_words=True)) == (
        "WEBVTT\n\n"
        "00:00.200 --> 00:00.600\n<u>Hello</u> world.\n\n"
        "00:00.600 --> 00:00.700\nHello world.\n\n"  # the gap between two words
        "00:00.700 --> 00:01.200\nHello <u>world.</u>\n\n"
        "00:02.600 --> 00:02.900\n<u>How</u> are you?\n\n"
        "00:02.900 --> 00:03.100\nHow <u>are</u> you?\n\n"
        "00:03.100 --> 00:03.200\nHow are you?\n\n"
        "00:03.200 --> 00:04.500\nHow are <u>you?</u>\n\n"
    )


def test_max_line_width_golden():
    # " world." would make the line 12 > 10 wide: a line break, same cue
    assert write_srt(TWO_WORDS, SubtitleLayout(max_line_width=10)) == (
        "1\n00:00:00,200 --> 00:00:01,200\nHello\nworld.\n\n"
        "2\n00:00:02,600 --> 00:00:04,500\nHow are\nyou?\n\n"
    )


def test_max_line_count_joins_segments_golden():
    # with both a width and a line count, cues no longer follow segments
    layout = SubtitleLayout(max_line_width=12, max_line_count=2)
    assert write_srt(TWO_WORDS, layout) == (
        "1\n00:00:00,200 --> 00:00:04,500\nHello world.\nHow are you?\n\n"
    )
    layout = SubtitleLayout(max_line_width=8, max_line_count=1)
    assert write_srt(TWO_WORDS, layout) == (
        "1\n00:00:00,200 --> 00:00:00,600\nHello\n\n"
        "2\n00:00:00,700 --> 00:00:01,200\nworld.\n\n"
        "3\n00:00:02,600 --> 00:00:03,100\nHow are\n\n"
        "4\n00:00:03,200 --> 00:00:04,500\nyou?\n\n"
    )


def test_layout_ignored_without_words():
    layout = SubtitleLayout(max_line_width=5, max_line_count=1, highlight_words=True)
    assert write_srt(TWO, layout) == write_srt(TWO)
    assert write_vtt(TWO, layout) == write_vtt(TWO)


# --- timestamps ---------------------------------------------------------------------------


def test_hour_long_timestamps():
    late = transcript(segment(0, 3725.5, 3726.0, " Late."))
    assert write_srt(late) == "1\n01:02:05,500 --> 01:02:06,000\nLate.\n\n"
    assert write_vtt(late) == "WEBVTT\n\n01:02:05.500 --> 01:02:06.000\nLate.\n\n"
    assert write_tsv(late) == "start\tend\ttext\n3725500\t3726000\tLate.\n"


@pytest.mark.parametrize(
    "seconds", [0.0, 0.0004, 0.0005, 0.0015, 0.9995, 59.9996, 61.25, 3599.9999, 3725.5, 36000.123]
)
def test_format_timestamp_matches_whisper(seconds):
    for hours in (False, True):
        for marker in (".", ","):
            style = dict(always_include_hours=hours, decimal_marker=marker)
            assert format_timestamp(seconds, **style) == whisper_format_timestamp(seconds, **style)


def test_negative_timestamp_is_clamped():
    assert format_timestamp(-0.25) == "00:00.000"
    assert format_timestamp(-3.0, always_include_hours=True, decimal_marker=",") == "00:00:00,000"
    assert write_tsv(transcript(segment(0, -0.5, 1.0, " x"))) == "start\tend\ttext\n0\t1000\tx\n"


# --- text that tries to break the format --------------------------------------------------

HOSTILE = transcript(
    segment(0, 0.0, 1.0, " a --> b"),
    segment(1, 1.0, 2.0, " one\n\n2\n00:00:09,000 --> 00:00:10,000\nforged"),
    segment(2, 2.0, 3.0, " x ---> y\r\n\r\nz\tw"),
)


def test_arrow_and_newlines_in_segment_text_srt():
    out = write_srt(HOSTILE)
    cues = parse_srt(out)
    assert len(cues) == 3
    assert [lines for _, _, lines in cues] == [
        ["a -> b"],
        ["one 2 00:00:09,000 -> 00:00:10,000 forged"],
        ["x -> y z\tw"],
    ]


def test_arrow_and_newlines_in_segment_text_vtt():
    cues = parse_vtt(write_vtt(HOSTILE))
    assert len(cues) == 3
    assert cues[0] == ("00:00.000 --> 00:01.000", ["a -> b"])


def test_newlines_and_tabs_in_tsv():
    assert write_tsv(HOSTILE).split("\n") == [
        "start\tend\ttext",
        "0\t1000\ta --> b",
        "1000\t2000\tone 2 00:00:09,000 --> 00:00:10,000 forged",
        "2000\t3000\tx ---> y z w",
        "",
    ]


HOSTILE_WORDS = transcript(
    segment(0, 0.0, 3.0, " a --> b\n\nc", [
        (" a", 0.0, 0.5), (" -->", 0.5, 1.0), (" b\n\n", 1.0, 1.5), ("\nc", 1.5, 2.0),
    ]),
    segment(1, 3.0, 5.0, " x-- >", [(" x--", 3.0, 3.5), (">", 3.5, 4.0), (" --->", 4.0, 5.0)]),
)


@pytest.mark.parametrize("layout", [
    SubtitleLayout(),
    SubtitleLayout(highlight_words=True),
    SubtitleLayout(max_line_width=3, max_line_count=2, highlight_words=True),
], ids=["plain", "highlight", "narrow-highlight"])
def test_arrow_and_newlines_in_words(layout):
    srt, vtt = write_srt(HOSTILE_WORDS, layout), write_vtt(HOSTILE_WORDS, layout)
    assert "-->" not in srt.replace(" --> ", "")
    assert len(parse_srt(srt)) == len(parse_vtt(vtt)) >= 2


def test_arrow_and_newlines_in_words_golden():
    assert write_srt(HOSTILE_WORDS) == (
        "1\n00:00:00,000 --> 00:00:02,000\na -> b  c\n\n"  # " b\n\n" + "\nc"
        "2\n00:00:03,000 --> 00:00:05,000\nx-> ->\n\n"  # "x--" + ">" + " --->"
    )


# --- Unicode and empty --------------------------------------------------------------------

UNICODE = transcript(
    segment(0, 0.0, 1.0, " 안녕하세요", [(" 안녕하세요", 0.0, 1.0)]),
    segment(1, 1.0, 2.0, " こんにちは", [(" こんにちは", 1.0, 2.0)]),
    language="ko",
)


def test_unicode_in_every_format():
    assert write_txt(UNICODE) == "안녕하세요\nこんにちは\n"
    assert write_srt(UNICODE) == (
        "1\n00:00:00,000 --> 00:00:01,000\n안녕하세요\n\n"
        "2\n00:00:01,000 --> 00:00:02,000\nこんにちは\n\n"
    )
    assert write_vtt(UNICODE) == (
        "WEBVTT\n\n00:00.000 --> 00:01.000\n안녕하세요\n\n"
        "00:01.000 --> 00:02.000\nこんにちは\n\n"
    )
    assert write_tsv(UNICODE) == "start\tend\ttext\n0\t1000\t안녕하세요\n1000\t2000\tこんにちは\n"
    out = write_json(UNICODE)
    assert '"text": " 안녕하세요"' in out and '"word": " こんにちは"' in out
    assert "\\u" not in out
    assert write_vtt(UNICODE, SubtitleLayout(highlight_words=True)) == (
        "WEBVTT\n\n00:00.000 --> 00:01.000\n<u>안녕하세요</u>\n\n"
        "00:01.000 --> 00:02.000\n<u>こんにちは</u>\n\n"
    )


def test_empty_transcript_in_every_format():
    assert write_txt(EMPTY) == ""
    assert write_srt(EMPTY) == ""
    assert write_vtt(EMPTY) == "WEBVTT\n\n"
    assert write_tsv(EMPTY) == "start\tend\ttext\n"
    assert json.loads(write_json(EMPTY))["segments"] == []
    layout = SubtitleLayout(max_line_width=20, max_line_count=2, highlight_words=True)
    assert write_srt(EMPTY, layout) == "" and write_vtt(EMPTY, layout) == "WEBVTT\n\n"


# --- JSON, dispatch -----------------------------------------------------------------------


@pytest.mark.parametrize("t", [TWO, TWO_WORDS, UNICODE, HOSTILE_WORDS, EMPTY],
                         ids=["two", "words", "unicode", "hostile", "empty"])
def test_json_round_trip(t):
    assert Transcript.from_dict(json.loads(write_json(t))) == t


def test_write_dispatches_every_format():
    layout = SubtitleLayout(max_line_width=10)
    expected = {"txt": write_txt, "srt": write_srt, "vtt": write_vtt, "tsv": write_tsv,
                "json": write_json}
    assert tuple(expected) == FORMATS
    for fmt, writer in expected.items():
        assert write(fmt, TWO_WORDS, layout) == writer(TWO_WORDS, layout)


def test_media_types():
    assert MEDIA_TYPES == {
        "txt": "text/plain; charset=utf-8",
        "srt": "application/x-subrip; charset=utf-8",
        "vtt": "text/vtt; charset=utf-8",
        "tsv": "text/tab-separated-values; charset=utf-8",
        "json": "application/json; charset=utf-8",
    }


@pytest.mark.parametrize("fmt", ["docx", "SRT", "", "all"])
def test_unknown_format(fmt):
    with pytest.raises(BadOption) as caught:
        write(fmt, TWO)
    assert caught.value.field == "format"
    assert "txt, srt, vtt, tsv, json" in str(caught.value)
    assert str(caught.value).startswith("format: ")


# --- byte-for-byte agreement with openai-whisper's writers --------------------------------


def result_dict(segments, with_words=True):
    """A whisper transcribe() result from (start, end, [(word, start, end), ...]) tuples."""
    out = []
    for i, (start, end, words) in enumerate(segments):
        seg = {
            "id": i, "seek": 0, "start": start, "end": end,
            "text": "".join(w for w, _, _ in words), "tokens": [50364 + i],
            "temperature": 0.0, "avg_logprob": -0.3, "compression_ratio": 1.2,
            "no_speech_prob": 0.02,
        }
        if with_words:
            seg["words"] = [
                {"word": w, "start": s, "end": e, "probability": 0.8} for w, s, e in words
            ]
        out.append(seg)
    return {"text": "".join(s["text"] for s in out), "segments": out, "language": "en"}


def to_transcript(result):
    return Transcript.from_dict({
        "task": "transcribe", "language": result["language"],
        "duration": result["segments"][-1]["end"] if result["segments"] else 0.0,
        "text": result["text"], "segments": result["segments"],
    })


SPEECH = [
    (0.0, 6.2, [(" The", 0.0, 0.24), (" quick", 0.24, 0.5), (" brown", 0.5, 0.9),
                (" fox", 0.9, 1.2), (" jumps", 1.5, 1.9),
                (" over", 1.9, 2.1000004), (" the", 2.1, 2.2),  # same millisecond: no gap cue
                (" ", 2.2, 2.2),  # a whitespace-only word
                (" lazy", 2.2, 2.6), (" dog.", 6.0, 6.2)]),  # start gap > 3 s
    (6.2, 9.0, [(" Internationalization-wise,", 6.4, 7.5), (" it", 7.5, 7.6),
                (" works.", 7.6, 9.0)]),  # a word wider than 20
    (9.0, 9.0, []),  # whisper clears instantaneous segments: no words, empty text
    (12.5, 22.0, [(" After", 12.5, 13.0), (" a", 13.0, 13.25), (" pause", 13.25, 13.5),
                  (" of", 16.25, 16.5),  # exactly 3.0 s after the previous start: no break
                  (" exactly", 16.5, 17.0), (" three", 19.45, 19.6),  # 2.95 s: no break
                  (" seconds,", 19.6, 19.9), (" we", 19.9, 20.0), (" continue", 20.0, 20.5),
                  (" talking", 20.5, 21.0), (" here.", 21.0, 22.0)]),
    (3700.0, 3725.5, [(" An", 3700.0, 3700.5), (" hour", 3700.5, 3701.0),
                      (" later.", 3724.0, 3725.5)]),
]


def random_speech(seed):
    rng = random.Random(seed)
    vocab = [" a", " to", " the", " word", " longer", " sentence,", " subtitles", " ok.",
             " extraordinarily-long", " 안녕", " x", " re-flowing", "!", " 42", " ", ""]
    t, segments = rng.uniform(0, 2), []
    for _ in range(rng.randint(1, 6)):
        seg_start, words = t, []
        for _ in range(rng.randint(0, 12)):
            t += rng.choice([0.0, 0.0, 0.1, 0.3, 1.0, 3.0, 3.5, 5.0])  # gaps, some long
            start = round(t, 2)
            t += rng.uniform(0.05, 0.8)
            words.append((rng.choice(vocab), start, round(t, 2)))
        segments.append((round(seg_start, 2), round(t, 2), words))
    return segments


RESULTS = {
    "speech-words": result_dict(SPEECH),
    "speech-segments": result_dict(SPEECH, with_words=False),
    "two-words": result_dict([(0.0, 2.5, [(" Hello", 0.2, 0.6), (" world.", 0.7, 1.2)]),
                              (2.5, 4.75, [(" How", 2.6, 2.9), (" are", 2.9, 3.1),
                                           (" you?", 3.2, 4.5)])]),
    **{f"random-{seed}": result_dict(random_speech(seed)) for seed in range(8)},
}

LAYOUTS = {
    "none": SubtitleLayout(),
    "width20": SubtitleLayout(max_line_width=20),
    "width20-count2": SubtitleLayout(max_line_width=20, max_line_count=2),
    "width20-count1": SubtitleLayout(max_line_width=20, max_line_count=1),
    "words3": SubtitleLayout(max_words_per_line=3),
    "highlight": SubtitleLayout(highlight_words=True),
    "width20-words3": SubtitleLayout(max_line_width=20, max_words_per_line=3),
    "width20-count2-words3": SubtitleLayout(max_line_width=20, max_line_count=2,
                                            max_words_per_line=3),
    "words2-highlight": SubtitleLayout(max_words_per_line=2, highlight_words=True),
    "all": SubtitleLayout(max_line_width=20, max_line_count=2, max_words_per_line=3,
                          highlight_words=True),
    "width1-count3": SubtitleLayout(max_line_width=1, max_line_count=3),
}

OURS = {"txt": write_txt, "srt": write_srt, "vtt": write_vtt, "tsv": write_tsv}


def whisper_output(fmt, result, layout, tmp_path):
    options = {
        "max_line_width": layout.max_line_width,
        "max_line_count": layout.max_line_count,
        "max_words_per_line": layout.max_words_per_line,
        "highlight_words": layout.highlight_words,
    }
    get_writer(fmt, str(tmp_path))(result, "audio.wav", options)
    with open(tmp_path / f"audio.{fmt}", encoding="utf-8", newline="") as f:
        return without_empty_cues(fmt, f.read())


EMPTY_CUE = {  # a timing line, a text line of nothing but spaces, the blank line
    "srt": re.compile(r"(?m)^\d+\n[^\n]* --> [^\n]*\n[^\S\n]*\n\n"),
    "vtt": re.compile(r"(?m)^[^\n]* --> [^\n]*\n[^\S\n]*\n\n"),
}
SRT_NUMBER = re.compile(r"(?m)^\d+\n(?=[^\n]* --> )")


def without_empty_cues(fmt: str, text: str) -> str:
    """whisper writes a cue even when its text is empty; ours leaves it out (and SRT
    numbers the rest without a gap)."""
    if fmt not in EMPTY_CUE:
        return text
    text = EMPTY_CUE[fmt].sub("", text)
    if fmt == "srt":
        numbers = iter(range(1, text.count(" --> ") + 1))
        text = SRT_NUMBER.sub(lambda match: f"{next(numbers)}\n", text)
    return text


def test_an_empty_cue_is_left_out_and_the_rest_numbered_on():
    t = to_transcript(result_dict([(0.0, 1.0, [(" a", 0.0, 1.0)]),
                                   (1.0, 2.0, [(" \x1f ", 1.0, 2.0)]),  # only "spaces"
                                   (2.0, 3.0, [(" b", 2.0, 3.0)])], with_words=False))
    assert write_srt(t) == ("1\n00:00:00,000 --> 00:00:01,000\na\n\n"
                            "2\n00:00:02,000 --> 00:00:03,000\nb\n\n")
    assert write_vtt(t) == ("WEBVTT\n\n00:00.000 --> 00:01.000\na\n\n"
                            "00:02.000 --> 00:03.000\nb\n\n")
    assert write_txt(t) == "a\n\nb\n"  # a line per segment, as whisper writes


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("result_name", list(RESULTS))
def test_matches_whisper_writers(result_name, layout_name, tmp_path):
    result, layout = RESULTS[result_name], LAYOUTS[layout_name]
    t = to_transcript(result)
    for fmt, ours in OURS.items():
        assert ours(t, layout) == whisper_output(fmt, result, layout, tmp_path), fmt


def test_words_per_line_is_a_cue_limit_when_segments_are_kept():
    # a whisper quirk we keep: without max_line_count each 3-word chunk is its own cue
    t = to_transcript(RESULTS["two-words"])
    assert write_srt(t, SubtitleLayout(max_words_per_line=2)) == (
        "1\n00:00:00,200 --> 00:00:01,200\nHello world.\n\n"
        "2\n00:00:02,600 --> 00:00:03,100\nHow are\n\n"
        "3\n00:00:03,200 --> 00:00:04,500\nyou?\n\n"
    )
