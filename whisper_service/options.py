"""Everything a user can set for one transcription: typed, frozen, checked in one place.

`TranscribeOptions.from_mapping` turns strings from a form, a JSON body or the command
line into the typed object; `__post_init__` checks every field, so an options object
that exists is valid. Defaults follow the openai-whisper command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Optional, Tuple

from whisper_service.errors import BadOption

TASKS = ("transcribe", "translate")
MODES = ("batched", "sequential")
MAX_BEAM_SIZE = 16  # beyond this, decoding cost grows with no gain in accuracy
MAX_BEST_OF = 16
# whisper gives a window at most n_text_ctx // 2 - 1 = 223 tokens of context before it;
# a longer prompt would only be cut, so it is refused (characters are checked first, cheaply)
MAX_PROMPT_TOKENS = 223
MAX_PROMPT_CHARS = 2000
# a fallback schedule: at most every tenth from 0.0 to 1.0; each temperature can cost a
# window another best_of decodes, so a longer schedule only buys GPU time
MAX_TEMPERATURES = 11
MIN_TEMPERATURE_STEP = 0.1
SHOWN_CHARS = 40  # of a bad value, quoted in its error
# speakers one recording may be told to hold; beyond this a diarization hint is a typo
MAX_SPEAKERS = 20
SPEAKER_HINTS = ("num_speakers", "min_speakers", "max_speakers")
# the command line's schedule: 0.0, then 0.2 more on each fallback, up to 1.0
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
AUTO_LANGUAGE = ("", "auto", "detect", "none")
GREEDY = ("", "none", "greedy", "0")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def option(default: Any, help: str) -> Any:
    """A field with its help text, which the command line and API docs show."""
    return field(default=default, metadata={"help": help})


def language_code(value: Optional[str]) -> Optional[str]:
    """'Korean', 'ko' or 'KO' -> 'ko'; 'auto' or None -> None (detect)."""
    if value is None or value.strip().lower() in AUTO_LANGUAGE:
        return None
    key = value.strip().lower()
    languages, to_code = _language_tables()
    if key in languages:
        return key
    if key in to_code:
        return to_code[key]
    raise BadOption(
        "language",
        f"unknown language {_shown(value)}; use 'auto', a code such as 'en' or 'ko', "
        "or an English name such as 'Korean'",
    )


def language_name(code: str) -> str:
    """'ko' -> 'korean', the English name OpenAI's API reports."""
    return _language_tables()[0].get(code, code)


def _language_tables():
    """whisper's {code: name} and {name: code}, imported on first use: whisper's package
    imports torch (seconds), which `--help` and the option parsing of the web layer's
    start need not wait for."""
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    return LANGUAGES, TO_LANGUAGE_CODE


@dataclass(frozen=True)
class SubtitleLayout:
    """How SRT and VTT cues are laid out; only word-level transcripts can be re-flowed."""

    max_line_width: Optional[int] = option(None, "subtitles: characters per line")
    max_line_count: Optional[int] = option(None, "subtitles: lines per cue (needs max_line_width)")
    max_words_per_line: Optional[int] = option(None, "subtitles: words per line")
    highlight_words: bool = option(False, "subtitles: underline each word as it is spoken")

    def __post_init__(self) -> None:
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            _check_range(name, getattr(self, name), 1, 1000, optional=True)
        if self.max_line_count is not None and self.max_line_width is None:
            raise BadOption("max_line_count", "needs max_line_width to be set too")

    @property
    def reflows(self) -> bool:
        return self.highlight_words or any(
            v is not None
            for v in (self.max_line_width, self.max_line_count, self.max_words_per_line)
        )


