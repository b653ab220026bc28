"""CTranslate2 Whisper folders (faster-whisper's format) read without CTranslate2.

A folder holds `model.bin` (the weights), `config.json` (alignment heads, suppressed tokens)
and the vocabulary (`tokenizer.json`, `vocabulary.txt` or `vocabulary.json`), as the
`ct2-transformers-converter` writes it and the `Systran/faster-whisper-*` repositories hold it.

model.bin, as CTranslate2's `ModelSpec._serialize` writes it (little-endian; a string is a
uint16 length counting a final NUL, then UTF-8 bytes and the NUL):

    uint32  binary version (read here: 4 to 6; each adds to the one before)
    string  spec name ("WhisperSpec")
    uint32  spec revision
    uint32  number of variables, then for each:
              string  name, e.g. "encoder/layer_0/self_attention/linear_0/weight"
              uint8   rank, then uint32 x rank: the shape
              uint8   data type: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
              uint32  byte count, then the bytes (row-major)
    uint32  number of aliases (version 3 on), then for each: string alias, string variable
            (the decoder's output projection is an alias of its token embedding)

Weights quantised to int8 or int16 come with a "<name>_scale" variable: the float weight is
the integer one divided by the scale (one per output row, or one for the whole matrix).

The Whisper spec names, against openai-whisper's modules: `self_attention/linear_0` is query,
key and value fused (rows in that order; the key's bias is zero, Whisper's key has none),
`attention/linear_0` the cross-attention query and `attention/linear_1` its key and value
fused, `linear_1` / `linear_2` the output projections, `layer_norm/gamma` and `beta` a
LayerNorm's weight and bias, `ffn/linear_0` and `linear_1` the MLP.
"""

from __future__ import annotations

import os
import re
import struct
from typing import BinaryIO, Dict

import torch
from whisper.model import ModelDimensions, Whisper

from whisper_service.errors import ModelUnavailable
from whisper_service.checkpoints import vocabulary
from whisper_service.checkpoints.build import build_model
from whisper_service.checkpoints.files import read_json

WEIGHTS_FILE = "model.bin"
CONFIG_FILE = "config.json"
READABLE_VERSIONS = (4, 5, 6)  # binary versions with a data type id per variable
WHISPER_SPEC = "WhisperSpec"
DTYPES = {  # CTranslate2's DataType ids
    0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32,
    4: torch.float16, 5: torch.bfloat16,
}
LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")

# CTranslate2 name -> openai-whisper name: outside the layers, then a layer's own part
_TOP_LEVEL = {
    "encoder/conv1/": "encoder.conv1.",
    "encoder/conv2/": "encoder.conv2.",
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "encoder/layer_norm/": "encoder.ln_post.",
    "decoder/embeddings/weight": "decoder.token_embedding.weight",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
    "decoder/layer_norm/": "decoder.ln.",
}
_IN_LAYER = {
    "self_attention/layer_norm/": "attn_ln.",
    "self_attention/linear_1/": "attn.out.",
    "attention/layer_norm/": "cross_attn_ln.",
    "attention/linear_0/": "cross_attn.query.",
    "attention/linear_2/": "cross_attn.out.",
    "ffn/layer_norm/": "mlp_ln.",
    "ffn/linear_0/": "mlp.0.",
    "ffn/linear_1/": "mlp.2.",
}
# fused projections: a layer's part -> the openai-whisper Linear layers, in row order
_FUSED = {
    "self_attention/linear_0/": ("attn.query.", "attn.key.", "attn.value."),
    "attention/linear_1/": ("cross_attn.key.", "cross_attn.value."),
}
_PARAMETERS = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}
# scalars and flags of the spec that Whisper's architecture fixes
_SETTINGS = re.compile(r"/(num_heads|activation|alibi|alignment_heads|alignment_layer|pre_norm|"
                       r"scale_embeddings|start_from_zero_embedding)$")


def is_ctranslate2_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, WEIGHTS_FILE))


def load(folder: str) -> Whisper:
    """The CTranslate2 Whisper model in `folder` as openai-whisper's Whisper (float32 on the
    CPU), its vocabulary checked against Whisper's."""
    where = repr(folder)
    variables = read_model_bin(os.path.join(folder, WEIGHTS_FILE), where)
    config = read_json(os.path.join(folder, CONFIG_FILE), where, missing_ok=True)
    state = whisper_state(dequantized(variables), where)
    dims = dimensions(state, variables, where)
    tokens = vocabulary.read_tokenizer_files(folder)
    if tokens is None:
        vocabulary.check_size(dims.n_vocab, where)
    else:
        vocabulary.check_tokens(tokens, dims.n_vocab, where)
    return build_model(dims, state, config.get("alignment_heads"), where)


def read_model_bin(path: str, where: str) -> Dict[str, torch.Tensor]:
    """Every variable of a model.bin by name, aliases included, as tensors."""
    try:
        with open(path, "rb") as f:
            return _read_variables(f, where)
    except struct.error:
        raise ModelUnavailable(f"{where}: {WEIGHTS_FILE} is cut short") from None
    except OSError as error:
        raise ModelUnavailable(f"{where}: {WEIGHTS_FILE} cannot be read: {error.strerror}") from None


