"""Randomly initialised checkpoints in openai-whisper's official file format.

Real weights cannot be downloaded everywhere (CI, air-gapped hosts); a synthetic checkpoint
exercises every code path a real one takes (`whisper.load_model` on a `.pt` file holding
`{"dims": ..., "model_state_dict": ...}`) and has the real model's shapes and cost, so tests,
benchmarks and deployment smoke tests can use it. Its words are gibberish.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Dict

import torch
from whisper.model import ModelDimensions, Whisper

# Shapes of the official models (from their checkpoints), plus a tiny one for tests.
DIMENSIONS: Dict[str, ModelDimensions] = {
    "test-tiny": ModelDimensions(80, 1500, 64, 2, 2, 51865, 64, 64, 2, 2),
    "test-tiny.en": ModelDimensions(80, 1500, 64, 2, 2, 51864, 64, 64, 2, 2),
    "tiny": ModelDimensions(80, 1500, 384, 6, 4, 51865, 448, 384, 6, 4),
    "base": ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6),
    "small": ModelDimensions(80, 1500, 768, 12, 12, 51865, 448, 768, 12, 12),
    "large-v3": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 32),
    "turbo": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 4),
}
INIT_STD = 0.02  # like GPT-2's initialisation: small enough that activations stay finite


def make_checkpoint(path: str, shape: str = "test-tiny", seed: int = 0) -> str:
    """Write a seeded random checkpoint with the dimensions named by `shape`; return path."""
    if shape not in DIMENSIONS:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(DIMENSIONS)}")
    dims = DIMENSIONS[shape]
    generator = torch.Generator().manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # every parameter, including the decoder's positional embedding that
            # openai-whisper leaves uninitialised (torch.empty)
            if name.endswith("ln.weight") or name.endswith("ln_post.weight"):
                parameter.fill_(1.0)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * INIT_STD)
    # stored in float16, as the official checkpoints are (load_model makes them float32)
    state = {name: tensor.half() if tensor.is_floating_point() else tensor
             for name, tensor in model.state_dict().items()}
    torch.save({"dims": asdict(dims), "model_state_dict": state}, path)
    return path
