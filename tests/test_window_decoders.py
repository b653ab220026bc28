"""The batched engine's window decoders, one suite for every backend: the torch reference
(decoding.decode_batch) and CTranslate2 (decoding/ct2.py) in float32 and int8, on real
speech from the bundled tiny.en.

What each must give: whisper.decode's tokens for every window where the arithmetic is the
same (greedy, float32), the same words within a small error where it is not (int8, and
CTranslate2's own beam search), every window its own prompt in one batch, and what a
backend cannot do exactly handed to the torch reference.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
import torch
import whisper

from bundled_model import bundled_model, word_error_rate
from long_speech import long_speech
from whisper_service.checkpoints import BUNDLED, bundled_folder
from whisper_service.config import ConfigError, Settings
from whisper_service.engines.decoding import ct2, decode_batch
from whisper_service.engines.vad import speech_windows
from whisper_service.models import ModelRegistry

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

BACKENDS = ("torch", "ct2-float32", "ct2-int8")
EXACT = ("torch", "ct2-float32")  # same arithmetic as whisper.decode on the CPU
BEAM_WER = 0.1  # of a backend's beam-5 text against whisper.decode's, words of 3 windows


@lru_cache(maxsize=None)
def windows() -> torch.Tensor:
    """(3, 80, 3000): the log-Mels of three speech windows of espeak-ng sentences."""
    audio = long_speech(70, seed=2).audio
    found = speech_windows(audio)[:3]
    assert len(found) == 3
    return torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(audio[w.start:w.end]))
                        for w in found])


@lru_cache(maxsize=None)
def decoder(backend: str):
    """decode_batch's signature: (model, mel, options, prompts) -> DecodingResults."""
    if backend == "torch":
        return decode_batch
    loaded = ct2.load(bundled_folder(), backend.split("-")[1], threads=1)
    assert loaded is not None
    return loaded.decode


def alone(mel: torch.Tensor, options: whisper.DecodingOptions) -> whisper.DecodingResult:
    return whisper.decode(bundled_model().model, mel, replace(options, fp16=False))


@pytest.mark.parametrize("backend", EXACT)
def test_greedy_gives_whisper_decodes_tokens_window_by_window(backend):
    options = whisper.DecodingOptions(language="en", fp16=False)
    results = decoder(backend)(bundled_model().model, windows(), options)
    for mel, result in zip(windows(), results):
        expected = alone(mel, options)
        assert result.tokens == expected.tokens and len(result.tokens) > 10
        assert result.text == expected.text
        assert result.avg_logprob == pytest.approx(expected.avg_logprob, abs=1e-3)
        assert result.no_speech_prob == pytest.approx(expected.no_speech_prob, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_beam_search_says_what_whisper_says(backend):
    options = whisper.DecodingOptions(language="en", beam_size=5, fp16=False)
    results = decoder(backend)(bundled_model().model, windows(), options)
    expected = " ".join(alone(mel, options).text for mel in windows())
    ours = " ".join(result.text for result in results)
    assert word_error_rate(expected, ours) <= BEAM_WER, (expected, ours)
    timestamp_begin = whisper.tokenizer.get_tokenizer(False).timestamp_begin
    assert all(any(t >= timestamp_begin for t in r.tokens) for r in results)  # timestamps on


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_window_keeps_its_own_prompt_in_one_batch(backend):
    tokenizer = whisper.tokenizer.get_tokenizer(False)
    prompts = [None, tokenizer.encode(" The storm knocked down several trees."),
               tokenizer.encode(" Visitors can rent bicycles at the station and ride along.")]
    options = whisper.DecodingOptions(language="en", fp16=False)
    together = decoder(backend)(bundled_model().model, windows(), options, prompts)
    for index, prompt in enumerate(prompts):
        one = decoder(backend)(bundled_model().model, windows()[index:index + 1], options, [prompt])
        assert together[index].tokens == one[0].tokens


@pytest.mark.parametrize("change", [
    dict(temperature=0.4, beam_size=None, best_of=2),  # sampling
    dict(length_penalty=0.5),  # whisper's ((5 + length) / 6) ** alpha, not CTranslate2's
    dict(language=None),  # language detection inside the decode
])
def test_what_ctranslate2_cannot_do_exactly_goes_to_the_torch_reference(change, monkeypatch):
    options = replace(whisper.DecodingOptions(language="en", beam_size=5, fp16=False), **change)
    assert not ct2.supports(options)
    seen = []

    def reference(model, mel, decoding, prompts=None):
        seen.append(decoding)
        return ["from torch"] * len(mel)

    monkeypatch.setattr(ct2, "decode_batch", reference)
    assert decoder("ct2-int8")(bundled_model().model, windows()[:2], options) == ["from torch"] * 2
    assert seen == [options]
    assert ct2.supports(whisper.DecodingOptions(language="en", beam_size=5))


def test_the_registry_gives_the_bundled_model_a_ctranslate2_twin_as_set(checkpoint):
    def windows_of(source: str, setting: str):
        return ModelRegistry(Settings(model=source, device="cpu", cpu_decoder=setting)).get(
            source.rsplit("/", 1)[-1].removesuffix(".pt")).windows

    assert isinstance(windows_of(BUNDLED, "int8"), ct2.CTranslate2Windows)
    assert isinstance(windows_of(BUNDLED, "float32"), ct2.CTranslate2Windows)
    assert windows_of(BUNDLED, "torch") is None
    assert windows_of(checkpoint, "int8") is None  # an openai .pt: decoded by torch
    with pytest.raises(ConfigError, match="WHISPER_CPU_DECODER must be one of int8, float32, torch"):
        Settings.from_env({"WHISPER_CPU_DECODER": "int4"})


def test_a_folder_ctranslate2_cannot_read_leaves_the_torch_path(tmp_path, caplog):
    (tmp_path / "model.bin").write_bytes(np.zeros(16, np.uint8).tobytes())
    assert ct2.load(str(tmp_path), "int8", threads=1) is None
    assert "decodes with torch" in caplog.text
