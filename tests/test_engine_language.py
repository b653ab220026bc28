"""The sequential engine detects the language from the very mel whisper.transcribe() uses."""

from __future__ import annotations

import pytest
import torch
import whisper

from whisper_service.engines import dispatch


class _Detected(Exception):
    """Stops whisper.transcribe once it has detected the language."""


def test_language_is_detected_from_the_mel_whisper_transcribe_detects_it_from(
    service, media, monkeypatch
):
    """Computed on the CPU, never on the model's device: on a GPU the FFT rounds
    differently, which was enough for the test model to pick another language (and say
    another text) than whisper.transcribe with the same options."""
    loaded = service.models.get(service.settings.model)
    audio = service.decode(str(media["speech.wav"]))
    seen, devices = [], []
    detect = loaded.model.detect_language

    def recording_detect(mel, *args, **kwargs):
        seen.append(mel.clone())
        if len(seen) == 2:
            raise _Detected
        return detect(mel, *args, **kwargs)

    log_mel = whisper.log_mel_spectrogram  # whisper.transcribe imports its own reference

    def recording_log_mel(*args, **kwargs):
        devices.append(kwargs.get("device"))
        return log_mel(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "detect_language", recording_detect)
    monkeypatch.setattr(whisper, "log_mel_spectrogram", recording_log_mel)
    probabilities = dispatch.detect_language(loaded, audio)
    with pytest.raises(_Detected):
        whisper.transcribe(loaded.model, audio, fp16=False)
    assert devices == [None]
    assert torch.equal(seen[0], seen[1])
    assert max(probabilities, key=probabilities.get) in whisper.tokenizer.LANGUAGES
