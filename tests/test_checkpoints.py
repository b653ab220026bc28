"""Checkpoint formats: Hugging Face folders (against transformers' own forward), hub ids
from the local cache or not at all, CTranslate2 folders (the bundled tiny.en), and
vocabularies that are not Whisper's refused with what differs."""

from __future__ import annotations

import copy
import json
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import whisper
from whisper.tokenizer import get_tokenizer

from bundled_model import bundled_model, speak
from whisper_service.checkpoints import (BUNDLED, CTRANSLATE2, HUB, HUGGINGFACE, bundled_folder,
                                         ctranslate2, kind_of, load_checkpoint)
from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.config import Settings, bundled_ffmpeg
from whisper_service.errors import ConfigError, ModelUnavailable
from whisper_service.service import WhisperService

MULTILINGUAL = get_tokenizer(True, num_languages=99)
STEPS = 12  # greedy steps compared with transformers
FP32_TOLERANCE = 1e-4  # logits of the same float32 weights, summed in another order


def tiny_whisper(vocab_size: int = 51865, seed: int = 0, **config):
    """A random WhisperForConditionalGeneration with Whisper's special tokens where a
    multilingual Whisper has them, built by transformers (nothing downloaded)."""
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=vocab_size, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=256,
        decoder_ffn_dim=256, decoder_start_token_id=MULTILINGUAL.sot,
        eos_token_id=MULTILINGUAL.eot, pad_token_id=MULTILINGUAL.eot,
        bos_token_id=MULTILINGUAL.eot, init_std=0.2,
    )
    settings.update(config)
    model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**settings))
    model.generation_config.alignment_heads = [[1, 0], [1, 1]]
    return model.eval()


@pytest.fixture(scope="module")
def hf_model():
    return tiny_whisper()


@pytest.fixture(scope="module")
def hf_folder(hf_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "whisper-tiny-ft"
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 5).astype(np.float32)
    return whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)))


def transformers_greedy(model, mel: torch.Tensor, start) -> list:
    """Greedy tokens as transformers' own forward picks them, one step at a time."""
    tokens = list(start)
    with torch.no_grad():
        for _ in range(STEPS):
            logits = model(input_features=mel[None], decoder_input_ids=torch.tensor([tokens])).logits
            tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(start):]


def test_a_save_pretrained_folder_decodes_what_transformers_computes(hf_model, hf_folder, mel,
                                                                     tmp_path):
    settings = Settings(model=f"ft={hf_folder}", device="cpu", model_dir=str(tmp_path))
    service = WhisperService(settings)
    loaded = service.models.get("ft")
    assert loaded.model.dims.n_vocab == 51865 and loaded.model.dims.n_text_layer == 2
    assert loaded.model.alignment_heads.to_dense().tolist() == [[False, False], [True, True]]

    start = list(MULTILINGUAL.sot_sequence_including_notimestamps)
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False,
                                      suppress_tokens="", suppress_blank=False, sample_len=STEPS)
    ours = whisper.decode(loaded.model, mel, options)
    expected = transformers_greedy(hf_model, mel, start)
    assert ours.tokens == expected[:len(ours.tokens)] and len(ours.tokens) >= 3
    assert len(set(expected)) > 1  # the random model does not just repeat one token

    tokens = torch.tensor([start + expected])
    with torch.no_grad():
        theirs = hf_model(input_features=mel[None], decoder_input_ids=tokens).logits
        logits = loaded.model.logits(tokens, loaded.model.embed_audio(mel[None]))
    assert torch.allclose(logits, theirs, atol=FP32_TOLERANCE, rtol=0)


@pytest.mark.parametrize("dtype, pickled", [(torch.bfloat16, False), (torch.float16, True)])
def test_half_precision_checkpoints_load_their_weights(hf_model, tmp_path, dtype, pickled):
    """bfloat16 safetensors, and a float16 pytorch_model.bin as older transformers saved:
    Whisper gets the same numbers, in float32."""
    folder = tmp_path / "half"
    half = copy.deepcopy(hf_model).to(dtype)
    half.save_pretrained(folder)
    if pickled:
        (folder / "model.safetensors").unlink()
        torch.save(half.state_dict(), folder / "pytorch_model.bin")
    model = load_checkpoint(str(folder), str(tmp_path))
    weight = model.decoder.blocks[1].cross_attn.query.weight
    expected = hf_model.model.decoder.layers[1].encoder_attn.q_proj.weight.to(dtype).float()
    assert weight.dtype == torch.float32 and torch.equal(weight, expected)


def test_a_foreign_vocabulary_is_refused_saying_what_differs(tmp_path):
    small = tmp_path / "small-vocab"
    tiny_whisper(vocab_size=1000, decoder_start_token_id=1, eos_token_id=2, pad_token_id=2,
                 bos_token_id=2).save_pretrained(small)
    with pytest.raises(ModelUnavailable, match=r"has a vocabulary of 1000 tokens; Whisper's has "
                                               r"51864 \(English-only models\) or 51865 or 51866"):
        load_checkpoint(str(small), str(tmp_path))

    shifted = tmp_path / "shifted-specials"  # transformers' defaults: English ids, 51865 tokens
    tiny_whisper(decoder_start_token_id=50257, eos_token_id=50256).save_pretrained(shifted)
    with pytest.raises(ModelUnavailable, match=r"'<\|startoftranscript\|>' is token 50257 there "
                                               r"but 50258 in Whisper's; '<\|endoftext\|>' is token "
                                               r"50256 there but 50257"):
        load_checkpoint(str(shifted), str(tmp_path))


