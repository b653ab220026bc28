"""`whisper-service finetune DATASET --model BASE --output FOLDER`: a Whisper adapted to a
dataset of your own, written as a folder the service serves, with its held-out error rates
before and after side by side (the `evaluate` table).

DATASET is any form `evaluate` reads (a Common Voice folder, a .csv or .jsonl manifest);
the held-out clips are `--eval DATASET`, or `--eval-fraction` of DATASET (never both in
training and held out). BASE is any model setting the service loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from typing import Optional, Sequence

from whisper_service.cli.main import _add_option_flags
from whisper_service.errors import ConfigError, ServiceError
from whisper_service.options import OPTION_NAMES, TranscribeOptions

FINETUNE = "finetune"
EXIT_FAILED = 1
EXIT_USAGE = 2
PREFIX_OPTIONS = ("task", "language", "model")  # set by the fine-tune's own flags
MODEL_FILES = ("config.json", "model.safetensors")  # an output folder holding these is a model


def build_parser() -> argparse.ArgumentParser:
    from whisper_service.training.options import FineTuneOptions

    d = FineTuneOptions(base="", output="")
    parser = argparse.ArgumentParser(
        prog=f"whisper-service {FINETUNE}",
        description="Fine-tune a Whisper model on your recordings and texts; print its held-out "
                    "WER and CER before and after.")
    parser.add_argument("dataset", metavar="DATASET",
                        help="training clips: a Common Voice-style folder (a .tsv with path and "
                             "sentence, clips/), or a .csv / .jsonl manifest with audio and text")
    parser.add_argument("--model", required=True, metavar="BASE",
                        help="the model to start from: a name, checkpoint file or folder, Hugging "
                             "Face id, or 'bundled'")
    parser.add_argument("--output", required=True, metavar="FOLDER",
                        help="where the fine-tuned model is written; the folder's name is the "
                             "model's name (serve it with WHISPER_MODELS=NAME=FOLDER)")
    parser.add_argument("--eval", metavar="DATASET", help="held-out clips, in any dataset form "
                        "(default: --eval-fraction of DATASET)")
    parser.add_argument("--eval-fraction", type=float, default=d.eval_fraction, metavar="F",
                        help=f"share of DATASET held out when --eval is not given (default {d.eval_fraction})")
    parser.add_argument("--language", help="language of the clips (a code or a name); sets the "
                                           "prefix of a multilingual model and the scoring")
    parser.add_argument("--task", default=d.task, choices=("transcribe", "translate"))
    parser.add_argument("--epochs", type=float, default=d.epochs, help=f"default {d.epochs:g}")
    parser.add_argument("--max-steps", type=int, default=d.max_steps, metavar="N",
                        help="optimiser steps in all; overrides --epochs")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                        help=f"clips per forward pass (default {d.batch_size})")
    parser.add_argument("--gradient-accumulation", type=int, default=d.gradient_accumulation,
                        metavar="N", help="forward passes per optimiser step (default 1)")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate, metavar="LR",
                        help=f"peak learning rate (default {d.learning_rate:g})")
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps, metavar="N",
                        help="steps of linear warm-up before the linear decay (default 0)")
    freeze = parser.add_mutually_exclusive_group()
    freeze.add_argument("--freeze-encoder", dest="freeze_encoder", action="store_true", default=None,
                        help="train the decoder only (the default on a CPU)")
    freeze.add_argument("--train-encoder", dest="freeze_encoder", action="store_false",
                        help="train the encoder too (the default on a GPU)")
    parser.add_argument("--no-timestamps", dest="timestamps", action="store_false",
                        help="labels without timestamp tokens (the service decodes with them)")
    parser.add_argument("--eval-steps", type=int, default=d.eval_steps, metavar="N",
                        help="held-out WER every N steps too (default: before and after only)")
    parser.add_argument("--save-steps", type=int, default=d.save_steps, metavar="N",
                        help=f"a checkpoint every N steps (default {d.save_steps})")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in --output")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: WHISPER_DEVICE or auto)")
    parser.add_argument("--model-dir", help="where named models and Hugging Face ids are downloaded")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="log what happens")
    # how the held-out clips are decoded for scoring: the transcription options, as evaluate's
    _add_option_flags(parser, [spec for spec in fields(TranscribeOptions)
                               if spec.name not in PREFIX_OPTIONS])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tqdm import tqdm

    from whisper_service.cli import evaluate
    from whisper_service.config import Settings
    from whisper_service.models import pick_device
    from whisper_service.options import language_code
    from whisper_service.training import examples
    from whisper_service.training.options import FineTuneOptions
    from whisper_service.training.trainer import Stopped, fine_tune

    try:
        environ = dict(os.environ, WHISPER_MODEL=args.model, WHISPER_MODELS=args.model)
        if args.device:
            environ["WHISPER_DEVICE"] = args.device
        if args.model_dir:
            environ["WHISPER_MODEL_DIR"] = args.model_dir
        settings = Settings.from_env(environ)
        pick_device(settings.device)
        language = language_code(args.language)
        options = FineTuneOptions(
            base=args.model, output=args.output, language=language, task=args.task,
            epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
            gradient_accumulation=args.gradient_accumulation, learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps, freeze_encoder=args.freeze_encoder,
            timestamps=args.timestamps, eval_fraction=args.eval_fraction,
            eval_steps=args.eval_steps, save_steps=args.save_steps, resume=args.resume,
            seed=args.seed)
        decoding = TranscribeOptions.from_mapping({
            **{name: value for name, value in vars(args).items()
               if value is not None and name in OPTION_NAMES and name not in PREFIX_OPTIONS},
            "language": language or ""})
        if not args.resume and any(os.path.isfile(os.path.join(args.output, f)) for f in MODEL_FILES):
            raise ConfigError(f"--output {args.output!r} already holds a model: choose another "
                              "folder, or --resume an unfinished fine-tune")
        dataset = evaluate.read_dataset(args.dataset)
        held_out = evaluate.read_dataset(args.eval) if args.eval else None
        parts = examples.split(dataset, held_out, args.eval_fraction, args.seed)
    except (ConfigError, ServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE

    bar = tqdm(total=None, unit="step", desc=os.path.basename(os.path.normpath(args.output)),
               disable=args.quiet)

    def on_step(report) -> None:
        bar.total = report.total_steps
        bar.update(report.step - bar.n)
        shown = {"loss": f"{report.loss:.3f}"} if report.loss is not None else {}
        if report.wer is not None:
            shown["WER"] = f"{report.wer:.1%}"
        bar.set_postfix(shown, refresh=True)

    try:
        report = fine_tune(settings, options, parts.train, parts.held_out, decoding, on_step)
    except Stopped as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        return EXIT_FAILED
    except ServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        bar.close()
    for why in report.refused:
        print(f"not trained on {why}", file=sys.stderr)
    for why in report.after.skipped:
        print(f"not scored: {why}", file=sys.stderr)
    print(evaluate.table([report.before, report.after], language))
    print(f"\nwrote {report.name} to {report.output} ({report.steps} steps on {report.train_clips} "
          f"clips); serve it with WHISPER_MODELS={report.name}={report.output}", file=sys.stderr)
    return 0