@dataclass(frozen=True)
class TranscribeOptions:
    task: str = option("transcribe", "transcribe (keep the spoken language) or translate (to English)")
    language: Optional[str] = option(None, "spoken language: auto, a code (ko) or a name (Korean)")
    model: Optional[str] = option(None, "model from the allow-list; empty takes the default")
    beam_size: Optional[int] = option(
        5, "beams at temperature 0 (1-16); 0 or 'greedy' for greedy decoding (one candidate)"
    )
    patience: float = option(1.0, "beam search waits for patience x beam_size finished candidates")
    best_of: int = option(5, "candidates sampled at each temperature above 0")
    temperature: Tuple[float, ...] = option(
        DEFAULT_TEMPERATURES, "one temperature, or a comma-separated fallback schedule of at "
        "most 11, each 0-1, not decreasing"
    )
    length_penalty: Optional[float] = option(
        None, "0-1 (GNMT alpha); empty ranks by mean log-probability per token"
    )
    initial_prompt: Optional[str] = option(
        None, "text that steers vocabulary, spelling and style (at most 223 tokens, 2000 characters)"
    )
    condition_on_previous_text: bool = option(True, "give each 30 s window the text before it")
    no_speech_threshold: Optional[float] = option(
        0.6, "a window is silent above this no-speech probability (when logprob is low too)"
    )
    logprob_threshold: Optional[float] = option(
        -1.0, "retry at the next temperature when the mean log-probability is below this"
    )
    compression_ratio_threshold: Optional[float] = option(
        2.4, "retry at the next temperature when the text's gzip ratio is above this"
    )
    hallucination_silence_threshold: Optional[float] = option(
        None, "skip silences longer than this many seconds around likely hallucinations"
    )
    word_timestamps: bool = option(False, "time each word (needed for the subtitle layout options)")
    mode: Optional[str] = option(
        None, "batched (speech windows decoded together) or sequential (openai-whisper's own, "
        "each window given the previous text); empty: batched on a GPU, sequential on CPU"
    )
    diarize: bool = option(
        False, "label who speaks: a speaker on every segment (and word), split where the "
        "speaker changes"
    )
    num_speakers: Optional[int] = option(
        None, f"with diarize: exactly this many speakers (1-{MAX_SPEAKERS}); empty: found"
    )
    min_speakers: Optional[int] = option(
        None, f"with diarize: at least this many speakers (1-{MAX_SPEAKERS})"
    )
    max_speakers: Optional[int] = option(
        None, f"with diarize: at most this many speakers (1-{MAX_SPEAKERS})"
    )
    layout: SubtitleLayout = field(default_factory=SubtitleLayout)  # SRT/VTT cue layout

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)
        if self.mode is not None:
            _check_choice("mode", self.mode, MODES)
        if self.language is not None and self.language not in _language_tables()[0]:
            raise BadOption("language", f"unknown language code {self.language!r}")
        _check_range("beam_size", self.beam_size, 1, MAX_BEAM_SIZE, optional=True)
        _check_range("patience", self.patience, 0.0, 10.0, low_open=True)
        if self.beam_size is None and self.patience != 1.0:
            raise BadOption("patience", "applies only to beam search; set beam_size too")
        # beam search waits for round(beam_size x patience) finished candidates: at least one
        if self.beam_size is not None and round(self.beam_size * self.patience) < 1:
            raise BadOption(
                "patience",
                f"with beam_size {self.beam_size} must be more than {0.5 / self.beam_size:g}, "
                "so that at least one candidate is awaited",
            )
        _check_range("best_of", self.best_of, 1, MAX_BEST_OF)
        if not self.temperature:
            raise BadOption("temperature", "give at least one temperature")
        if len(self.temperature) > MAX_TEMPERATURES:
            raise BadOption(
                "temperature", f"a fallback schedule has at most {MAX_TEMPERATURES} "
                f"temperatures (0.0 to 1.0 in steps of {MIN_TEMPERATURE_STEP:g}); "
                f"got {len(self.temperature)}",
            )
        for t in self.temperature:
            _check_range("temperature", t, 0.0, 1.0)
        if list(self.temperature) != sorted(self.temperature):
            raise BadOption("temperature", "a fallback schedule must not decrease")
        _check_range("length_penalty", self.length_penalty, 0.0, 1.0, optional=True)
        if self.initial_prompt is not None:
            _check_prompt(self.initial_prompt)
        _check_range("no_speech_threshold", self.no_speech_threshold, 0.0, 1.0, optional=True)
        _check_range("logprob_threshold", self.logprob_threshold, -100.0, 0.0, optional=True)
        _check_range(
            "compression_ratio_threshold", self.compression_ratio_threshold, 0.0, 100.0,
            optional=True, low_open=True,
        )
        _check_range(
            "hallucination_silence_threshold", self.hallucination_silence_threshold,
            0.0, 3600.0, optional=True, low_open=True,
        )
        if self.hallucination_silence_threshold is not None and not self.word_timestamps:
            raise BadOption("hallucination_silence_threshold", "needs word_timestamps on")
        if self.layout.reflows and not self.word_timestamps:
            raise BadOption(
                "word_timestamps",
                "must be on for max_line_width, max_line_count, max_words_per_line "
                "or highlight_words",
            )
        _check_speakers(self)

    def with_changes(self, **changes: Any) -> "TranscribeOptions":
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TranscribeOptions":
        """Build options from strings (form fields, JSON, CLI); unknown names are refused.

        Missing or empty fields keep their defaults.
        """
        unknown = sorted(str(name) for name in set(values) - set(OPTION_NAMES))
        if unknown:
            raise BadOption(
                unknown[0], f"is not an option; the options are {', '.join(sorted(OPTION_NAMES))}"
            )
        given = {k: v for k, v in values.items() if v is not None and v != ""}
        parsed: dict = {}
        for name, value in given.items():
            parser = _PARSERS.get(name)
            if parser is not None:
                parsed[name] = parser(name, value)
        if "temperature_increment_on_fallback" in parsed:
            start = parsed.get("temperature", (0.0,))[0]
            parsed["temperature"] = _schedule(start, parsed.pop("temperature_increment_on_fallback"))
        layout = SubtitleLayout(**{k: parsed.pop(k) for k in LAYOUT_NAMES if k in parsed})
        return cls(layout=layout, **parsed)

    def decode_kwargs(self) -> dict:
        """The keyword arguments openai-whisper's transcribe() takes for these options."""
        beam = self.beam_size
        return dict(
            task=self.task,
            language=self.language,
            beam_size=beam,
            patience=self.patience if beam is not None else None,
            best_of=self.best_of,
            temperature=self.temperature if len(self.temperature) > 1 else self.temperature[0],
            length_penalty=self.length_penalty,
            initial_prompt=self.initial_prompt,
            condition_on_previous_text=self.condition_on_previous_text,
            no_speech_threshold=self.no_speech_threshold,
            logprob_threshold=self.logprob_threshold,
            compression_ratio_threshold=self.compression_ratio_threshold,
            hallucination_silence_threshold=self.hallucination_silence_threshold,
            word_timestamps=self.word_timestamps,
        )


