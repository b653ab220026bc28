"""Hugging Face Whisper checkpoints: a folder from `save_pretrained` / `Trainer.save_model`,
or a hub id downloaded into the model directory.

A folder holds `config.json` (model_type "whisper") and the weights in `model.safetensors` or
`pytorch_model.bin`, each possibly sharded with an `.index.json`, in float32, float16 or
bfloat16; `generation_config.json` may name the alignment heads, and tokenizer files may
spell out the vocabulary. transformers is not needed: safetensors reads the weights, and the
names map one to one onto openai-whisper's (q_proj -> query, fc1 -> mlp.0, ...).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Dict, List

import torch
from whisper.model import ModelDimensions, Whisper

from whisper_service.errors import ModelUnavailable
from whisper_service.checkpoints import vocabulary
from whisper_service.checkpoints.build import build_model
from whisper_service.checkpoints.files import DownloadFailed, read_json

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# weight files in the order they are preferred; an .index.json lists a sharded checkpoint's files
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_SUFFIX = ".index.json"
# files a hub download fetches besides the weights: configs, tokenizers, CTranslate2's vocabulary
HUB_SUPPORT_FILES = ("*.json", "vocabulary.txt")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
WHISPER_FFN_RATIO = 4  # openai-whisper's MLP is 4 x the width
WHISPER_ACTIVATION = "gelu"

# Hugging Face name -> openai-whisper name (after the leading "model." is dropped)
_RENAMES = (
    (r"^(encoder|decoder)\.layers\.", r"\1.blocks."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
    (r"^(encoder|decoder)\.embed_positions\.weight$", r"\1.positional_embedding"),
    (r"^decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
)
TIED_OUTPUT = "proj_out.weight"  # the output projection, the token embedding again


def is_huggingface_folder(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name + suffix))
               for name in WEIGHT_FILES for suffix in ("", INDEX_SUFFIX))


def is_hub_id(source: str) -> bool:
    """'org/name' that is not a path on this machine."""
    return bool(HUB_ID.match(source)) and not os.path.exists(source)


def load(folder: str) -> Whisper:
    """The Hugging Face Whisper model in `folder` as openai-whisper's Whisper (float32 on
    the CPU), its configuration and vocabulary checked against Whisper's."""
    where = repr(folder)
    config = read_json(os.path.join(folder, CONFIG_FILE), where)
    generation = read_json(os.path.join(folder, GENERATION_CONFIG_FILE), where, missing_ok=True)
    dims = dimensions(config, where)
    vocabulary.check_tokens({**special_tokens(config, generation),
                             **(vocabulary.read_tokenizer_files(folder) or {})},
                            dims.n_vocab, where)
    state = whisper_state(read_weights(folder, where))
    return build_model(dims, state, generation.get("alignment_heads"), where)


def dimensions(config: dict, where: str) -> ModelDimensions:
    """openai-whisper's dimensions from a Hugging Face WhisperConfig; what openai-whisper's
    architecture cannot express is refused."""
    if config.get("model_type") != "whisper":
        raise ModelUnavailable(f"{where} holds a {config.get('model_type') or 'model of unknown type'}"
                               ", not a Whisper model")
    try:
        width = int(config["d_model"])
        for key in ("encoder_ffn_dim", "decoder_ffn_dim"):
            if int(config[key]) != WHISPER_FFN_RATIO * width:
                raise ModelUnavailable(f"{where}: {key} is {config[key]}; openai-whisper's layers "
                                       f"need {WHISPER_FFN_RATIO} x d_model = {WHISPER_FFN_RATIO * width}")
        activation = config.get("activation_function", WHISPER_ACTIVATION)
        if activation != WHISPER_ACTIVATION or config.get("scale_embedding"):
            raise ModelUnavailable(f"{where}: activation {activation!r} and scaled embeddings "
                                   f"are not Whisper's ({WHISPER_ACTIVATION!r}, unscaled)")
        return ModelDimensions(
            n_mels=int(config["num_mel_bins"]),
            n_audio_ctx=int(config["max_source_positions"]),
            n_audio_state=width,
            n_audio_head=int(config["encoder_attention_heads"]),
            n_audio_layer=int(config["encoder_layers"]),
            n_vocab=int(config["vocab_size"]),
            n_text_ctx=int(config["max_target_positions"]),
            n_text_state=width,
            n_text_head=int(config["decoder_attention_heads"]),
            n_text_layer=int(config["decoder_layers"]),
        )
    except KeyError as missing:
        raise ModelUnavailable(f"{where}: {CONFIG_FILE} has no {missing.args[0]}") from None