def _read_variables(f: BinaryIO, where: str) -> Dict[str, torch.Tensor]:
    def number(kind: str) -> int:
        size = struct.calcsize(kind)
        return struct.unpack("<" + kind, _exactly(f, size))[0]

    def string() -> str:
        return _exactly(f, number("H")).rstrip(b"\0").decode("utf-8")

    version = number("I")
    if version not in READABLE_VERSIONS:
        raise ModelUnavailable(
            f"{where}: {WEIGHTS_FILE} has CTranslate2 binary version {version}; versions "
            f"{READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]} can be read"
        )
    spec = string()
    number("I")  # spec revision: Whisper's layout has not changed across revisions
    if spec != WHISPER_SPEC:
        raise ModelUnavailable(f"{where} is a CTranslate2 {spec}, not a Whisper model")
    variables: Dict[str, torch.Tensor] = {}
    for _ in range(number("I")):
        name = string()
        shape = [number("I") for _ in range(number("B"))]
        type_id = number("B")
        if type_id not in DTYPES:
            raise ModelUnavailable(f"{where}: {name} has an unknown CTranslate2 data type {type_id}")
        data = bytearray(_exactly(f, number("I")))
        variables[name] = torch.frombuffer(data, dtype=DTYPES[type_id]).reshape(shape) if data \
            else torch.empty(shape, dtype=DTYPES[type_id])
    for _ in range(number("I")):
        alias, target = string(), string()
        if target in variables:
            variables[alias] = variables[target]
    return variables


def _exactly(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise struct.error("cut short")
    return data


def dequantized(variables: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Integer weights divided by their scales; the scales themselves dropped."""
    out = {}
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None and not value.is_floating_point():
            scale = scale.float().reshape(scale.shape + (1,) * (value.dim() - scale.dim()))
            value = value.float() / scale
        out[name] = value
    return out


def whisper_state(variables: Dict[str, torch.Tensor], where: str) -> Dict[str, torch.Tensor]:
    """CTranslate2 variables -> openai-whisper's state dict: fused projections split, names
    mapped, the spec's settings and the tied output projection left out."""
    state: Dict[str, torch.Tensor] = {}
    for name, value in variables.items():
        if _SETTINGS.search(name) or name == "decoder/projection/weight":
            continue
        layer = LAYER.match(name)
        if layer is None:
            state[_renamed(name, _TOP_LEVEL, "", where)] = value
            continue
        prefix, part = f"{layer.group(1)}.blocks.{layer.group(2)}.", name[layer.end():]
        fused = next((f for f in _FUSED if part.startswith(f)), None)
        if fused is None:
            state[_renamed(part, _IN_LAYER, prefix, where)] = value
            continue
        kind = _PARAMETERS[part[len(fused):]]
        for target, piece in zip(_FUSED[fused], value.chunk(len(_FUSED[fused]), dim=0)):
            # Whisper's key projections have no bias (CTranslate2 stores zeros for them)
            if not (kind == "bias" and target.endswith("key.")):
                state[f"{prefix}{target}{kind}"] = piece
    return state


def _renamed(name: str, names: Dict[str, str], prefix: str, where: str) -> str:
    for theirs, ours in names.items():
        if name == theirs:
            return prefix + ours
        if theirs.endswith("/") and name.startswith(theirs) and name[len(theirs):] in _PARAMETERS:
            return prefix + ours + _PARAMETERS[name[len(theirs):]]
    raise ModelUnavailable(f"{where}: {WEIGHTS_FILE} has a variable {name!r} that a Whisper "
                           "model has no place for")


def dimensions(state: Dict[str, torch.Tensor], variables: Dict[str, torch.Tensor],
               where: str) -> ModelDimensions:
    """Whisper's dimensions, read off the weights' shapes and the spec's head counts."""
    try:
        conv1 = state["encoder.conv1.weight"]
        embedding = state["decoder.token_embedding.weight"]
        return ModelDimensions(
            n_mels=conv1.shape[1],
            n_audio_ctx=state["encoder.positional_embedding"].shape[0],
            n_audio_state=conv1.shape[0],
            n_audio_head=int(variables["encoder/num_heads"]),
            n_audio_layer=_layers(variables, "encoder"),
            n_vocab=embedding.shape[0],
            n_text_ctx=state["decoder.positional_embedding"].shape[0],
            n_text_state=embedding.shape[1],
            n_text_head=int(variables["decoder/num_heads"]),
            n_text_layer=_layers(variables, "decoder"),
        )
    except KeyError as missing:
        raise ModelUnavailable(f"{where}: {WEIGHTS_FILE} has no {missing.args[0]}, which "
                               "a Whisper model has") from None


def _layers(variables: Dict[str, torch.Tensor], stack: str) -> int:
    found = {int(m.group(2)) for m in map(LAYER.match, variables) if m and m.group(1) == stack}
    return len(found)
