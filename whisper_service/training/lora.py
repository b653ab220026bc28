"""LoRA fine-tuning (PEFT): which method a fine-tune uses, and the adapter around the model.

`full` trains the weights themselves; `lora` freezes them and trains a low-rank update
(B @ A, rank r, scaled by alpha / r) beside each chosen linear layer. LoRA's optimiser holds
state for a few percent of the weights instead of all of them, so a model of small's size
(244 M) and more trains in a fraction of the GPU memory, and the few trained weights overfit
a small dataset less. `auto` picks LoRA from LORA_FROM_PARAMETERS weights on (small, medium,
large, turbo) and full fine-tuning below (tiny 39 M, base 74 M), where it is cheap anyway.

The adapter sits on the attention projections (self- and cross-attention: q, k, v, out) and
the feed-forward layers (fc1, fc2) of the decoder, and of the encoder when the encoder
trains: every linear layer of a block, as QLoRA found better than q and v alone (Hugging
Face's "int8 training of Whisper with PEFT" recipe adapts q_proj and v_proj, rank 32,
alpha 64, dropout 0.05, learning rate 1e-3; the rank, alpha and learning rate are its, the
dropout is not: see DROPOUT).

The written model has the adapter merged into its weights (`merge_and_unload`): an ordinary
`save_pretrained` folder, so serving never needs peft. Checkpoints during training hold the
adapter and the trainer's state, which `--resume` continues from.
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

import torch

FULL, LORA, AUTO = "full", "lora", "auto"
METHODS = (AUTO, FULL, LORA)
# from this many weights on, `auto` is LoRA: between base (74 M) and small (244 M)
LORA_FROM_PARAMETERS = 200_000_000
# the default peak learning rate of each method: the recipe's 1e-5 for every weight, the PEFT
# Whisper recipe's 1e-3 for the adapter (its B starts at zero and has far fewer weights)
LEARNING_RATES = {FULL: 1e-5, LORA: 1e-3}
# no dropout on the adapters' input: PEFT's dropout keeps a copy of every adapted layer's
# input for the backward pass (measured on small's shape with the encoder trained: 1.84 GB of
# saved activations per clip against 1.06 GB without, full fine-tuning's 1.04 GB), which
# cancels LoRA's saving wherever activations are not checkpointed; the tests' held-out WER
# after 10 steps was 3.0 % without it, 3.0 % and 9.1 % in two runs with 0.05
DROPOUT = 0.0
LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # adapted in each block
# what a checkpoint of a LoRA fine-tune holds instead of the whole model's weights
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
_ADAPTER = "default"  # the adapter's name inside PEFT


def parameters(model: torch.nn.Module) -> int:
    """The model's weights, counted."""
    return sum(p.numel() for p in model.parameters())


def choose(method: str, model: torch.nn.Module) -> str:
    """`full` or `lora`: the method asked for, or for `auto` the one the model's size calls for."""
    if method != AUTO:
        return method
    return LORA if parameters(model) >= LORA_FROM_PARAMETERS else FULL


def target_modules(train_encoder: bool) -> str:
    """The layers that get an adapter, as the regular expression PEFT matches whole names
    against (transformers' names: model.decoder.layers.3.encoder_attn.q_proj, ...)."""
    stacks = "(encoder|decoder)" if train_encoder else "decoder"
    attention = "|".join(name for name in LAYERS if name.endswith("_proj"))
    feed_forward = "|".join(name for name in LAYERS if not name.endswith("_proj"))
    return rf"model\.{stacks}\.layers\.\d+\.((self_attn|encoder_attn)\.({attention})|{feed_forward})"


def wrap(hf, rank: int, alpha: int, train_encoder: bool):
    """`hf` (WhisperForConditionalGeneration) with LoRA adapters; only they train. With the
    encoder trained, its first layer's output asks for gradients, so that reentrant
    gradient checkpointing passes them through its frozen blocks (as the PEFT Whisper
    recipe does; transformers' default non-reentrant checkpointing does not need it)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=DROPOUT, bias="none",
                        target_modules=target_modules(train_encoder))
    if train_encoder:
        hf.model.encoder.conv1.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))
    return get_peft_model(hf, config)


def is_adapted(model) -> bool:
    return hasattr(model, "peft_config")


def trainable(model) -> Tuple[int, int]:
    """(weights that train, weights in all), the adapter's included."""
    total = trained = 0
    for p in model.parameters():
        total += p.numel()
        trained += p.numel() if p.requires_grad else 0
    return trained, total


def merged(model):
    """The plain transformers model with the adapter folded into its weights (W + B A
    alpha / r): what is saved and served, with no peft needed to read it."""
    return model.merge_and_unload() if is_adapted(model) else model


def merged_state(model) -> Dict[str, torch.Tensor]:
    """The weights the merged model would have, under transformers' names, without changing
    `model` (for measuring the held-out WER while training goes on)."""
    if not is_adapted(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state = {name.replace(".base_layer.", "."): value for name, value in base.state_dict().items()
             if ".lora_" not in name}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and _ADAPTER in module.lora_A:
                weight = module.get_base_layer().weight
                state[name + ".weight"] = weight + module.get_delta_weight(_ADAPTER).to(weight.dtype)
    return state


def checkpoint_method(folder: str) -> str:
    """Which method wrote a trainer checkpoint: `lora` where it holds an adapter."""
    return LORA if any(os.path.isfile(os.path.join(folder, f)) for f in ADAPTER_FILES) else FULL
