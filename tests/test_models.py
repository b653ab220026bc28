"""Model ownership: download on first use, load once, route translation, refuse the unlisted."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper

from whisper_service.checkpoints import DownloadFailed
from whisper_service.errors import BadOption, ModelUnavailable
from whisper_service.models import ModelRegistry, half_precision_weights, pick_device
from whisper_service.options import TranscribeOptions
from whisper_service.service import WhisperService


@pytest.fixture
def model_server(checkpoint, monkeypatch):
    """Serves the test checkpoint on loopback under an official-looking URL for 'tiny' and
    'turbo', so openai-whisper's real download code (with its SHA-256 check) runs."""
    body = Path(checkpoint).read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            if not self.path.startswith(f"/{digest}/"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    # alignment heads for the test shape (2 decoder layers x 2 heads), in whisper's encoding
    heads = base64.b85encode(gzip.compress(np.array([0, 0, 1, 1], dtype=bool).tobytes()))
    for name in ("tiny", "turbo"):
        monkeypatch.setitem(whisper._MODELS, name, f"{base}/{digest}/{name}.pt")
        monkeypatch.setitem(whisper._ALIGNMENT_HEADS, name, heads)
    yield hits
    server.shutdown()
    server.server_close()


def test_named_model_downloads_into_the_model_dir_once(settings, model_server, tmp_path):
    registry = ModelRegistry(replace(settings, model="tiny", models=("tiny",)))
    loaded = registry.get("tiny")
    assert (tmp_path / "models" / "tiny.pt").is_file()
    assert model_server == [f"/{whisper._MODELS['tiny'].split('/')[-2]}/tiny.pt"]
    assert registry.get("tiny") is loaded  # loaded once
    assert ModelRegistry(registry.settings).get("tiny").name == "tiny"  # cached file reused
    assert len(model_server) == 1
    assert loaded.device == torch.device("cpu") and loaded.fp16 is False
    assert loaded.is_multilingual
    assert loaded.model.alignment_heads.to_dense().tolist() == [[False, False], [True, True]]


def test_failed_download_is_a_clear_error(settings, checkpoint, monkeypatch):
    """Only the default and translation models have stand-ins (test_bundled_models.py); a model
    listed besides them that cannot be downloaded says so."""
    monkeypatch.setitem(whisper._MODELS, "tiny", "http://127.0.0.1:9/0000/tiny.pt")
    registry = ModelRegistry(replace(settings, models=(checkpoint, "tiny")))
    with pytest.raises(DownloadFailed, match=r"^model 'tiny' could not be loaded: it is not in "
                                             r".*/models and could not be downloaded \("):
        registry.get("tiny")
    assert registry.loaded() == [] and registry.stand_in_notice is None


def test_turbo_hands_translation_to_the_translation_model(settings, model_server, checkpoint, media):
    service = WhisperService(
        replace(settings, model="turbo", models=("turbo",), translate_model=checkpoint)
    )
    fast = dict(temperature=(0.0,), beam_size=None)
    transcribed = service.transcribe_file(str(media["speech.wav"]), TranscribeOptions(**fast))
    translated = service.transcribe_file(
        str(media["speech.wav"]), TranscribeOptions(task="translate", **fast)
    )
    assert transcribed.model == "turbo"
    assert translated.model == "tiny-test"  # a checkpoint goes by its file name
    assert translated.task == "translate"
    assert set(service.models.loaded()) == {"turbo", "tiny-test"}


def test_english_only_model_hands_translation_over(settings, english_checkpoint, checkpoint):
    registry = ModelRegistry(replace(settings, model=english_checkpoint, models=(), translate_model=checkpoint))
    assert registry.for_task(None, "transcribe").name == "tiny-test.en"
    assert registry.for_task(None, "translate").name == "tiny-test"


def test_a_model_outside_the_allow_list_is_refused_with_the_choices(settings, checkpoint):
    registry = ModelRegistry(settings)
    with pytest.raises(BadOption) as error:
        registry.check_allowed("large-v2")
    assert error.value.field == "model"
    assert "choose one of tiny-test" in str(error.value)
    assert registry.check_allowed(None) == "tiny-test"


def test_unlisted_model_fails_before_decoding(service, media):
    with pytest.raises(BadOption, match="model: 'medium' is not offered here"):
        service.transcribe_file(str(media["notes.mp3"]), TranscribeOptions(model="medium"))


def test_concurrent_first_use_loads_once(settings, monkeypatch):
    calls = []
    real_load = whisper.load_model

    def counting_load(*args, **kwargs):
        calls.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(whisper, "load_model", counting_load)
    registry = ModelRegistry(settings)
    got = []
    threads = [threading.Thread(target=lambda: got.append(registry.get(settings.model))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [settings.model]
    assert len({id(m) for m in got}) == 1


def test_device_choice():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailable, match="no CUDA GPU is visible"):
            pick_device("cuda:0")


def test_half_precision_weights_compute_what_whisper_computes_from_float32(checkpoint):
    """What a CUDA model gets: every Linear and Conv1d weight in float16, LayerNorms and
    embeddings in float32, and decoding in fp16 says the same, bit for bit (whisper casts
    the float32 weights to float16 at each call; here they already are). Checked on the
    CPU, which runs float16 layers too."""
    full = whisper.load_model(checkpoint, device="cpu")
    half = half_precision_weights(whisper.load_model(checkpoint, device="cpu"))
    dtypes = {name: p.dtype for name, p in half.named_parameters()}
    assert dtypes["decoder.blocks.0.mlp.0.weight"] == torch.float16
    assert dtypes["encoder.conv1.weight"] == torch.float16
    assert dtypes["decoder.blocks.0.attn_ln.weight"] == torch.float32
    assert dtypes["decoder.token_embedding.weight"] == torch.float32
    assert dtypes["decoder.positional_embedding"] == torch.float32
    size = sum(p.numel() * p.element_size() for p in half.parameters())
    linear = sum(p.numel() for n, p in half.named_parameters() if dtypes[n] == torch.float16)
    assert size == sum(p.numel() * p.element_size() for p in full.parameters()) - 2 * linear

    audio = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 16000 * 20).astype(np.float32))
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio)).half()
    options = whisper.DecodingOptions(language="en", fp16=True, beam_size=3, sample_len=16)
    expected, got = whisper.decode(full, mel, options), whisper.decode(half, mel, options)
    assert got.tokens == expected.tokens and len(got.tokens) > 0
    assert (got.avg_logprob, got.no_speech_prob) == (expected.avg_logprob, expected.no_speech_prob)


def test_a_full_gpu_unloads_the_least_recently_used_model(settings, checkpoint,
                                                          english_checkpoint, monkeypatch):
    from whisper_service import models

    third = str(Path(english_checkpoint).with_name("third.pt"))
    Path(third).write_bytes(Path(checkpoint).read_bytes())
    registry = ModelRegistry(replace(settings, models=(checkpoint, english_checkpoint, third)))
    registry.get(checkpoint)
    registry.get(english_checkpoint)
    registry.get(checkpoint)  # used again: english is now the least recent
    room = {"models": 2}  # the GPU holds two models
    real_move = models.move_to

    def move(model, device):
        if len(registry.loaded()) >= room["models"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        real_move(model, device)

    monkeypatch.setattr(models, "move_to", move)
    registry.get(third)
    assert sorted(registry.loaded()) == sorted([checkpoint, third])

    room["models"] = 0  # not even one fits: every other model goes, then the load fails
    with pytest.raises(ModelUnavailable, match=r"could not be loaded: CUDA out of memory"):
        registry.get(english_checkpoint)
    assert registry.loaded() == []
