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

from whisper_service.errors import ConfigError, ServiceError
from whisper_service.options import OPTION_NAMES, TranscribeOptions

FINETUNE = "finetune"
EXIT_FAILED = 1
EXIT_USAGE = 2
PREFIX_OPTIONS = ("task", "language", "model")  # set by the fine-tune's own flags, not decoding's
MODEL_FILES = ("config.json", "model.safetensors")  # an output folder holding these is a model


def main(args: argparse.Namespace) -> int:
    """Run the fine-tune the parsed flags (cli/main.py's build_finetune_parser) ask for."""
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

    from whisper_service.training import missing_packages

    if missing_packages():
        print(f"error: fine-tuning needs {', '.join(missing_packages())}: pip install "
              "transformers==5.24.0 -r requirements-finetune.txt", file=sys.stderr)
        return EXIT_USAGE
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
            seed=args.seed, method=args.method, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)
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
    from whisper_service.training import words

    if language in words.SPLIT_LANGUAGES:
        if words.available():
            before, after = (words.word_error_rate(s.results, language)
                             for s in (report.before, report.after))
            print(f"\nWER on MeCab's words: {report.before.model} {before:.1%}, "
                  f"{report.after.model} {after:.1%}")
        else:
            print("a WER on MeCab's words needs fugashi and unidic-lite "
                  "(requirements-finetune.txt)", file=sys.stderr)
    print(f"\n{report.method} fine-tuning trained {report.trained_parameters:,} of "
          f"{report.parameters:,} weights ({report.trained_parameters / report.parameters:.1%}) "
          f"at learning rate {report.learning_rate:g}"
          + ("; the adapters are merged into the saved weights" if report.method == "lora" else ""),
          file=sys.stderr)
    print(f"\nwrote {report.name} to {report.output} ({report.steps} steps on {report.train_clips} "
          f"clips); serve it with WHISPER_MODELS={report.name}={report.output}", file=sys.stderr)
    return 0
