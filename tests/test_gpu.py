"""The CUDA path: model on the GPU, fp16 decoding. Runs only where a GPU is visible."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import whisper

from whisper_service.options import TranscribeOptions
from whisper_service.service import WhisperService

pytestmark = [
    pytest.mark.requires_cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_auto_device_picks_cuda_with_fp16_and_matches_whisper(settings, media, ffmpeg_on_path, monkeypatch):
    service = WhisperService(replace(settings, device="auto"))
    options = TranscribeOptions(beam_size=5, patience=2.0, temperature=(0.0,))
    transcript = service.transcribe_file(str(media["speech.mp4"]), options)
    loaded = service.models.get(settings.model)
    assert loaded.device.type == "cuda" and loaded.fp16 is True
    assert next(loaded.model.parameters()).is_cuda
    assert loaded.model.decoder.blocks[0].mlp[0].weight.dtype == torch.float16

    monkeypatch.setenv("PATH", ffmpeg_on_path)
    expected = loaded.model.transcribe(
        whisper.load_audio(str(media["speech.mp4"])), verbose=None, fp16=True,
        beam_size=5, patience=2.0, temperature=0.0,
    )
    assert transcript.text == expected["text"]
    assert [list(s.tokens) for s in transcript.segments] == [s["tokens"] for s in expected["segments"]]
    probabilities = service.detect_language_file(str(media["speech.wav"]))
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-2)


def test_batched_is_the_default_on_cuda_and_says_what_whisper_decode_says(settings, media):
    from whisper_service.engines import batched, dispatch
    from whisper_service.engines.vad import speech_windows

    service = WhisperService(replace(settings, device="cuda"))
    loaded = service.models.get(settings.model)
    audio = service.decode(str(media["speech.wav"]))
    options = TranscribeOptions(beam_size=5, patience=1.0, language="en", temperature=(0.0,))
    assert dispatch.mode_of(loaded, options) == "batched"
    assert batched.windows_per_batch(loaded, 5) >= 8  # a test model leaves most memory free
    transcript = dispatch.transcribe(loaded, audio, options)
    first = speech_windows(audio)[0]
    mel = whisper.log_mel_spectrogram(
        whisper.pad_or_trim(audio[first.start:first.end]), device="cuda").half()
    alone = whisper.decode(loaded.model, mel, whisper.DecodingOptions(
        language="en", beam_size=5, patience=1.0, fp16=True))
    ours = [t for s in transcript.segments for t in s.tokens]
    assert ours and ours == alone.tokens[:len(ours)]


@pytest.fixture(scope="module")
def cuda_model(tmp_path_factory):
    from whisper_service.models import half_precision_weights
    from whisper_service.synthetic import make_checkpoint

    path = make_checkpoint(str(tmp_path_factory.mktemp("gpu") / "tiny.pt"), seed=5)
    return half_precision_weights(whisper.load_model(path, device="cpu")).cuda()


def _window_mels(count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    audio = torch.randn((count, whisper.audio.N_SAMPLES), generator=generator) * 0.1
    return whisper.log_mel_spectrogram(audio).cuda().half()


@pytest.mark.parametrize("beam_size, patience, timestamps", [
    (None, None, True), (None, None, False), (5, 1.0, True), (5, 2.0, False),
])
def test_replayed_graph_gives_the_eager_tokens(cuda_model, beam_size, patience, timestamps):
    from whisper_service.engines.decoding import decode_batch, steps

    options = whisper.DecodingOptions(language="en", fp16=True, beam_size=beam_size,
                                      patience=patience, without_timestamps=not timestamps)
    mels = _window_mels(6)
    prompts = [None, [1, 2, 3], list(range(100, 140)), None, [7] * 5, None]
    eager = decode_batch(cuda_model, mels, options, prompts, static=False)
    replayed = decode_batch(cuda_model, mels, options, prompts, static=True)
    assert [r.tokens for r in replayed] == [r.tokens for r in eager]
    # a smaller batch of the same options replays the graphs already captured
    sessions = dict(steps._sessions[cuda_model])
    again = decode_batch(cuda_model, mels[:5], options, prompts[:5], static=True)
    assert [r.tokens for r in again] == [r.tokens for r in eager[:5]]
    assert steps._sessions[cuda_model].keys() == sessions.keys()
    session = next(iter(sessions.values()))
    assert session.graphs and session.shape.windows == 8  # six windows, two of padding
