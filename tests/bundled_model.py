"""The bundled tiny.en (a real Whisper), loaded once per test session, and what the tests
that hear its words share: speech from espeak-ng and the word error rate."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import jiwer
from whisper.normalizers import EnglishTextNormalizer

from whisper_service.checkpoints import BUNDLED
from whisper_service.config import Settings
from whisper_service.models import LoadedModel, ModelRegistry

ESPEAK_WORDS_PER_MINUTE = "150"  # as conftest's media fixture speaks


@lru_cache(maxsize=None)
def bundled_model() -> LoadedModel:
    """The bundled model as the registry loads it, on the CPU: one load for the session."""
    return ModelRegistry(Settings(model=BUNDLED, device="cpu")).get(BUNDLED)


def speak(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-s", ESPEAK_WORDS_PER_MINUTE, "-w", str(path), text], check=True)
    return path


def word_error_rate(reference: str, hypothesis: str) -> float:
    """jiwer's WER after openai-whisper's English normaliser, as Whisper's paper scores."""
    normalise = EnglishTextNormalizer()
    return jiwer.wer(normalise(reference), normalise(hypothesis))
