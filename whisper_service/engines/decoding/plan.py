"""What whisper's DecodingTask derives from the options, per window where it differs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple, Union

from whisper.audio import CHUNK_LENGTH
from whisper.decoding import DecodingOptions
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer

Prompt = Union[str, Sequence[int], None]

SUPPRESS_ALL_NON_SPEECH = -1  # in suppress_tokens: tokenizer.non_speech_tokens


@dataclass(frozen=True)
class DecodePlan:
    """Everything DecodingTask derives from the options, per window where it differs."""

    tokenizer: Tokenizer
    options: DecodingOptions
    n_ctx: int  # the decoder's text context
    sample_len: int  # tokens sampled at most per window
    initial_tokens: Tuple[Tuple[int, ...], ...]  # per window: prompt, SOT sequence, prefix
    sot_indices: Tuple[int, ...]  # per window: position of <|startoftranscript|>
    suppress_tokens: Optional[Tuple[int, ...]]  # None: no SuppressTokens filter
    blank_tokens: Optional[Tuple[int, ...]]  # None: no SuppressBlank filter
    timestamps: bool  # ApplyTimestampRules on
    max_initial_timestamp_index: Optional[int]  # latest first timestamp, in tokens

    @classmethod
    def create(cls, model: Whisper, options: DecodingOptions,
               prompts: Sequence[Prompt]) -> "DecodePlan":
        tokenizer = get_tokenizer(
            model.is_multilingual,
            num_languages=model.num_languages,
            language=options.language or "en",
            task=options.task,
        )
        n_ctx = model.dims.n_text_ctx
        sample_len = options.sample_len or n_ctx // 2
        sot_sequence = (
            tokenizer.sot_sequence_including_notimestamps
            if options.without_timestamps
            else tokenizer.sot_sequence
        )
        initial = [
            initial_tokens(tokenizer, sot_sequence, options.prefix, prompt, n_ctx, sample_len)
            for prompt in prompts
        ]
        for tokens in initial:
            if len(tokens) > n_ctx:
                raise ValueError(
                    f"{len(tokens)} initial tokens do not fit the text context of {n_ctx}"
                )
        max_initial_timestamp_index = None
        if options.max_initial_timestamp:
            precision = CHUNK_LENGTH / model.dims.n_audio_ctx  # usually 0.02 seconds
            max_initial_timestamp_index = round(options.max_initial_timestamp / precision)
        return cls(
            tokenizer=tokenizer,
            options=options,
            n_ctx=n_ctx,
            sample_len=sample_len,
            initial_tokens=tuple(tuple(tokens) for tokens in initial),
            sot_indices=tuple(tokens.index(tokenizer.sot) for tokens in initial),
            suppress_tokens=(
                suppress_tokens(tokenizer, options.suppress_tokens)
                if options.suppress_tokens
                else None
            ),
            blank_tokens=(
                tuple(tokenizer.encode(" ") + [tokenizer.eot]) if options.suppress_blank else None
            ),
            timestamps=not options.without_timestamps,
            max_initial_timestamp_index=max_initial_timestamp_index,
        )

    def with_language_tokens(self, language_tokens: Sequence[int]) -> "DecodePlan":
        """The plan with each window's language token replaced by a detected one, as
        DecodingTask._detect_language overwrites it."""
        initial = []
        for tokens, sot_index, language in zip(
            self.initial_tokens, self.sot_indices, language_tokens
        ):
            tokens = list(tokens)
            tokens[sot_index + 1] = int(language)
            initial.append(tuple(tokens))
        return replace(self, initial_tokens=tuple(initial))

    @property
    def n_windows(self) -> int:
        return len(self.initial_tokens)

    def step_limit(self, window: int) -> int:
        """Tokens whisper samples at most for this window: sample_len, or fewer when the
        context fills up (its loop stops once the sequence is longer than n_ctx)."""
        return min(self.sample_len, self.n_ctx - len(self.initial_tokens[window]) + 1)

    def full_sequence_tokens(self, window: int, sampled: Sequence[int]) -> List[int]:
        """As DecodingTask.run slices: from the first sampled position to the first EOT."""
        eot = self.tokenizer.eot
        sequence = list(self.initial_tokens[window]) + list(sampled) + [eot]
        return sequence[len(self.initial_tokens[window]) : sequence.index(eot)]


def verify_options(options: DecodingOptions) -> None:
    """The checks of DecodingTask._verify_options, with the same messages."""
    if options.beam_size is not None and options.best_of is not None:
        raise ValueError("beam_size and best_of can't be given together")
    if options.temperature == 0 and options.best_of is not None:
        raise ValueError("best_of with greedy sampling (T=0) is not compatible")
    if options.patience is not None and options.beam_size is None:
        raise ValueError("patience requires beam_size to be given")
    if options.length_penalty is not None and not (0 <= options.length_penalty <= 1):
        raise ValueError("length_penalty (alpha) should be a value between 0 and 1")


def needs_stock_decoder(options: DecodingOptions) -> bool:
    """Sampling (random, nothing to batch exactly) and language identification only."""
    sampling = options.beam_size is None and options.temperature > 0
    return sampling or options.task == "lang_id"


def initial_tokens(
    tokenizer: Tokenizer,
    sot_sequence: Sequence[int],
    prefix: Prompt,
    prompt: Prompt,
    n_ctx: int,
    sample_len: int,
) -> List[int]:
    """DecodingTask._get_initial_tokens, for one window's prompt."""
    tokens = list(sot_sequence)
    if prefix:
        prefix_tokens = (
            tokenizer.encode(" " + prefix.strip()) if isinstance(prefix, str) else prefix
        )
        max_prefix_len = n_ctx // 2 - sample_len
        tokens = tokens + list(prefix_tokens[-max_prefix_len:])
    if prompt:
        prompt_tokens = (
            tokenizer.encode(" " + prompt.strip()) if isinstance(prompt, str) else prompt
        )
        tokens = [tokenizer.sot_prev] + list(prompt_tokens[-(n_ctx // 2 - 1) :]) + tokens
    return [int(t) for t in tokens]


def suppress_tokens(tokenizer: Tokenizer, suppress) -> Tuple[int, ...]:
    """DecodingTask._get_suppress_tokens (without mutating the caller's list)."""
    if isinstance(suppress, str):
        suppress = [int(t) for t in suppress.split(",")]
    suppress = list(suppress)
    if SUPPRESS_ALL_NON_SPEECH in suppress:
        suppress = [t for t in suppress if t >= 0]
        suppress.extend(tokenizer.non_speech_tokens)
    suppress.extend(
        [
            tokenizer.transcribe,
            tokenizer.translate,
            tokenizer.sot,
            tokenizer.sot_prev,
            tokenizer.sot_lm,
        ]
    )
    if tokenizer.no_speech is not None:
        suppress.append(tokenizer.no_speech)  # its probability is reported separately
    return tuple(sorted(set(suppress)))
