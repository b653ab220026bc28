"""The bundled tiny.en (a real Whisper), loaded once per test session, and what the tests
that hear its words share: speech from espeak-ng and the word error rate."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import jiwer
from whisper.normalizers import EnglishTextNormalizer

from whisper_service.checkpoints import BUNDLED
from whisper_service.config import Settings, bundled_ffmpeg
from whisper_service.models import LoadedModel, ModelRegistry

ESPEAK_WORDS_PER_MINUTE = "150"  # as conftest's media fixture speaks


@lru_cache(maxsize=None)
def bundled_model(cpu_decoder: str = Settings.cpu_decoder) -> LoadedModel:
    """The bundled model as the registry loads it, on the CPU: one load for the session
    per cpu_decoder (WHISPER_CPU_DECODER: the batched engine's window decodes on
    CTranslate2 int8 by default, or "torch")."""
    return ModelRegistry(Settings(model=BUNDLED, device="cpu", cpu_decoder=cpu_decoder)).get(BUNDLED)


def speak(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-s", ESPEAK_WORDS_PER_MINUTE, "-w", str(path), text], check=True)
    return path


def spoken_wav(text: str, folder: Path, *, rate: int = 16000, before: float = 0.0,
               after: float = 0.0, words_per_minute: str = ESPEAK_WORDS_PER_MINUTE) -> Path:
    """espeak-ng's speech of `text` as a mono PCM16 WAV at `rate`, with `before` and `after`
    seconds of silence around it (what a live stream or a fake microphone plays)."""
    raw = folder / "espeak.wav"
    subprocess.run(["espeak-ng", "-s", words_per_minute, "-w", str(raw), text], check=True)
    target = folder / f"speech-{rate}.wav"
    subprocess.run([bundled_ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-i", str(raw),
                    "-af", f"adelay={int(before * 1000)},apad=pad_dur={after}", "-ar", str(rate),
                    "-ac", "1", "-c:a", "pcm_s16le", str(target)], check=True)
    return target


def word_error_rate(reference: str, hypothesis: str) -> float:
    """jiwer's WER after openai-whisper's English normaliser, as Whisper's paper scores."""
    normalise = EnglishTextNormalizer()
    return jiwer.wer(normalise(reference), normalise(hypothesis))