def test_tokenizer_files_are_checked_token_by_token(tmp_path):
    """An English model folder with the bundle's tokenizer.json loads; the same with two
    tokens swapped is refused, naming them."""
    folder = tmp_path / "english"
    english = get_tokenizer(False)
    tiny_whisper(vocab_size=51864, decoder_start_token_id=english.sot,
                 eos_token_id=english.eot).save_pretrained(folder)
    tokenizer = json.loads((Path(bundled_folder()) / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    assert not load_checkpoint(str(folder), str(tmp_path)).is_multilingual

    vocab = tokenizer["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġand"] = vocab["Ġand"], vocab["Ġthe"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    with pytest.raises(ModelUnavailable, match=r"differs from Whisper's, which openai-whisper decodes "
                                               r"with: 'Ġthe' is token 290 there but 262 in Whisper's"):
        load_checkpoint(str(folder), str(tmp_path))


def test_a_hub_id_loads_from_the_local_cache_without_the_network(hf_folder, tmp_path,
                                                                 monkeypatch):
    """What huggingface_hub left in the model directory on an earlier, online start."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # no hub to reach
    snapshot = tmp_path / "models--someone--whisper-tiny-ft" / "snapshots" / "0123abcd"
    shutil.copytree(hf_folder, snapshot)
    (tmp_path / "models--someone--whisper-tiny-ft" / "refs").mkdir()
    (tmp_path / "models--someone--whisper-tiny-ft" / "refs" / "main").write_text("0123abcd")
    assert kind_of("someone/whisper-tiny-ft") == HUB
    settings = Settings(model="someone/whisper-tiny-ft", device="cpu", model_dir=str(tmp_path))
    loaded = WhisperService(settings).models.get("someone/whisper-tiny-ft")
    assert loaded.model.dims.n_text_state == 64


def test_a_hub_id_that_cannot_be_downloaded_is_named(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    registry = WhisperService(Settings(model="base", models=("base", "someone/whisper-ja"),
                                       device="cpu", model_dir=str(tmp_path))).models
    with pytest.raises(ModelUnavailable, match=r"^model 'someone/whisper-ja' could not be loaded: "
                                               r"the Hugging Face model 'someone/whisper-ja' is not "
                                               r"in .* and could not be downloaded \("):
        registry.get("someone/whisper-ja")


def test_the_bundled_ctranslate2_model_is_tiny_en_and_says_the_words(tmp_path):
    assert kind_of(BUNDLED) == "bundled" and kind_of(bundled_folder()) == CTRANSLATE2
    model = bundled_model().model
    assert model.dims == whisper.model.ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    assert not model.is_multilingual
    # the alignment heads of its config.json are those openai-whisper ships for tiny.en
    expected = whisper.model.Whisper(model.dims)
    expected.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    assert torch.equal(model.alignment_heads.to_dense(), expected.alignment_heads.to_dense())

    clip = speak("The quick brown fox jumps over the lazy dog.", tmp_path / "fox.wav")
    audio = decode_file(str(clip), DecodeLimits(max_duration=60, timeout=60, ffmpeg=bundled_ffmpeg()))
    with bundled_model().lock:
        text = model.transcribe(audio, language="en", temperature=0.0, fp16=False)["text"]
    assert "over the lazy dog" in text.lower(), text


def test_a_cut_short_model_bin_is_a_clear_error(tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    source = Path(bundled_folder())
    shutil.copy(source / "config.json", folder)
    with open(source / "model.bin", "rb") as f:
        (folder / "model.bin").write_bytes(f.read(4096))
    with pytest.raises(ModelUnavailable, match=r"model.bin is cut short"):
        load_checkpoint(str(folder), str(tmp_path))
    (folder / "model.bin").write_bytes(struct.pack("<I", 2) + b"\0" * 16)
    with pytest.raises(ModelUnavailable, match=r"CTranslate2 binary version 2; versions 4 to 6"):
        load_checkpoint(str(folder), str(tmp_path))


def test_quantised_weights_are_divided_by_their_scales():
    """CTranslate2's int8: one scale per output row, the float weight = integer / scale."""
    weight = torch.tensor([[127, -64], [10, 20]], dtype=torch.int8)
    scale = torch.tensor([127.0, 10.0])
    out = ctranslate2.dequantized({"a/weight": weight, "a/weight_scale": scale, "a/bias": scale})
    assert set(out) == {"a/weight", "a/bias"}
    expected = torch.tensor([[1.0, -64 / 127], [1.0, 2.0]])
    assert out["a/weight"].dtype == torch.float32 and torch.allclose(out["a/weight"], expected)


def test_settings_accept_every_format_and_refuse_a_folder_without_a_checkpoint(hf_folder, tmp_path):
    assert kind_of(str(hf_folder)) == HUGGINGFACE
    settings = Settings(model=f"ja={hf_folder}", models=(BUNDLED, "someone/whisper-small-ja"),
                        device="cpu", model_dir=str(tmp_path))
    assert settings.models[1:] == (BUNDLED, "someone/whisper-small-ja")
    with pytest.raises(ConfigError, match=r"WHISPER_MODEL: '.*empty' is neither a checkpoint file "
                                          r"nor one of .*; a checkpoint folder \(Hugging Face or "
                                          r"CTranslate2\) or a Hugging Face id \(org/name\) works too"):
        (tmp_path / "empty").mkdir()
        Settings.from_env({"WHISPER_MODEL": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="'bundled' names an official model"):
        replace(settings, models=(f"bundled={hf_folder}",))
