"""Fine-tuning on the CPU: full fine-tuning against LoRA on the tests' made-up names.

    python bench/finetune.py                                  # full@1e-4 and lora (1e-3)
    python bench/finetune.py --contenders full,lora,full@1e-4 --steps 20
    python bench/finetune.py --shape small --contenders full,lora --steps 2 --batch-size 2 \
        --clips 4 --held 1 --train-encoder                   # memory at small's size

The bundled tiny.en learns the names of tests/finetune_speech.py (30 espeak-ng sentences,
6 held-out sentences using the same names elsewhere): `whisper-service finetune` runs once
per contender, each in its own process (so its CPU seconds and peak RSS are its own), with
the frozen encoder the CPU defaults to, greedy decoding for the held-out WER before and
after. A contender is METHOD or METHOD@LEARNING_RATE (without one, the method's default).
CPU seconds and peak RSS cover the whole command: loading, the before/after scoring and
training. `--shape` trains a seeded random checkpoint of an official model's shape instead
(whisper_service/synthetic.py: nothing downloaded; its words are gibberish, so only the
memory and the time mean something).
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
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
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
