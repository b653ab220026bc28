"""decode_batch on CTranslate2: the same windows, prompts and options, decoded by the C++
library faster-whisper is built on (int8 weights on the CPU by default).

`CTranslate2Windows.decode(model, mel, options, prompts)` takes what `decode_batch` takes and
returns the same DecodingResults: the initial tokens, suppressed tokens, blank suppression,
first-timestamp limit and sample length come from the same DecodePlan whisper's
DecodingTask derives; CTranslate2 applies Whisper's timestamp rules itself. Its beam search
ranks finished hypotheses by sum of log-probabilities over length, as whisper's does with
length_penalty None. What it cannot do exactly (sampling at a temperature above 0, a
numeric length_penalty, language detection inside the decode, a decode prefix) is handed
to the torch reference, decode_batch, for those windows: `supports(options)` says which.

The torch model stays what the rest of the service uses (language detection, word timing,
live captions); only the batched engine's window decodes run here. Not token-equal to the
torch path: int8 weights round differently (tests/test_ct2.py holds both to the same
words on real speech, and float32 to the same tokens).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper
from whisper.utils import compression_ratio

from whisper_service.engines.decoding.batch import decode_batch
from whisper_service.engines.decoding.plan import DecodePlan, Prompt, verify_options
from whisper_service.engines.pipeline import current_times

NO_TIMESTAMP_LIMIT = 1 << 16  # max_initial_timestamp_index when whisper sets none
ENCODE_WINDOWS = 1  # windows encoded at once (see CTranslate2Windows._encode)

log = logging.getLogger(__name__)


def load(folder: str, compute_type: str, threads: int) -> Optional["CTranslate2Windows"]:
    """The CTranslate2 model in `folder` on the CPU, its weights in `compute_type` (int8 or
    float32), `threads` threads per decode; None when ctranslate2 is not installed or
    cannot read the folder (the torch path decodes then, and the log says why)."""
    try:
        import ctranslate2
    except ImportError:
        log.warning("ctranslate2 is not installed: the batched engine decodes with torch")
        return None
    try:
        model = ctranslate2.models.Whisper(folder, device="cpu", compute_type=compute_type,
                                           intra_threads=threads)
    except (RuntimeError, ValueError, OSError) as error:
        log.warning("CTranslate2 cannot load %s (%s): the batched engine decodes with torch",
                    folder, error)
        return None
    return CTranslate2Windows(model)


def supports(options: DecodingOptions) -> bool:
    """Whether CTranslate2 decodes with these options as whisper.decode would."""
    return (options.temperature == 0 and options.language is not None
            and options.length_penalty is None and not options.prefix
            and options.task in ("transcribe", "translate"))


class CTranslate2Windows:
    """Window decodes on one CTranslate2 Whisper model (ctranslate2.models.Whisper)."""

    def __init__(self, ct2_model):
        self.ct2 = ct2_model

    def decode(self, model: Whisper, mel: torch.Tensor, options: DecodingOptions = DecodingOptions(),
               prompts: Optional[Sequence[Prompt]] = None) -> List[DecodingResult]:
        """As decode_batch(model, mel, options, prompts): mel (B, n_mels, 3000) log-Mel
        spectrograms of the windows; `model` is the same checkpoint in torch, whose
        dimensions and tokenizer the plan takes and which decodes what CTranslate2 cannot."""
        if mel.ndim == 2:
            mel = mel.unsqueeze(0)
        if not supports(options) or mel.shape[-2] != model.dims.n_mels:
            return decode_batch(model, mel, options, prompts)
        n_audio = mel.shape[0]
        window_prompts = list(prompts) if prompts is not None else [options.prompt] * n_audio
        if len(window_prompts) != n_audio:
            raise ValueError(f"got {len(window_prompts)} prompts for {n_audio} windows")
        verify_options(options)
        if n_audio == 0:
            return []
        times = current_times()
        with times.stage("encoder"):
            encoded = self._encode(mel)
        return self.decode_encoded(model, encoded, options, window_prompts)

    def encode(self, mel: torch.Tensor) -> np.ndarray:
        """(B, 1500, n_audio_state) float32 features of mel (B, n_mels, 3000)."""
        return self._encode(mel)

    def decode_encoded(self, model: Whisper, encoded: np.ndarray, options: DecodingOptions,
                       prompts: Sequence[Prompt]) -> List[DecodingResult]:
        """As decode(), from encoded features (B, positions, n_audio_state), float32: the
        encoder's output for the full window, or for the first positions of a shorter input
        (live captions' tentative decodes); options must be supported()."""
        import ctranslate2

        n_audio = len(encoded)
        if n_audio == 0:
            return []
        plan = DecodePlan.create(model, options, prompts)
        times = current_times()
        encoded = np.ascontiguousarray(encoded, dtype=np.float32)
        # CTranslate2 wants <|startoftranscript|> at one position in a batch: windows
        # whose prompts differ in length are decoded in groups, from the one encoding
        groups: Dict[int, List[int]] = defaultdict(list)
        for index, sot in enumerate(plan.sot_indices):
            groups[sot].append(index)
        generated: List[object] = [None] * n_audio
        for indexes in groups.values():
            part = ctranslate2.StorageView.from_array(
                encoded if len(groups) == 1 else np.ascontiguousarray(encoded[indexes]))
            with times.stage("decoder"):
                for index, result in zip(indexes, self._generate(part, plan, indexes, options)):
                    generated[index] = result
        results = []
        for result in generated:
            tokens = [t for t in result.sequences_ids[0] if t != plan.tokenizer.eot]
            # the score is the sum of log-probabilities (end of text included) over length
            total = result.scores[0] * max(1, len(tokens))
            text = plan.tokenizer.decode(tokens).strip()
            results.append(DecodingResult(
                audio_features=torch.empty(0),
                language=options.language,
                tokens=tokens,
                text=text,
                avg_logprob=total / (len(tokens) + 1),
                no_speech_prob=result.no_speech_prob,
                temperature=options.temperature,
                compression_ratio=compression_ratio(text),
            ))
        return results

    def _encode(self, mel: torch.Tensor) -> np.ndarray:
        """(B, n_audio_ctx, n_audio_state) encoder output, ENCODE_WINDOWS windows at a
        time: the encoder's attention holds (windows x heads x 1500 x 1500) floats, 430 MB
        for eight windows of tiny, and a larger batch computes no faster on the CPU
        (measured, tiny int8 on one thread: 8 windows in 3.6-3.8 CPU s one at a time,
        3.7-4.2 two at a time, 5.2 all at once)."""
        import ctranslate2

        mel = np.ascontiguousarray(mel.float().cpu().numpy())
        parts = [np.asarray(self.ct2.encode(ctranslate2.StorageView.from_array(
                     np.ascontiguousarray(mel[start:start + ENCODE_WINDOWS]))))
                 for start in range(0, len(mel), ENCODE_WINDOWS)]
        return np.ascontiguousarray(np.concatenate(parts))

    def _generate(self, encoded, plan: DecodePlan, indexes: List[int],
                  options: DecodingOptions) -> list:
        """CTranslate2's search over these windows, whose prompts are of one length."""
        prompts = [list(plan.initial_tokens[i]) for i in indexes]
        return self.ct2.generate(
            encoded, prompts,
            beam_size=options.beam_size or 1,
            patience=options.patience or 1.0,
            length_penalty=1.0,  # sum of log-probabilities over length: whisper's None
            max_length=min(plan.n_ctx, len(prompts[0]) + plan.sample_len),
            return_scores=True,
            return_no_speech_prob=True,
            max_initial_timestamp_index=(plan.max_initial_timestamp_index
                                         if plan.max_initial_timestamp_index is not None
                                         else NO_TIMESTAMP_LIMIT),
            suppress_blank=plan.blank_tokens is not None,
            suppress_tokens=list(plan.suppress_tokens or ()),
            sampling_topk=1,
        )

