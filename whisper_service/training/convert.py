"""openai-whisper's `Whisper` <-> Hugging Face's `WhisperForConditionalGeneration`.

Training runs on transformers' model; the service decodes with openai-whisper's. Any base
model the service loads (checkpoints/: official names, .pt files, Hugging Face and
CTranslate2 folders, the bundled tiny.en) is read as a `Whisper` first, then its weights are
renamed onto a Hugging Face model of the same dimensions (the inverse of
checkpoints/huggingface.py's names). The result is written as a `save_pretrained` folder
with its processor files, which checkpoints/huggingface.py reads back unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Dict, List, Optional

import torch
import whisper
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer

from whisper_service.checkpoints import ctranslate2_folder, huggingface, kind_of

# openai-whisper name -> Hugging Face name, applied in order (the inverse of
# checkpoints/huggingface.py's _RENAMES); "model." is put in front afterwards
_RENAMES = (
    (r"^(encoder|decoder)\.blocks\.", r"\1.layers."),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn\.", ".self_attn."),
    (r"\.query\.", ".q_proj."),
    (r"\.key\.", ".k_proj."),
    (r"\.value\.", ".v_proj."),
    (r"\.out\.", ".out_proj."),
    (r"\.mlp\.0\.", ".fc1."),
    (r"\.mlp\.2\.", ".fc2."),
    (r"^(encoder|decoder)\.positional_embedding$", r"\1.embed_positions.weight"),
    (r"^decoder\.token_embedding\.", "decoder.embed_tokens."),
    (r"^encoder\.ln_post\.", "encoder.layer_norm."),
    (r"^decoder\.ln\.", "decoder.layer_norm."),
)
TOKENIZER_FILE = "tokenizer.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# the files a base folder may carry that spell the same vocabulary; copied to the output
TOKENIZER_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                        "added_tokens.json", "special_tokens_map.json", "normalizer.json")


def whisper_tokenizer(model: Whisper, language: Optional[str], task: str) -> Tokenizer:
    """The tokenizer the service decodes this model with, its prefix set for language/task."""
    return get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                         language=language if model.is_multilingual else None,
                         task=task if model.is_multilingual else None)


def hf_state(model: Whisper) -> Dict[str, torch.Tensor]:
    """openai-whisper's weights under Hugging Face's names."""
    state = {}
    for name, value in model.state_dict().items():
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        state["model." + name] = value
    return state


def alignment_pairs(model: Whisper) -> List[List[int]]:
    """The cross-attention heads word timestamps follow, as [[layer, head], ...]."""
    heads = model.alignment_heads.to_dense() if model.alignment_heads.is_sparse else model.alignment_heads
    return [[int(layer), int(head)] for layer, head in torch.nonzero(heads).tolist()]


def to_huggingface(model: Whisper):
    """A WhisperForConditionalGeneration with `model`'s weights and Whisper's special
    tokens in its configuration (float32, on the CPU)."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    dims = model.dims
    tokenizer = whisper_tokenizer(model, None, "transcribe")
    config = WhisperConfig(
        vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels, d_model=dims.n_audio_state,
        encoder_layers=dims.n_audio_layer, encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer, decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx, max_target_positions=dims.n_text_ctx,
        decoder_start_token_id=tokenizer.sot, bos_token_id=tokenizer.eot,
        eos_token_id=tokenizer.eot, pad_token_id=tokenizer.eot,
        begin_suppress_tokens=[tokenizer.encode(" ")[0], tokenizer.eot],
        tie_word_embeddings=True, use_cache=False,
    )
    hf = WhisperForConditionalGeneration(config)
    missing, unexpected = hf.load_state_dict(hf_state(model), strict=False)
    missing = [name for name in missing if name != huggingface.TIED_OUTPUT]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto transformers' Whisper: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    hf.tie_weights()
    hf.generation_config = generation_config(model, GenerationConfig)
    return hf


def generation_config(model: Whisper, kind):
    """What Hugging Face's generate and checkpoints/huggingface.py read: the special tokens
    by name and the alignment heads."""
    tokenizer = whisper_tokenizer(model, None, "transcribe")
    values = dict(
        decoder_start_token_id=tokenizer.sot, bos_token_id=tokenizer.eot,
        eos_token_id=tokenizer.eot, pad_token_id=tokenizer.eot,
        no_timestamps_token_id=tokenizer.no_timestamps,
        alignment_heads=alignment_pairs(model), is_multilingual=model.is_multilingual,
        max_length=model.dims.n_text_ctx,
    )
    if model.is_multilingual:
        languages = tokenizer.all_language_codes
        values["lang_to_id"] = {f"<|{code}|>": token
                                for code, token in zip(languages, tokenizer.all_language_tokens)}
        values["task_to_id"] = {"transcribe": tokenizer.transcribe, "translate": tokenizer.translate}
    return kind(**values)


def to_whisper(hf, into: Whisper) -> Whisper:
    """`into` with the Hugging Face model's current weights (for evaluating while training,
    without writing a folder; a LoRA model's adapters folded in); the names as
    checkpoints/huggingface.py maps them."""
    from whisper_service.training.lora import merged_state

    state = huggingface.whisper_state({k: v.detach().to("cpu", torch.float32)
                                       for k, v in merged_state(hf).items()})
    into.load_state_dict(state)
    return into


def save(hf, model: Whisper, folder: str, base_source: str) -> None:
    """A `save_pretrained` folder with its processor files: the weights (safetensors), the
    configuration, the feature extractor's settings and the tokenizer (the base folder's
    files where it has them, else written from openai-whisper's own vocabulary)."""
    from transformers import WhisperFeatureExtractor

    os.makedirs(folder, exist_ok=True)
    hf.config.use_cache = True
    hf.save_pretrained(folder, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=model.dims.n_mels).save_pretrained(folder)
    source = _tokenizer_source(base_source)
    copied = False
    if source is not None:
        for name in TOKENIZER_SIDE_FILES:
            if os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
                copied = True
    if not copied:
        write_tokenizer(model, folder)


def _tokenizer_source(source: str) -> Optional[str]:
    kind = kind_of(source)
    folder = ctranslate2_folder(source)
    if folder is None and kind is not None and os.path.isdir(source):
        folder = source
    if folder and os.path.isfile(os.path.join(folder, TOKENIZER_FILE)):
        return folder
    return None


def write_tokenizer(model: Whisper, folder: str) -> None:
    """tokenizer.json from the tiktoken vocabulary openai-whisper decodes with (the file
    whisper ships), its special tokens at whisper's ids."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = whisper_tokenizer(model, None, "transcribe").encoding
    ranks = os.path.join(os.path.dirname(whisper.__file__), "assets",
                         ("multilingual" if model.is_multilingual else "gpt2") + ".tiktoken")
    converted = TikTokenConverter(vocab_file=ranks, pattern=encoding._pat_str,
                                  extra_special_tokens=encoding._special_tokens).converted()
    converted.save(os.path.join(folder, TOKENIZER_FILE))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "WhisperTokenizer", "model_max_length": model.dims.n_text_ctx,
                   "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f, indent=2)
