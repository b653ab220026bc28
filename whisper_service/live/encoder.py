"""The audio features of live buffers: a short encoder input for tentative decodes, the
whole 30 s window for the decodes that end an utterance.

Whisper's encoder takes 30 s of log-Mel frames (3000; 1500 positions out). A live buffer
holds a few seconds, so most of that work is spent on padding. Tentative decodes on the CPU
encode only the buffer and SHORT_PAD_SECONDS of its padding, at least SHORT_MIN_SECONDS, in
steps of SHORT_STEP_SECONDS (the rows of a batch share one length): the same convolutions,
positional embeddings and blocks, on the first positions only, as whisper.cpp's `audio_ctx`
does. Measured on the bundled tiny.en and espeak-ng sentences, the greedy text of 4-7 s
sentences was the same as with the full window, at about a third of the CPU time; shorter
padding (0.5 s) made the decoder loop, so the padding is kept generous. The decode that
ends an utterance (and commits what is left) and every decode on a GPU (whose fixed-shape
steps, batched, are cheap) use the full window, as the file engines do: CTranslate2's int8
encoder where the model has that twin (the file engine's CPU path), torch's otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE

from whisper_service.models import LoadedModel

SHORT_PAD_SECONDS = 2.0  # of padding after the buffer's audio, at least
SHORT_MIN_SECONDS = 10.0  # the shortest encoder input
SHORT_STEP_SECONDS = 5.0  # encoder inputs are a multiple of this long (rows share one length)
SECONDS_PER_POSITION = 2 * HOP_LENGTH / SAMPLE_RATE  # 0.02 s: the encoder halves the frames


def short_positions(n_audio_ctx: int, samples: int) -> int:
    """How many encoder positions a short input of `samples` of audio takes."""
    seconds = max(SHORT_MIN_SECONDS, samples / SAMPLE_RATE + SHORT_PAD_SECONDS)
    seconds = math.ceil(seconds / SHORT_STEP_SECONDS) * SHORT_STEP_SECONDS
    return min(n_audio_ctx, int(round(seconds / SECONDS_PER_POSITION)))


def log_mel(loaded: LoadedModel, audios: Sequence[np.ndarray]) -> torch.Tensor:
    """(B, n_mels, 3000): each buffer's log-Mel window, padded to 30 s as whisper pads."""
    return torch.stack([
        whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), loaded.model.dims.n_mels,
                                    device=loaded.device)
        for audio in audios
    ])


@torch.no_grad()
def encode(loaded: LoadedModel, audios: Sequence[np.ndarray], short: bool) -> torch.Tensor:
    """(B, positions, n_audio_state) float features of the buffers: short (on the CPU with
    a CTranslate2 twin, which decodes from any length; see the module's docstring) or the
    full window's 1500 positions."""
    model = loaded.model
    mel = log_mel(loaded, audios)
    windows = loaded.windows if loaded.device.type == "cpu" else None
    if short and windows is not None:  # CTranslate2 decodes any length; torch's runner 1500
        positions = max(short_positions(model.dims.n_audio_ctx, len(a)) for a in audios)
        if positions < model.dims.n_audio_ctx:
            return encode_positions(model, mel[:, :, :2 * positions])
    if windows is not None:  # CTranslate2's int8 encoder, as the file engine's windows
        return torch.from_numpy(windows.encode(mel))
    mel = mel.half() if loaded.fp16 else mel
    return model.encoder(mel)


def encode_positions(model: whisper.Whisper, mel: torch.Tensor) -> torch.Tensor:
    """whisper's AudioEncoder.forward on mel (B, n_mels, 2 * positions) of fewer than 3000
    frames: the positional embedding's first positions (the stock forward asserts 1500)."""
    encoder = model.encoder
    assert mel.shape[-1] <= N_FRAMES and mel.shape[-1] % 2 == 0, mel.shape
    x = torch.nn.functional.gelu(encoder.conv1(mel))
    x = torch.nn.functional.gelu(encoder.conv2(x))
    x = x.permute(0, 2, 1)
    x = (x + encoder.positional_embedding[:x.shape[1]]).to(x.dtype)
    for block in encoder.blocks:
        x = block(x)
    return encoder.ln_post(x)
