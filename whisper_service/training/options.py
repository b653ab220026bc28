"""What a fine-tune is asked to do: frozen options, checked on creation."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from whisper_service.errors import BadOption
from whisper_service.training.lora import LEARNING_RATES, METHODS

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class FineTuneOptions:
    base: str  # the model to start from: any model setting the service loads (name=path too)
    output: str  # the folder the fine-tuned model is written to; its name is the model's name
    language: Optional[str] = None  # language token of the prefix (multilingual models); None: none
    task: str = "transcribe"  # task token of the prefix (multilingual models)
    epochs: float = 3.0  # passes over the training clips (max_steps, when set, wins)
    max_steps: int = 0  # optimiser steps in all; 0: from epochs
    batch_size: int = 8  # clips per forward pass
    gradient_accumulation: int = 1  # forward passes per optimiser step
    learning_rate: Optional[float] = None  # peak learning rate; None: the method's (full 1e-5, lora 1e-3)
    warmup_steps: int = 0  # linear warm-up from 0, then linear decay to 0
    freeze_encoder: Optional[bool] = None  # train the decoder only; None: on the CPU, not on a GPU
    timestamps: bool = True  # labels with <|0.00|> ... <|end|>, as the service decodes
    eval_fraction: float = 0.1  # share of the clips held out when no held-out set is given
    eval_steps: int = 0  # held-out WER every N steps as well as before and after; 0: only those
    save_steps: int = 100  # a checkpoint every N steps, which --resume continues from
    resume: bool = False  # continue from the last checkpoint in the output folder
    seed: int = 0  # the held-out split and the training order
    method: str = "auto"  # full (every weight), lora (adapters, merged when saved); auto: lora from small (244 M) up
    lora_rank: int = 32  # rank r of each LoRA adapter (lora only)
    lora_alpha: int = 64  # the adapters' scale is alpha / r (lora only)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise BadOption("task", f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.method not in METHODS:
            raise BadOption("method", f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        for name in ("batch_size", "gradient_accumulation", "save_steps", "lora_rank", "lora_alpha"):
            if getattr(self, name) < 1:
                raise BadOption(name, f"{name.replace('_', ' ')} must be 1 or more")
        for name in ("max_steps", "warmup_steps", "eval_steps"):
            if getattr(self, name) < 0:
                raise BadOption(name, f"{name.replace('_', ' ')} must be 0 or more")
        if not self.epochs > 0:
            raise BadOption("epochs", "epochs must be more than 0")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise BadOption("learning_rate", "the learning rate must be between 0 and 1")
        if not 0 < self.eval_fraction < 1:
            raise BadOption("eval_fraction", "the held-out fraction must be between 0 and 1")

    def learning_rate_for(self, method: str) -> float:
        """The peak learning rate: the one asked for, else the method's default."""
        return self.learning_rate if self.learning_rate is not None else LEARNING_RATES[method]
