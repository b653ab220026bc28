"""Fine-tuning on the CPU: full fine-tuning against LoRA on the tests' made-up names.

    python bench/finetune.py                                  # full@1e-4 and lora (1e-3)
    python bench/finetune.py --contenders full,lora,full@1e-4 --steps 20
    python bench/finetune.py --shape small --contenders full,lora --steps 2 --batch-size 2 \
        --clips 4 --held 1 --train-encoder                   # memory at small's size
    python bench/finetune.py --memory small,large-v3     # what training holds, by method

The bundled tiny.en learns the names of tests/finetune_speech.py (30 espeak-ng sentences,
6 held-out sentences using the same names elsewhere): `whisper-service finetune` runs once
per contender, each in its own process (so its CPU seconds and peak RSS are its own), with
the frozen encoder the CPU defaults to, greedy decoding for the held-out WER before and
after. A contender is METHOD or METHOD@LEARNING_RATE (without one, the method's default).
CPU seconds and peak RSS cover the whole command: loading, the before/after scoring and
training. `--shape` trains a seeded random checkpoint of an official model's shape instead
(whisper_service/synthetic.py: nothing downloaded; its words are gibberish, so only the
memory and the time mean something).

`--memory SHAPES` trains nothing: for each shape (a synthetic checkpoint) and method it
counts what training holds in fp32 beside the weights, the way a GPU would hold it: the
trained weights' gradients and AdamW's two moments (12 bytes each), and the activations
one forward pass of one 30 s clip saves for the backward pass (the encoder trained, no
checkpointing; measured with autograd's saved-tensor hooks, each storage counted once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from finetune_speech import HELD_OUT, TRAINING, manifest  # noqa: E402  (the tests' sentences)


def run(contender: str, train: Path, held: Path, args, model: str, folder: Path) -> dict:
    method, _, rate = contender.partition("@")
    output = folder / contender.replace("@", "-")
    command = [sys.executable, "-m", "whisper_service", "finetune", str(train), "--eval", str(held),
               "--model", model, "--output", str(output), "--method", method,
               "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--language", "en", "--quiet", "--beam-size", "1", "--temperature", "0"]
    if args.train_encoder:
        command.append("--train-encoder")
    if rate:
        command += ["--learning-rate", rate]
    environ = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads))
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{contender} failed:\n{error[-2000:]}")
    report = json.loads((output / "finetune.json").read_text())
    return {"contender": contender, "method": report["options"]["method"],
            "learning_rate": report["options"]["learning_rate"], "steps": report["steps"],
            "trained": report["trained_parameters"], "weights": report["parameters"],
            "wer_before": report["before"]["wer"], "wer_after": report["after"]["wer"],
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "wall_s": wall}


def memory(shape: str, folder: Path) -> list:
    """Rows of (shape, method, weights, trained, gradients+AdamW bytes, activations bytes)."""
    import torch

    from whisper_service.checkpoints import load_checkpoint
    from whisper_service.synthetic import make_checkpoint
    from whisper_service.training import convert, lora

    path = make_checkpoint(str(folder / f"{shape}.pt"), shape)
    rows = []
    for method, dropout in (("full", None), ("lora", lora.DROPOUT), ("lora", 0.05)):
        base = load_checkpoint(path, "")
        hf = convert.to_huggingface(base)
        del base
        if method == "lora":
            saved_dropout, lora.DROPOUT = lora.DROPOUT, dropout
            hf = lora.wrap(hf, 32, 64, train_encoder=True)
            lora.DROPOUT = saved_dropout
        hf.train()
        weights = {p.untyped_storage().data_ptr() for p in hf.parameters()}
        saved = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        dims = hf.config
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            hf(input_features=torch.randn(1, dims.num_mel_bins, 3000),
               decoder_input_ids=torch.randint(0, 50000, (1, 32)), labels=torch.randint(0, 50000, (1, 32)))
        trained, total = lora.trainable(hf)
        rows.append((shape, method if dropout is None else f"{method} (dropout {dropout:g})",
                     total, trained, trained * 12, sum(saved.values())))
        del hf
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", default="full@1e-4,lora",
                        help="METHOD[@LR] list (default: full@1e-4 as the tests train it, lora "
                             "at its default 1e-3)")
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps of 8 clips (default 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per step (default 8)")
    parser.add_argument("--clips", type=int, default=len(TRAINING), help="training clips (default all 30)")
    parser.add_argument("--held", type=int, default=len(HELD_OUT), help="held-out clips (default all 6)")
    parser.add_argument("--train-encoder", action="store_true", help="train the encoder too")
    parser.add_argument("--shape", help="a synthetic checkpoint of this shape (synthetic.DIMENSIONS) "
                                        "instead of the bundled tiny.en")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--memory", metavar="SHAPES", help="count what training holds for these "
                        "shapes instead (comma-separated synthetic.DIMENSIONS names)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.memory:
        import torch

        torch.set_num_threads(args.threads)
        print(f"{'shape':<9} {'method':<20} {'weights':>9} {'trained':>9} {'grads+AdamW':>11} "
              f"{'activations/clip':>16}")
        with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
            for shape in args.memory.split(","):
                for row in memory(shape.strip(), Path(scratch)):
                    print(f"{row[0]:<9} {row[1]:<20} {row[2] / 1e6:>8.1f}M {row[3] / 1e6:>8.2f}M "
                          f"{row[4] / 2 ** 30:>9.2f}GB {row[5] / 2 ** 30:>14.2f}GB", flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        folder = Path(scratch)
        train = manifest(folder / "data", TRAINING[:args.clips], "train")
        held = manifest(folder / "data", HELD_OUT[:args.held], "held")
        model = "bundled"
        if args.shape:
            from whisper_service.synthetic import make_checkpoint

            model = make_checkpoint(str(folder / f"{args.shape}.pt"), args.shape)
        rows = [run(c.strip(), train, held, args, model, folder)
                for c in args.contenders.split(",") if c.strip()]
    print(f"{'contender':<12} {'method':<6} {'lr':>7} {'steps':>5} {'trained weights':>22} "
          f"{'WER before':>10} {'WER after':>9} {'CPU s':>7} {'peak RSS MB':>11} {'wall s':>7}")
    for r in rows:
        share = f"{r['trained'] / 1e6:.2f} M ({r['trained'] / r['weights']:.1%})"
        print(f"{r['contender']:<12} {r['method']:<6} {r['learning_rate']:>7g} {r['steps']:>5} "
              f"{share:>22} {r['wer_before']:>10.1%} {r['wer_after']:>9.1%} {r['cpu_s']:>7.1f} "
              f"{r['peak_rss_mb']:>11.0f} {r['wall_s']:>7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
