"""Options: defaults of the openai-whisper CLI, parsing from strings, errors naming the field."""

from __future__ import annotations

import pytest

from whisper_service.errors import BadOption
from whisper_service.options import SubtitleLayout, TranscribeOptions, language_code


def test_defaults_follow_the_whisper_command_line():
    options = TranscribeOptions()
    assert options.task == "transcribe"
    assert options.language is None
    assert (options.beam_size, options.best_of, options.patience) == (5, 5, 1.0)
    assert options.temperature == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert (options.no_speech_threshold, options.logprob_threshold) == (0.6, -1.0)
    assert options.compression_ratio_threshold == 2.4
    assert options.condition_on_previous_text is True
    assert options.word_timestamps is False
    assert TranscribeOptions.from_mapping({}) == options


def test_form_strings_become_typed_values():
    options = TranscribeOptions.from_mapping({
        "task": "Translate", "language": "Korean", "beam_size": "3", "patience": "2",
        "best_of": "4", "temperature": "0, 0.5, 1", "length_penalty": "0.6",
        "initial_prompt": "Names: Kim, Park.", "condition_on_previous_text": "false",
        "no_speech_threshold": "none", "word_timestamps": "on", "max_line_width": "42",
        "max_line_count": "2", "highlight_words": "true", "hallucination_silence_threshold": "2",
    })
    assert options.task == "translate"
    assert options.language == "ko"
    assert (options.beam_size, options.patience, options.best_of) == (3, 2.0, 4)
    assert options.temperature == (0.0, 0.5, 1.0)
    assert options.length_penalty == 0.6
    assert options.initial_prompt == "Names: Kim, Park."
    assert options.condition_on_previous_text is False
    assert options.no_speech_threshold is None
    assert options.hallucination_silence_threshold == 2.0
    assert options.layout == SubtitleLayout(max_line_width=42, max_line_count=2, highlight_words=True)


def test_temperature_increment_builds_the_fallback_schedule():
    options = TranscribeOptions.from_mapping({"temperature": "0.2", "temperature_increment_on_fallback": "0.4"})
    assert options.temperature == (0.2, 0.6, 1.0)


@pytest.mark.parametrize("value, code", [("ko", "ko"), ("KO", "ko"), ("Korean", "ko"),
                                         ("english", "en"), ("auto", None), ("", None)])
def test_language_by_code_or_english_name(value, code):
    assert language_code(value) == code


@pytest.mark.parametrize("values, field, words", [
    ({"task": "summarize"}, "task", "must be one of transcribe, translate; got 'summarize'"),
    ({"language": "Klingon"}, "language", "unknown language 'Klingon'"),
    ({"beam_size": "0.5"}, "beam_size", "must be a whole number"),
    ({"beam_size": "17"}, "beam_size", "must be in [1, 16]; got 17"),
    ({"patience": "0"}, "patience", "must be in (0, 10]; got 0"),
    ({"patience": "2", "beam_size": "greedy"}, "patience", "applies only to beam search"),
    ({"best_of": "-1"}, "best_of", "must be in [1, 16]"),
    ({"temperature": "1.5"}, "temperature", "must be in [0, 1]; got 1.5"),
    ({"temperature": "0.8,0.2"}, "temperature", "must not decrease"),
    ({"temperature": "hot"}, "temperature", "must be a number; got 'hot'"),
    ({"length_penalty": "2"}, "length_penalty", "must be in [0, 1]"),
    ({"logprob_threshold": "1"}, "logprob_threshold", "must be in [-100, 0]"),
    ({"no_speech_threshold": "nan"}, "no_speech_threshold", "must be a finite number"),
    ({"word_timestamps": "maybe"}, "word_timestamps", "must be true or false; got 'maybe'"),
    ({"max_line_width": "20"}, "word_timestamps", "must be on for max_line_width"),
    ({"max_line_count": "2", "word_timestamps": "1"}, "max_line_count", "needs max_line_width"),
    ({"hallucination_silence_threshold": "2"}, "hallucination_silence_threshold",
     "needs word_timestamps"),
    ({"initial_prompt": "x" * 2001}, "initial_prompt", "is 2001 characters; at most 2000"),
    ({"beam": "5"}, "beam", "is not an option; the options are beam_size, best_of"),
])
def test_bad_values_name_the_field_and_what_is_accepted(values, field, words):
    with pytest.raises(BadOption) as error:
        TranscribeOptions.from_mapping(values)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
    assert words in str(error.value)


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        TranscribeOptions().beam_size = 1  # type: ignore[misc]


def test_decode_kwargs_drop_patience_for_greedy():
    kwargs = TranscribeOptions(beam_size=None, temperature=(0.0,)).decode_kwargs()
    assert kwargs["beam_size"] is None and kwargs["patience"] is None
    assert kwargs["temperature"] == 0.0


@pytest.mark.parametrize("values, field, words", [
    ({"beam_size": "9" * 400}, "beam_size", "must be in [1, 16]; got 9999"),
    ({"patience": 10 ** 400}, "patience", "must be a number"),
    ({"patience": "0.1", "beam_size": "5"}, "patience", "with beam_size 5 must be more than 0.1"),
])
def test_extreme_values_are_refused_not_crashed_on(values, field, words):
    with pytest.raises(BadOption) as error:
        TranscribeOptions.from_mapping(values)
    assert error.value.field == field
    assert words in str(error.value)
