"""Held-out WER and CER through the service's own decoding (engines/dispatch.py, the engine a
job runs), scored as `evaluate` scores (cli/evaluate.py: openai-whisper's normalisers,
jiwer's alignment), so the numbers before, during and after training are comparable with
each other and with the `evaluate` command's table."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from whisper.audio import SAMPLE_RATE
from whisper.model import Whisper

from whisper_service import cancel
from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.cli.evaluate import Dataset, ModelScore, score, total
from whisper_service.engines import dispatch, window_progress
from whisper_service.errors import MediaError
from whisper_service.models import LoadedModel
from whisper_service.options import TranscribeOptions


@dataclass(frozen=True)
class HeldOut:
    """The held-out clips decoded once: (path, reference, 16 kHz samples)."""

    clips: tuple  # of (str, str, np.ndarray)
    skipped: tuple = ()  # "name: why" for clips that could not be read

    @classmethod
    def read(cls, dataset: Dataset, limits: DecodeLimits) -> "HeldOut":
        clips, skipped = [], [f"{name}: there is no such file" for name in dataset.missing]
        for utterance in dataset.utterances:
            try:
                audio = decode_file(utterance.audio, limits, os.path.basename(utterance.audio))
            except MediaError as error:
                skipped.append(f"{os.path.basename(utterance.audio)}: {error}")
                continue
            clips.append((utterance.audio, utterance.reference, audio))
        return cls(tuple(clips), tuple(skipped))


def loaded(name: str, model: Whisper, device: torch.device) -> LoadedModel:
    """A model in memory as the registry hands models to the engines (float32)."""
    model.to(device).eval()
    cancel.install(model)
    window_progress.install(model)
    return LoadedModel(name=name, model=model, device=device, fp16=False, load_seconds=0.0)


def score_model(model: LoadedModel, held_out: HeldOut, options: TranscribeOptions) -> ModelScore:
    """Every held-out clip transcribed by `model` with `options`, scored and summed."""
    options = options.with_changes(model=model.name)
    results = []
    for path, reference, audio in held_out.clips:
        started = time.monotonic()
        transcript = dispatch.transcribe(model, audio, options)
        language = options.language or transcript.language
        results.append(score(model.name, path, reference, transcript.text, language,
                             len(audio) / SAMPLE_RATE, time.monotonic() - started))
    return total(model.name, results, held_out.skipped)
