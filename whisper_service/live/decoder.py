"""Live sessions' buffers decoded together: one batch per model, task and kind of decode.

Each buffer (at most 30 s) is one row of a batch, with its own prompt, decoded at
temperature 0 and then timed word by word from the cross-attention, as whisper.transcribe
does with word_timestamps. Two kinds of decode (encoder.py says why):

- tentative (a speaking utterance's buffer, again and again): greedy, and on the CPU from a
  short encoder input (the buffer and a little padding, not 30 s) and CTranslate2's search,
  as the file engine's windows decode there;
- final (an utterance that ended: what it says is committed): the session's beam size, on
  the full 30 s window, as a file's window is decoded.

Rows whose language is still open are detected first, together, on the full window. A
decode takes the model's lock as an urgent turn (models.py's TurnLock): file jobs wait
between their batches while live sessions decode.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Dict, List, Protocol, Sequence, Tuple, Union

import torch
import whisper
from whisper.audio import HOP_LENGTH, SAMPLE_RATE
from whisper.timing import add_word_timestamps, dtw
from whisper.tokenizer import get_tokenizer

from whisper_service.engines.batched import _segments
from whisper_service.engines.decoding import ct2, decode_batch
from whisper_service.models import LoadedModel, ModelRegistry
from whisper_service.transcript import Word
from whisper_service.engines.vad import Window
from whisper_service.live.encoder import encode
from whisper_service.live.session import DecodeRequest, DecodeResult, LiveOptions

log = logging.getLogger(__name__)

# a row is silence when the model is this sure there is no speech (and unsure of its words)
NO_SPEECH_PROBABILITY = 0.6
SILENT_LOGPROB = -1.0
# tokens a decode samples at most: this many, and this many per second of its buffer (fast
# speech is about 5 text tokens a second, timestamps included)
MIN_SAMPLE_TOKENS = 24
TOKENS_PER_SECOND = 12

Outcome = Union[DecodeResult, Exception]


class LiveDecoder(Protocol):
    """What the scheduler asks of a decoder: a result (or the error) for every request."""

    def decode(self, requests: Sequence[DecodeRequest]) -> List[Outcome]: ...

    def check(self, options: LiveOptions) -> None: ...


class WhisperDecoder:
    def __init__(self, models: ModelRegistry):
        self.models = models

    def check(self, options: LiveOptions) -> None:
        """BadOption for a model this server does not offer, before a session opens."""
        self.models.check_allowed(options.model)

    @staticmethod
    def warm_up() -> None:
        """Compile whisper's word timing (numba's first call takes seconds), so that a
        server's first live session does not wait for it."""
        dtw(torch.zeros(4, 4))

    def decode(self, requests: Sequence[DecodeRequest]) -> List[Outcome]:
        outcomes: List[Outcome] = [ValueError("not decoded")] * len(requests)
        groups: Dict[Tuple, List[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            # the language too: a stand-in for a missing model is chosen by it (stand_ins.py)
            key = (request.options.model, request.options.task, request.options.language,
                   _tentative(request))
            groups[key].append(index)
        for (model, task, language, tentative), indices in groups.items():
            try:
                loaded = self.models.for_task(model, task, language)
                with loaded.lock.urgent():
                    found = _decode_rows(loaded, [requests[i] for i in indices], tentative)
            except Exception as error:  # every session of the group learns why
                log.exception("live decode of %d session(s) failed", len(indices))
                found = [error] * len(indices)
            for index, outcome in zip(indices, found):
                outcomes[index] = outcome
        return outcomes


def _tentative(request: DecodeRequest) -> bool:
    """A fast decode (greedy, short input): tentative words, or the last decode of a
    session that is behind. One that still detects the language uses the full window."""
    return request.fast and request.language is not None


def _sample_len(requests: Sequence[DecodeRequest], n_ctx: int) -> int:
    """Tokens a decode may sample: enough for the longest buffer's speech, so that a
    decoder looping on a phrase stops soon instead of at whisper's 224 tokens."""
    seconds = max(len(r.audio) for r in requests) / SAMPLE_RATE
    return min(n_ctx // 2, MIN_SAMPLE_TOKENS + int(TOKENS_PER_SECOND * seconds))


def _decode_rows(loaded: LoadedModel, requests: Sequence[DecodeRequest],
                 tentative: bool = False) -> List[Outcome]:
    model = loaded.model
    # once: the search, language detection and word timing share it
    features = encode(loaded, [r.audio for r in requests], short=tentative)
    languages = _languages(loaded, features, requests)
    outcomes: List[Outcome] = [ValueError("not decoded")] * len(requests)
    by_language: Dict[str, List[int]] = defaultdict(list)
    for index, (code, _) in enumerate(languages):
        by_language[code].append(index)
    for code, indices in by_language.items():
        rows = [requests[i] for i in indices]
        task = rows[0].options.task
        tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                  language=code, task=task)
        options = whisper.DecodingOptions(
            task=task, language=code, temperature=0.0,
            beam_size=None if tentative else rows[0].options.beam_size, fp16=loaded.fp16,
            sample_len=_sample_len(rows, model.dims.n_text_ctx))
        prompts = [r.prompt or None for r in rows]
        windows = loaded.windows if loaded.device.type == "cpu" else None
        if windows is not None and ct2.supports(options):
            results = windows.decode_encoded(model, features[indices].float().numpy(),
                                             options, prompts)
        else:
            results = decode_batch(model, features[indices], options, prompts)
        for index, result in zip(indices, results):
            words = _words(model, tokenizer, requests[index], features[index], result)
            outcomes[index] = DecodeResult(tuple(words), *languages[index], model=loaded.name)
    return outcomes


def _languages(loaded: LoadedModel, features: torch.Tensor,
               requests: Sequence[DecodeRequest]) -> List[Tuple[str, float]]:
    """(code, probability) of each row: the session's when fixed, else detected."""
    found: List[Tuple[str, float]] = [(r.language, 1.0) if r.language else ("en", 1.0)
                                      for r in requests]
    open_rows = [i for i, r in enumerate(requests) if not r.language]
    if open_rows and loaded.is_multilingual:
        _, probabilities = loaded.model.detect_language(features[open_rows])
        if isinstance(probabilities, dict):
            probabilities = [probabilities]
        for index, row in zip(open_rows, probabilities):
            code = max(row, key=row.get)
            found[index] = (code, float(row[code]))
    return found


class _Encoded:
    """The model as whisper's word timing sees it when handed audio features the decode
    already encoded: called, it runs the decoder only (the encoder would run again)."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self._model.decoder(tokens, features)


def _words(model, tokenizer, request: DecodeRequest, features: torch.Tensor,
           result) -> List[Word]:
    """The decode's words, timed from the start of the request's audio."""
    if (result.no_speech_prob > NO_SPEECH_PROBABILITY
            and result.avg_logprob < SILENT_LOGPROB):
        return []
    window = Window(0, len(request.audio))
    segments = _segments(window, result, tokenizer, start_id=0)
    if not segments:
        return []
    add_word_timestamps(segments=segments, model=_Encoded(model), tokenizer=tokenizer, mel=features,
                        num_frames=len(request.audio) // HOP_LENGTH, last_speech_timestamp=0.0)
    return [
        Word(word=w["word"], start=float(w["start"]), end=float(w["end"]),
             probability=float(w.get("probability", 0.0)))
        for segment in segments for w in segment.get("words", [])
    ]
