"""Fine-tuning: a Whisper adapted to your words, served by the same service.

    dataset (cli/evaluate.py's readers)  -> examples.py: features as the service computes
    them, labels with the decoding prefix -> trainer.py: transformers' Seq2SeqTrainer, its
    held-out WER measured through the service's own decoding -> convert.py: a save_pretrained
    folder the service loads as any other model -> curves.py: the loss and WER as a PNG.

transformers, accelerate, peft and matplotlib (requirements-finetune.txt) are imported only here:
serving never needs them.
"""

import importlib.util
from typing import List

PACKAGES = ("transformers", "accelerate", "peft", "matplotlib")  # what training imports beyond serving


def missing_packages() -> List[str]:
    """The training packages this install lacks (requirements-finetune.txt)."""
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]
