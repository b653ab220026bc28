"""Corrections to a transcript (whisper_service/transcript_edits.py): each edit's result, the
numbering after merges and splits, and errors that name the edit, the line and the field."""

from __future__ import annotations

import pytest

from whisper_service.errors import BadOption
from whisper_service.transcript import Segment, Speaker, Transcript, Word
from whisper_service.transcript_edits import apply_edits, parse_edits
from whisper_service.writers import write


def segment(id, start, end, text, words=(), speaker=None):
    return Segment(id=id, seek=0, start=start, end=end, text=text, tokens=(50364, 1000 + id),
                   temperature=0.0, avg_logprob=-0.25, compression_ratio=1.5, no_speech_prob=0.01,
                   words=tuple(Word(w, s, e, p, speaker) for w, s, e, p in words), speaker=speaker)


def transcript(*segments, speakers=()):
    return Transcript(task="transcribe", language="en", language_probability=1.0, duration=10.0,
                      model="tiny", text="".join(s.text for s in segments),
                      segments=tuple(segments), speakers=tuple(speakers))


THREE = transcript(
    segment(0, 0.0, 2.0, " Hello there."),
    segment(1, 2.5, 4.0, " How are you?"),
    segment(2, 4.5, 6.0, " Fine, thanks."),
)
WORDS = transcript(segment(0, 1.0, 3.0, " one two three", words=[
    (" one", 1.0, 1.5, 0.9), (" two", 1.6, 2.2, 0.3), (" three", 2.3, 3.0, 0.8)]))


def edited(base, *edits):
    return apply_edits(base, parse_edits({"edits": list(edits)}))


def test_text_edit_changes_the_line_the_text_and_every_writer():
    result = edited(THREE, {"op": "text", "segment": 1, "text": "  How are\nyou doing?  "})
    assert result.segments[1].text == " How are you doing?"
    assert result.segments[1].tokens == () and result.segments[1].words == ()  # it had none
    assert result.text == " Hello there. How are you doing? Fine, thanks."
    assert "How are you doing?" in write("srt", result) and "How are you?" not in write("srt", result)
    assert THREE.segments[1].text == " How are you?"  # the original is untouched


def test_a_line_with_words_gets_words_for_its_new_text_spread_over_its_time():
    result = edited(WORDS, {"op": "text", "segment": 0, "text": "one too three four"})
    words = result.segments[0].words
    assert [w.word for w in words] == [" one", " too", " three", " four"]
    assert words[0].start == 1.0 and words[-1].end == 3.0 and all(w.probability == 1.0 for w in words)
    assert all(a.end == b.start for a, b in zip(words, words[1:]))
    assert "four" in write("srt", result)


def test_merge_joins_a_line_with_the_next_and_renumbers():
    result = edited(THREE, {"op": "merge", "segment": 0})
    assert [(s.id, s.start, s.end, s.text) for s in result.segments] == [
        (0, 0.0, 4.0, " Hello there. How are you?"), (1, 4.5, 6.0, " Fine, thanks.")]
    assert result.segments[0].tokens == (50364, 1000, 50364, 1001)


def test_edits_apply_in_order_each_seeing_the_numbering_left_by_the_one_before():
    result = edited(THREE, {"op": "merge", "segment": 0},
                    {"op": "text", "segment": 1, "text": "Fine."})
    assert [s.text for s in result.segments] == [" Hello there. How are you?", " Fine."]


def test_split_without_words_divides_the_time_by_characters():
    result = edited(THREE, {"op": "split", "segment": 0, "at": 6})
    assert [(s.start, s.end, s.text) for s in result.segments[:2]] == [
        (0.0, 1.0, " Hello"), (1.0, 2.0, " there.")]
    assert [s.id for s in result.segments] == [0, 1, 2, 3]


def test_split_with_words_breaks_at_a_word_and_takes_its_time():
    result = edited(WORDS, {"op": "split", "segment": 0, "at": 5})  # inside "two"
    first, second = result.segments
    assert (first.text, first.end, [w.word for w in first.words]) == (" one", 1.6, [" one"])
    assert (second.text, second.start, [w.word for w in second.words]) == (" two three", 1.6, [" two", " three"])


