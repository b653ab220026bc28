"""openai-whisper's Whisper from dimensions and a state dict, whatever file they came from."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from whisper.model import ModelDimensions, Whisper

from whisper_service.errors import ModelUnavailable


def build_model(dims: ModelDimensions, state: Dict[str, torch.Tensor],
                alignment_heads: Optional[Sequence[Sequence[int]]], where: str) -> Whisper:
    """A Whisper with these weights (cast to float32, as whisper.load_model casts the
    official float16 checkpoints) and the cross-attention heads word timestamps follow:
    [[layer, head], ...] from the checkpoint, or whisper's default (every head of the
    decoder's second half) when it names none."""
    model = Whisper(dims)
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    if missing:
        raise ModelUnavailable(f"{where} lacks {len(missing)} of the weights a Whisper model "
                               f"has, e.g. {missing[0]}")
    extra = [name for name in state if name not in expected]
    if extra:
        raise ModelUnavailable(f"{where} has {len(extra)} weights a Whisper model has no place "
                               f"for, e.g. {extra[0]}")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise ModelUnavailable(f"{where}: {name} has shape {tuple(value.shape)} where a Whisper "
                                   f"model with its dimensions has {tuple(expected[name].shape)}")
    model.load_state_dict(state)
    if alignment_heads:
        set_alignment_heads(model, alignment_heads, where)
    return model


def set_alignment_heads(model: Whisper, heads: Sequence[Sequence[int]], where: str) -> None:
    """What Whisper.set_alignment_heads does with whisper's packed encoding, from pairs."""
    dims = model.dims
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for pair in heads:
        layer, head = (int(v) for v in pair)
        if not (0 <= layer < dims.n_text_layer and 0 <= head < dims.n_text_head):
            raise ModelUnavailable(
                f"{where} names alignment head {layer}, {head}; the decoder has "
                f"{dims.n_text_layer} layers of {dims.n_text_head} heads"
            )
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