LAYOUT_NAMES = tuple(f.name for f in fields(SubtitleLayout))
# every name a form, a JSON body or the command line may set
OPTION_NAMES = (
    *(f.name for f in fields(TranscribeOptions) if f.name != "layout"),
    *LAYOUT_NAMES,
    "temperature_increment_on_fallback",
)


def _schedule(start: float, step: float) -> Tuple[float, ...]:
    if step <= 0:
        return (start,)
    count = int(math.floor((1.0 - start) / step + 1e-6)) + 1  # counted before it is built
    if count > MAX_TEMPERATURES:
        raise BadOption(
            "temperature_increment_on_fallback",
            f"gives {min(count, 10**9)} temperatures from {start:g} to 1; a schedule has at most "
            f"{MAX_TEMPERATURES}: use an increment of at least {MIN_TEMPERATURE_STEP:g}",
        )
    return tuple(round(start + i * step, 6) for i in range(count))


def _check_speakers(options: "TranscribeOptions") -> None:
    """Speaker hints: whole numbers from 1 to MAX_SPEAKERS that agree with each other, and
    only with diarize on."""
    for name in SPEAKER_HINTS:
        value = getattr(options, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadOption(name, f"must be a whole number; got {_shown(value)}")
        if value < 1:
            raise BadOption(name, f"must be at least 1; got {value}")
        if value > MAX_SPEAKERS:
            raise BadOption(name, f"must be at most {MAX_SPEAKERS}; got {str(value)[:SHOWN_CHARS]}")
        if not options.diarize:
            raise BadOption(name, "needs diarize on")
    low, high = options.min_speakers, options.max_speakers
    if low is not None and high is not None and low > high:
        raise BadOption("min_speakers", f"must not exceed max_speakers; got {low} > {high}")
    count = options.num_speakers
    if count is not None and ((low is not None and count < low) or (high is not None and count > high)):
        raise BadOption("num_speakers", f"must lie between min_speakers and max_speakers; got {count}")


def _check_prompt(prompt: str) -> None:
    """At most MAX_PROMPT_TOKENS tokens, as whisper counts them (its multilingual vocabulary;
    the English-only one gives the same count or more for English text)."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadOption("initial_prompt", f"is {len(prompt)} characters; at most "
                        f"{MAX_PROMPT_CHARS} (and {MAX_PROMPT_TOKENS} tokens)")
    from whisper.tokenizer import get_tokenizer

    tokens = len(get_tokenizer(multilingual=True).encode(" " + prompt.strip()))
    if tokens > MAX_PROMPT_TOKENS:
        raise BadOption("initial_prompt", f"is {tokens} tokens; whisper uses at most "
                        f"{MAX_PROMPT_TOKENS} tokens of context, so shorten it")


def _check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise BadOption(name, f"must be one of {', '.join(choices)}; got {_shown(value)}")


def _check_range(
    name: str, value: Any, low: float, high: float, *, optional: bool = False,
    low_open: bool = False,
) -> None:
    if value is None:
        if optional:
            return
        raise BadOption(name, "is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and math.isnan(value)
    ):
        raise BadOption(name, f"must be a number; got {_shown(value)}")
    below = value <= low if low_open else value < low
    if below or value > high:
        bracket = "(" if low_open else "["
        # str() for ints: a 400-digit number has no float form to print with :g
        shown = str(value) if isinstance(value, int) else f"{value:g}"
        raise BadOption(name, f"must be in {bracket}{low:g}, {high:g}]; got {shown[:40]}")


# --- parsing strings into typed values, one parser per field -----------------------------
# A form or the command line gives strings; a JSON body may give the value's own type. Any
# other type (an object, a list, true for a number) is refused, never coerced.


def _shown(value: Any) -> str:
    """A value quoted in an error, cut short: a message never grows with the request."""
    text = str(value)
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


def _kind(value: Any) -> str:
    """How a value of the wrong type is named in an error: as JSON names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _wrong_type(name: str, wanted: str, value: Any) -> BadOption:
    return BadOption(name, f"must be {wanted}; got {_kind(value)}")


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    return value


def _parse_int(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise _wrong_type(name, "a whole number", value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise BadOption(name, f"must be a whole number; got {_shown(value)}") from None


def _parse_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _wrong_type(name, "a number", value)
    try:
        number = float(value if isinstance(value, (int, float)) else str(value).strip())
    except (ValueError, OverflowError):
        raise BadOption(name, f"must be a number; got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise BadOption(name, f"must be a finite number; got {_shown(value)}")
    return number


def _parse_optional_float(name: str, value: Any) -> Optional[float]:
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    return _parse_float(name, value)


def _parse_optional_int(name: str, value: Any) -> Optional[int]:
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    return _parse_int(name, value)


def _parse_beam_size(name: str, value: Any) -> Optional[int]:
    if isinstance(value, str) and value.strip().lower() in GREEDY:
        return None
    number = _parse_int(name, value)
    return None if number == 0 else number


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise _wrong_type(name, "true or false", value)
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadOption(name, f"must be true or false; got {_shown(value)}")


def parse_flag(name: str, value: Any) -> bool:
    """A yes/no field of an API's own (not a TranscribeOptions field), read as options
    read theirs: true/false words, else BadOption naming the field."""
    return _parse_bool(name, value)


def _parse_temperatures(name: str, value: Any) -> Tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()]
    else:
        items = [value]
    if len(items) > MAX_TEMPERATURES:  # refused before each is parsed
        raise BadOption(name, f"a fallback schedule has at most {MAX_TEMPERATURES} "
                        f"temperatures; got {len(items)}")
    return tuple(_parse_float(name, item) for item in items)


def _parse_text(name: str, value: Any) -> str:
    return _string(name, value)


def _parse_word(name: str, value: Any) -> str:
    return _string(name, value).strip().lower()


def _parse_language(name: str, value: Any) -> Optional[str]:
    return language_code(_string(name, value))


def _parse_model(name: str, value: Any) -> Optional[str]:
    return _string(name, value).strip() or None


_PARSERS = {
    "task": _parse_word,
    "mode": _parse_word,
    "language": _parse_language,
    "model": _parse_model,
    "beam_size": _parse_beam_size,
    "patience": _parse_float,
    "best_of": _parse_int,
    "temperature": _parse_temperatures,
    "temperature_increment_on_fallback": _parse_float,
    "length_penalty": _parse_optional_float,
    "initial_prompt": _parse_text,
    "condition_on_previous_text": _parse_bool,
    "no_speech_threshold": _parse_optional_float,
    "logprob_threshold": _parse_optional_float,
    "compression_ratio_threshold": _parse_optional_float,
    "hallucination_silence_threshold": _parse_optional_float,
    "word_timestamps": _parse_bool,
    "max_line_width": _parse_optional_int,
    "max_line_count": _parse_optional_int,
    "max_words_per_line": _parse_optional_int,
    "highlight_words": _parse_bool,
    "diarize": _parse_bool,
    "num_speakers": _parse_optional_int,
    "min_speakers": _parse_optional_int,
    "max_speakers": _parse_optional_int,
}