def test_split_at_a_given_time():
    result = edited(THREE, {"op": "split", "segment": 1, "at": 4, "time": 3.0})
    assert [(s.start, s.end) for s in result.segments[1:3]] == [(2.5, 3.0), (3.0, 4.0)]


def test_speaker_change_sets_the_line_and_its_words():
    base = transcript(segment(0, 0, 1, " a", words=[(" a", 0, 1, 0.9)], speaker="S1"),
                      speakers=[Speaker("S1", "Ana"), Speaker("S2", "Bo")])
    result = edited(base, {"op": "speaker", "segment": 0, "speaker": "S2"})
    assert result.segments[0].speaker == "S2" and result.segments[0].words[0].speaker == "S2"
    assert "Bo: a" in write("txt", result)


def test_retime_moves_start_and_end_and_stretches_the_words_with_the_line():
    result = edited(WORDS, {"op": "retime", "segment": 0, "start": 1.2, "end": 2.5})
    line = result.segments[0]
    assert (line.start, line.end) == (1.2, 2.5)
    assert all(1.2 <= w.start <= w.end <= 2.5 for w in line.words)
    assert (line.words[0].start, line.words[-1].end) == (1.2, 2.5)


@pytest.mark.parametrize("body, field, words", [
    ({}, "edits", "edits"),
    ({"edits": []}, "edits", "empty"),
    ({"edits": [{"op": "shout", "segment": 0}]}, "edits[0].op", "'shout' is no edit"),
    ({"edits": [{"op": "merge"}]}, "edits[0].segment", "whole number"),
    ({"edits": [{"op": "text", "segment": 0, "text": "  "}]}, "edits[0].text", "cannot be empty"),
    ({"edits": [{"op": "text", "segment": 0, "text": "x", "start": 1}]}, "edits[0].start", "takes no"),
    ({"edits": [{"op": "retime", "segment": 0}]}, "edits[0]", "needs a new start"),
    ({"edits": [{"op": "retime", "segment": 0, "end": float("nan")}]}, "edits[0].end", "number of seconds"),
    ({"edits": [{"op": "retime", "segment": 0, "start": True}]}, "edits[0].start", "number of seconds"),
])
def test_malformed_edits_are_refused_naming_the_field(body, field, words):
    with pytest.raises(BadOption) as refused:
        parse_edits(body)
    assert refused.value.field == field and words in str(refused.value)


@pytest.mark.parametrize("edit, field, words", [
    ({"op": "text", "segment": 3, "text": "x"}, "edits[1].segment", "line 3 does not exist"),
    ({"op": "merge", "segment": 2}, "edits[1].segment", "last one"),
    ({"op": "split", "segment": 0, "at": 0}, "edits[1].at", "empty line"),
    ({"op": "split", "segment": 0, "at": 1, "time": 2.0}, "edits[1].time", "inside line 0"),
    ({"op": "speaker", "segment": 0, "speaker": "S1"}, "edits[1].speaker", "no speakers"),
    ({"op": "retime", "segment": 1, "start": 1.5}, "edits[1].start", "before line 0 ends"),
    ({"op": "retime", "segment": 1, "end": 5.0}, "edits[1].end", "after line 2 starts"),
    ({"op": "retime", "segment": 2, "end": 12.0}, "edits[1].end", "past the end of the audio"),
    ({"op": "retime", "segment": 1, "start": -1}, "edits[1].start", "before the audio begins"),
    ({"op": "retime", "segment": 1, "start": 3.5, "end": 3.0}, "edits[1].start", "at or after it ends"),
])
def test_edits_that_cannot_apply_are_refused_naming_the_line(edit, field, words):
    with pytest.raises(BadOption) as refused:
        edited(THREE, {"op": "text", "segment": 0, "text": "Hi."}, edit)
    assert refused.value.field == field and words in str(refused.value), str(refused.value)


def test_an_unknown_speaker_is_named_with_the_known_ones():
    base = transcript(segment(0, 0, 1, " a", speaker="S1"), speakers=[Speaker("S1", "Ana")])
    with pytest.raises(BadOption, match="'S9' is not a speaker of this transcript; its speakers are S1"):
        edited(base, {"op": "speaker", "segment": 0, "speaker": "S9"})
