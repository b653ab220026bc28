"""Which bundled model stands in for a configured one that cannot be had here.

A configured model (the default, or the translation model) whose weights are not on this
machine and cannot be downloaded (a host without internet) is replaced, request by request,
by a model installed with the requirements (checkpoints/bundled.py), chosen by what the
request asks:

    task         language            stand-in
    transcribe   English ("en")      ENGLISH_TRANSCRIPTION (measured below)
    transcribe   another, or detect  base (bundled, multilingual)
    translate    any                 base (bundled, multilingual)

tiny.en can neither detect a language, nor transcribe another, nor translate; base can do
all three. On English, measured on the tests' English speech (tests/long_speech.py: 150 s,
eight espeak-ng voices, beam 5, temperature 0, one torch thread; see bench/RESULTS.md):
ENGLISH_TRANSCRIPTION is the better of the two there.
"""

from __future__ import annotations

from typing import Optional

from whisper_service.checkpoints import BUNDLED, BUNDLED_BASE, BUNDLED_MODELS, bundled

ENGLISH = "en"
# the bundled model that transcribes English for a missing model (see the measurement above)
ENGLISH_TRANSCRIPTION = BUNDLED_BASE


def choose(task: str, language: Optional[str]) -> Optional[str]:
    """The installed bundled model that stands in for a missing one for this task and spoken
    language (None: detected); None when no installed bundled model can do it."""
    wanted = ENGLISH_TRANSCRIPTION if task == "transcribe" and language == ENGLISH else BUNDLED_BASE
    for name in (wanted, *BUNDLED_MODELS):
        if bundled.installed(name) and can_do(name, task, language):
            return name
    return None


def can_do(name: str, task: str, language: Optional[str]) -> bool:
    """Whether a bundled model can run this task on this language (None: detected)."""
    if not BUNDLED_MODELS[name].english_only:
        return True
    return task == "transcribe" and language in (None, ENGLISH)


def summary() -> str:
    """Which bundled model stands in for what, in a sentence for people."""
    base = BUNDLED_MODELS[BUNDLED_BASE].label
    if ENGLISH_TRANSCRIPTION == BUNDLED_BASE:
        return f"{base} transcribes and translates instead"
    return (f"{BUNDLED_MODELS[BUNDLED].label} transcribes English and {base} every other "
            "language and translation instead")
