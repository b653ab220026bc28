"""Which bundled model transcribes English better: tiny.en or the multilingual base.

Both models, both engines, on the tests' English speech (tests/long_speech.py: 150 s of
espeak-ng sentences in eight voices, with a 40 s stretch no VAD can cut), beam 5,
temperature 0 without fallback, one torch thread; WER after Whisper's English normaliser,
and the CPU seconds of the process. whisper_service/stand_ins.py follows the result.

    .venv/bin/python bench/stand_ins.py [bundled bundled-base]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jiwer  # noqa: E402
import torch  # noqa: E402
from whisper.normalizers import EnglishTextNormalizer  # noqa: E402

from long_speech import long_speech  # noqa: E402  (the tests' generator, shared)
from whisper_service.config import Settings  # noqa: E402
from whisper_service.engines import dispatch  # noqa: E402
from whisper_service.models import ModelRegistry  # noqa: E402
from whisper_service.options import TranscribeOptions  # noqa: E402


def main(names) -> None:
    torch.set_num_threads(1)
    speech = long_speech(150, seed=0, long_run=40)
    normalise = EnglishTextNormalizer()
    print("model          engine      language  WER     deleted  CPU s")
    for name in names:
        loaded = ModelRegistry(Settings(model=name, device="cpu")).get(name)
        for mode, language in (("batched", "en"), ("sequential", "en"), ("batched", None)):
            options = TranscribeOptions(mode=mode, beam_size=5, temperature=(0.0,), language=language)
            started = time.process_time()
            transcript = dispatch.transcribe(loaded, speech.audio, options)
            cpu = time.process_time() - started
            scored = jiwer.process_words(normalise(speech.text), normalise(transcript.text))
            print(f"{name:14s} {mode:11s} {language or 'detect':9s} {scored.wer * 100:5.1f} %"
                  f"  {scored.deletions:7d}  {cpu:5.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["bundled", "bundled-base"])
