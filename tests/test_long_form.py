"""Long-form accuracy on real words: the batched engine loses no more than the sequential one.

Two and a half minutes of espeak-ng speech in eight voices (tests/long_speech.py), pauses of
0.3 to 1.5 s, and a 40-second stretch with no pause a VAD can cut at, longer than the 30 s
a decode sees, so words cross the edge of what one decode hears. The bundled tiny.en transcribes it with
both engines at beam 5, temperature 0 without fallback. Measured on the CPU (torch 2.13,
float32): sequential 9.2 % WER with 2 words deleted; batched 9.9 % with 2 deleted. Before
the batched engine went on from a decode's last timestamp (engines/batched.py, _rest), it
lost the last sentence of most windows: 20.5 % with 29 deleted.
"""

from __future__ import annotations

from functools import lru_cache

import jiwer
import pytest
from whisper.normalizers import EnglishTextNormalizer

from bundled_model import bundled_model
from long_speech import long_speech
from whisper_service.engines import dispatch
from whisper_service.options import TranscribeOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

WER_MARGIN = 0.01  # batched may be at most one point worse than sequential


@lru_cache(maxsize=None)
def speech():
    return long_speech(150, seed=0, long_run=40)


@lru_cache(maxsize=None)
def scored(mode: str) -> jiwer.WordOutput:
    options = TranscribeOptions(mode=mode, beam_size=5, temperature=(0.0,), language="en")
    transcript = dispatch.transcribe(bundled_model(), speech().audio, options)
    normalise = EnglishTextNormalizer()
    return jiwer.process_words(normalise(speech().text), normalise(transcript.text))


def test_the_speech_has_a_stretch_longer_than_a_window():
    from whisper_service.engines.vad import speech_windows

    cut = speech_windows(speech().audio)
    whole = speech_windows(speech().audio, split_long=False)
    assert max(w.seconds for w in cut) <= 30 < max(w.seconds for w in whole)
    assert speech().duration > 140 and len(speech().text.split()) > 400


def test_batched_loses_no_more_words_than_sequential():
    sequential, batched = scored("sequential"), scored("batched")
    assert sequential.wer < 0.2  # real words came out
    assert batched.wer <= sequential.wer + WER_MARGIN, (batched.wer, sequential.wer)
    assert batched.deletions <= sequential.deletions, (batched.deletions, sequential.deletions)
