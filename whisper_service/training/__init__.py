"""Fine-tuning: a Whisper adapted to your words, served by the same service.

    dataset (cli/evaluate.py's readers)  -> examples.py: features as the service computes
    them, labels with the decoding prefix -> trainer.py: transformers' Seq2SeqTrainer, its
    held-out WER measured through the service's own decoding -> convert.py: a save_pretrained
    folder the service loads as any other model -> curves.py: the loss and WER as a PNG.

transformers, accelerate and matplotlib (requirements-finetune.txt) are imported only here:
serving never needs them.
"""
