"""decode_batch: whisper.decode for many 30-second windows at once."""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional, Sequence

import torch
import whisper
from torch import Tensor
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper
from whisper.utils import compression_ratio

from whisper_service.engines.decoding.plan import DecodePlan, Prompt, needs_stock_decoder, verify_options
from whisper_service.engines.decoding.steps import decode_eager, decode_static
from whisper_service.engines.pipeline import current_times


@torch.no_grad()
def decode_batch(
    model: Whisper,
    mel: Tensor,
    options: DecodingOptions = DecodingOptions(),
    prompts: Optional[Sequence[Prompt]] = None,
    static: Optional[bool] = None,
) -> List[DecodingResult]:
    """Decode every 30-second window of `mel` at once; one DecodingResult per window.

    mel: (B, n_mels, 3000) log-Mel spectrograms (a 2-D mel is a batch of one), or already
        encoded audio features (B, n_audio_ctx, n_audio_state).
    options: as for whisper.decode.
    prompts: one prompt per window (token ids or text), replacing options.prompt for that
        window; None or empty means no prompt for that window. Without it every window uses
        options.prompt.
    static: fixed-shape steps (captured in a CUDA graph on a GPU) or the eager reference
        steps; None: fixed-shape on CUDA, eager elsewhere. Both give the same tokens.

    The encoder's and the decoder's seconds go to the StageTimes this thread is recording
    (pipeline.current_times), if any.

    Result i equals whisper.decode(model, mel[i], replace(options, prompt=prompts[i])) up to
    float rounding (on CPU compare with fp16=False; see the package docstring).
    """
    if mel.ndim == 2:
        mel = mel.unsqueeze(0)
    n_audio = mel.shape[0]
    if prompts is not None and len(prompts) != n_audio:
        raise ValueError(f"got {len(prompts)} prompts for {n_audio} windows")
    window_prompts: List[Prompt] = (
        list(prompts) if prompts is not None else [options.prompt] * n_audio
    )
    verify_options(options)
    if n_audio == 0:
        return []
    times = current_times(model.device)
    if needs_stock_decoder(options):
        with times.stage("decoder"):
            return [
                whisper.decode(model, mel[i], replace(options, prompt=window_prompts[i]))
                for i in range(n_audio)
            ]

    plan = DecodePlan.create(model, options, window_prompts)
    with times.stage("encoder"):
        audio_features = _encode(model, mel, options)
        languages = [options.language] * n_audio
        if options.language is None:
            # as DecodingTask._detect_language: detect, then overwrite the language token
            language_tokens, language_probs = model.detect_language(
                audio_features, plan.tokenizer
            )
            languages = [max(probs, key=probs.get) for probs in language_probs]
            plan = plan.with_language_tokens(language_tokens.tolist())

    use_static = audio_features.device.type == "cuda" if static is None else static
    decode = decode_static if use_static else decode_eager
    with times.stage("decoder"):
        tokens, sum_logprobs, no_speech_probs = decode(
            model, plan, audio_features, plan.tokenizer.no_speech
        )

    results = []
    for i in range(n_audio):
        text = plan.tokenizer.decode(tokens[i]).strip()
        results.append(
            DecodingResult(
                audio_features=audio_features[i],
                language=languages[i],
                tokens=tokens[i],
                text=text,
                avg_logprob=sum_logprobs[i] / (len(tokens[i]) + 1),
                no_speech_prob=no_speech_probs[i],
                temperature=options.temperature,
                compression_ratio=compression_ratio(text),
            )
        )
    return results


def _encode(model: Whisper, mel: Tensor, options: DecodingOptions) -> Tensor:
    device = model.device
    dtype = torch.float16 if options.fp16 and device.type == "cuda" else torch.float32
    mel = mel.to(device=device, dtype=dtype)
    if mel.shape[-2:] == (model.dims.n_audio_ctx, model.dims.n_audio_state):
        return mel  # already encoded, as whisper.decode accepts
    return model.encoder(mel)