def special_tokens(config: dict, generation: dict) -> Dict[str, int]:
    """The special tokens the configuration places, by Whisper's names: decoding starts at
    decoder_start_token_id and stops at eos_token_id."""
    tokens: Dict[str, int] = {}
    for source in (config, generation):
        if isinstance(source.get("decoder_start_token_id"), int):
            tokens["<|startoftranscript|>"] = source["decoder_start_token_id"]
        eos = source.get("eos_token_id")
        if isinstance(eos, int):
            tokens["<|endoftext|>"] = eos
        if isinstance(source.get("no_timestamps_token_id"), int):
            tokens["<|notimestamps|>"] = source["no_timestamps_token_id"]
        tokens.update({k: v for k, v in (source.get("lang_to_id") or {}).items()})
        tokens.update({f"<|{k}|>": v for k, v in (source.get("task_to_id") or {}).items()})
    return tokens


def read_weights(folder: str, where: str) -> Dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, from one file or its shards."""
    for name in WEIGHT_FILES:
        single = os.path.join(folder, name)
        index = single + INDEX_SUFFIX
        if os.path.isfile(single):
            return _read_file(single, where)
        if os.path.isfile(index):
            shards = sorted(set(read_json(index, where).get("weight_map", {}).values()))
            if not shards:
                raise ModelUnavailable(f"{where}: {os.path.basename(index)} lists no files")
            state: Dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_file(os.path.join(folder, shard), where))
            return state
    raise ModelUnavailable(f"{where} has no weights: expected one of "
                           f"{', '.join(n + s for n in WEIGHT_FILES for s in ('', INDEX_SUFFIX))}")


def _read_file(path: str, where: str) -> Dict[str, torch.Tensor]:
    name = os.path.basename(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelUnavailable(f"{where} lacks {name}, which its index lists") from None
    except Exception as error:  # safetensors' and pickle's own errors name no common base
        raise ModelUnavailable(f"{where}: {name} cannot be read: {error}") from None


def whisper_state(weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Hugging Face names -> openai-whisper's; the tied output projection left out. A name
    that maps nowhere is kept, so that the model refuses it by name."""
    state = {}
    for name, value in weights.items():
        name = name[len("model."):] if name.startswith("model.") else name
        if name == TIED_OUTPUT:
            continue
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        state[name] = value
    return state


def download(repo_id: str, cache_dir: str) -> str:
    """The local folder of a hub checkpoint: from the cache in `cache_dir` when it is there
    (no network), else downloaded into it (the weights in one format only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    try:
        return snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    try:
        listing = snapshot_download(repo_id, cache_dir=cache_dir, dry_run=True)
        wanted = hub_files([entry.filename for entry in listing])
        log.info("downloading %s (%s) into %s", repo_id, ", ".join(wanted), cache_dir)
        return snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=wanted)
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelUnavailable(
            f"the Hugging Face hub has no model {repo_id!r} that this server may read (a private "
            "or gated one needs HF_TOKEN)"
        ) from None
    except (OSError, HfHubHTTPError) as error:
        raise DownloadFailed(
            f"the Hugging Face model {repo_id!r} is not in {cache_dir} and could not be "
            f"downloaded ({_first_line(error)}); download it where there is internet and copy "
            "the folder here"
        ) from None


def hub_files(names: List[str]) -> List[str]:
    """What to fetch of a hub repository: the support files and one weights format
    (CTranslate2's model.bin, else safetensors, else PyTorch's pickles)."""
    if "model.bin" in names:
        weights = ["model.bin"]
    elif any(n.endswith(".safetensors") for n in names):
        weights = ["*.safetensors"]
    else:
        weights = ["pytorch_model*.bin"]
    return [*HUB_SUPPORT_FILES, *weights]


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
