"""Command line: transcribe or translate files with the same core the server runs, or
compare models' error rates on a dataset.

    whisper-service talk.mp4 lecture.mp3 --model turbo --format srt,vtt --output-dir out
    whisper-service evaluate cv-corpus/ja --model small,ja=/models/whisper-small-ja --language ja
    whisper-service live --server http://127.0.0.1:8000 --file talk.mp3 -o talk.txt
    whisper-service finetune my-clips.csv --model small --output models/small-mine
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import fields
from typing import TYPE_CHECKING, List, Optional, Sequence

from whisper_service.errors import ConfigError, ServiceError
from whisper_service.options import OPTION_NAMES, SubtitleLayout, TranscribeOptions
from whisper_service.progress import Progress
from whisper_service.writers import FORMATS, write

# The parsers need only the options above; what transcribes (torch, whisper, the models,
# seconds to import) is imported once the arguments are known, so --help answers at once.
if TYPE_CHECKING:
    from whisper_service.service import WhisperService

# options the command line sets through Settings rather than per file
_SETTINGS_FLAGS = ("model",)
# the flag behind each setting the command line sets, named in errors instead of the variable
FLAG_OF_VARIABLE = {
    "WHISPER_MODELS": "--model", "WHISPER_MODEL_DIR": "--model-dir", "WHISPER_MODEL": "--model",
    "WHISPER_DEVICE": "--device", "WHISPER_BATCH_WINDOWS": "--batch-windows",
}
EXIT_FAILED = 1  # a file could not be transcribed
EXIT_USAGE = 2  # a bad option or flag: nothing was tried
EVALUATE = "evaluate"  # the first argument that runs the evaluation instead
WORKER = "worker"  # the first argument that runs job consumers without HTTP (queue/worker.py)
FINETUNE = "finetune"  # the first argument that fine-tunes a model instead (cli/finetune.py)
LIVE = "live"  # the first argument that streams to a server's live captions (cli/live_client.py)
DEFAULT_EVALUATION_CSV = "evaluation.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-service",
        description="Transcribe or translate audio and video files with Whisper.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help=f"audio or video files ('{EVALUATE} DATASET ...' compares models instead; "
                             f"'{LIVE} --server URL ...' streams live captions from a server; "
                             f"'{FINETUNE} DATASET --model BASE --output FOLDER' fine-tunes one)")
    parser.add_argument("--model", help="model name, checkpoint file or folder, Hugging Face id "
                                        "(default: WHISPER_MODEL or turbo)")
    _add_settings_flags(parser)
    parser.add_argument(
        "--format", "-f", default="txt,srt,vtt",
        help=f"comma-separated output formats: {','.join(FORMATS)} or all (default: txt,srt,vtt)",
    )
    parser.add_argument("--output-dir", "-o", default=".", help="folder for the output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="log what happens")
    _add_option_flags(parser, (*fields(TranscribeOptions), *fields(SubtitleLayout)))
    return parser


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"whisper-service {EVALUATE}",
        description="Word and character error rates of models on a dataset, side by side.",
    )
    parser.add_argument("dataset", metavar="DATASET",
                        help="a Common Voice-style folder (a .tsv with path and sentence, clips/), "
                             "or a .csv / .jsonl manifest with audio and text")
    parser.add_argument("--model", required=True,
                        help="comma-separated models to compare: names, checkpoints, name=path")
    _add_settings_flags(parser)
    parser.add_argument("--csv", default=DEFAULT_EVALUATION_CSV, metavar="PATH",
                        help=f"per-utterance results (default: {DEFAULT_EVALUATION_CSV})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="log what happens")
    _add_option_flags(parser, fields(TranscribeOptions))
    return parser


def build_finetune_parser() -> argparse.ArgumentParser:
    from whisper_service.cli.finetune import PREFIX_OPTIONS
    from whisper_service.training.lora import FULL, LEARNING_RATES, LORA, LORA_FROM_PARAMETERS, METHODS
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
                        help="peak learning rate (default: %g for full fine-tuning, %g for lora)"
                             % (LEARNING_RATES[FULL], LEARNING_RATES[LORA]))
    parser.add_argument("--method", choices=METHODS, default=d.method,
                        help="full: train the weights themselves; lora: train low-rank adapters "
                             "(PEFT) on the attention and feed-forward layers, merged into the "
                             "weights when saved, so the folder is served as any model; auto (the "
                             "default): lora for bases of %d M weights and more (small, medium, "
                             "large, turbo: far less GPU memory, less overfitting on few clips), "
                             "full for tiny and base" % (LORA_FROM_PARAMETERS // 10 ** 6))
    parser.add_argument("--lora-rank", type=int, default=d.lora_rank, metavar="R",
                        help=f"rank of each LoRA adapter (default {d.lora_rank})")
    parser.add_argument("--lora-alpha", type=int, default=d.lora_alpha, metavar="A",
                        help=f"LoRA scale: the update is multiplied by alpha / rank "
                             f"(default {d.lora_alpha})")
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


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: WHISPER_DEVICE or auto)")
    parser.add_argument("--model-dir", help="where named models and Hugging Face ids are downloaded")
    parser.add_argument("--batch-windows", type=_count, metavar="N",
                        help="windows the batched mode decodes at once (default: "
                             "WHISPER_BATCH_WINDOWS, or chosen from free GPU memory)")


def _add_option_flags(parser: argparse.ArgumentParser, specs) -> None:
    """A flag for every option that has help, under both spellings (--beam-size, --beam_size)."""
    for spec in specs:
        if spec.name in _SETTINGS_FLAGS or "help" not in spec.metadata:
            continue
        flag = spec.name.replace("_", "-")
        names = [f"--{flag}"] + ([f"--{spec.name}"] if flag != spec.name else [])
        parser.add_argument(*names, dest=spec.name, metavar="VALUE",
                            help=f"{spec.metadata['help']} (default: {_shown(spec.default)})")
    parser.add_argument(
        "--temperature-increment-on-fallback", "--temperature_increment_on_fallback",
        dest="temperature_increment_on_fallback", metavar="VALUE",
        help="build the fallback schedule from --temperature up to 1.0 in these steps",
    )


def _count(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more; got {raw!r}")
    return int(raw)


def _shown(default) -> str:
    if isinstance(default, tuple):
        return ",".join(f"{v:g}" for v in default)
    return "none" if default is None else str(default)


def parse_formats(value: str) -> List[str]:
    wanted = [f.strip().lower() for f in value.split(",") if f.strip()]
    if wanted == ["all"]:
        return list(FORMATS)
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise ConfigError(f"--format takes {', '.join(FORMATS)} or all; got {value!r}")
    return wanted


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [EVALUATE]:
        return evaluate_main(argv[1:])
    if argv[:1] == [WORKER]:
        from whisper_service.queue.worker import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] == [LIVE]:
        from whisper_service.cli.live_client import main as live_main

        return live_main(argv[1:])
    if argv[:1] == [FINETUNE]:
        from whisper_service.cli.finetune import main as finetune_main

        return finetune_main(build_finetune_parser().parse_args(argv[1:]))
    args = build_parser().parse_args(argv)
    _log_setup(args.verbose)
    try:
        formats = parse_formats(args.format)
        settings, options = _settings_and_options(args, args.model)
    except (ConfigError, ServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    from whisper_service.service import WhisperService

    service = WhisperService(settings)
    failures = 0
    for path in args.files:
        try:
            transcribe_one(service, path, options, formats, args.output_dir, args.quiet)
        except ServiceError as error:
            failures += 1
            print(f"error: {path}: {error}", file=sys.stderr)
        except OSError as error:
            failures += 1
            print(f"error: {path}: {error.strerror or error}", file=sys.stderr)
    return EXIT_FAILED if failures else 0


def evaluate_main(argv: Sequence[str]) -> int:
    """Every model over the dataset, one after the other; the table on stdout."""
    args = build_evaluate_parser().parse_args(argv)
    _log_setup(args.verbose)
    from tqdm import tqdm

    from whisper_service.cli import evaluate

    models = [m.strip() for m in args.model.split(",") if m.strip()]
    try:
        settings, options = _settings_and_options(args, ",".join(models))
        dataset = evaluate.read_dataset(args.dataset)
    except (ConfigError, ServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE

    def bar(utterances, name):
        return tqdm(utterances, desc=name, unit="clip", disable=args.quiet)

    scores = []
    for model in settings.models:
        try:
            scores.append(evaluate.evaluate_model(settings, model, dataset, options, bar))
        except ServiceError as error:
            print(f"error: {model}: {error}", file=sys.stderr)
            return 1
        for why in scores[-1].skipped:
            print(f"skipped {why} ({scores[-1].model})", file=sys.stderr)
    evaluate.write_csv(args.csv, scores)
    print(evaluate.table(scores, options.language))
    if not args.quiet:
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def _log_setup(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _settings_and_options(args: argparse.Namespace, models: Optional[str]):
    """Settings from the environment and the flags, and the options of the flags given."""
    from whisper_service.config import Settings
    from whisper_service.models import pick_device

    environ = dict(os.environ)
    if models:
        # on the command line any model may be used: they are the allow-list
        environ.update(WHISPER_MODEL=models.split(",")[0], WHISPER_MODELS=models)
    if args.device:
        environ["WHISPER_DEVICE"] = args.device
    if args.model_dir:
        environ["WHISPER_MODEL_DIR"] = args.model_dir
    if args.batch_windows is not None:
        environ["WHISPER_BATCH_WINDOWS"] = str(args.batch_windows)
    option_values = {
        name: value for name, value in vars(args).items()
        if value is not None and name in OPTION_NAMES and name not in _SETTINGS_FLAGS
    }
    try:
        settings = Settings.from_env(environ)
        pick_device(settings.device)  # --device cuda without a GPU: a bad flag, said now
    except (ConfigError, ServiceError) as error:
        raise ConfigError(_flag_names(str(error), args)) from None
    return settings, TranscribeOptions.from_mapping(option_values)


def _flag_names(message: str, args: argparse.Namespace) -> str:
    """An error about a setting a flag gave, naming the flag instead of its variable."""
    given = {"--model": args.model, "--device": args.device, "--model-dir": args.model_dir,
             "--batch-windows": args.batch_windows}
    for variable, flag in FLAG_OF_VARIABLE.items():
        if given[flag] is not None:
            message = re.sub(rf"\b{variable}\b", flag, message)
    if message.startswith("device ") and args.device:
        message = f"--device: {message}"
    return message


def transcribe_one(
    service: WhisperService, path: str, options: TranscribeOptions, formats: List[str],
    output_dir: str, quiet: bool,
) -> None:
    from tqdm import tqdm

    name = os.path.basename(path)
    bars: List[tqdm] = []  # drawn at the first report: a file refused before decoding gets none

    def on_progress(progress: Progress) -> None:
        if not bars:
            bars.append(tqdm(total=round(progress.total_seconds, 1), unit="s", desc=name,
                             disable=quiet, bar_format=_BAR))
        bar = bars[0]
        shown = round(progress.done_seconds, 1)
        if progress.fraction < 1:  # 100 % once done: an estimate may round up to it before
            shown = min(shown, bar.total * BAR_SHORT_OF_DONE)
        bar.update(shown - bar.n)

    try:
        transcript = service.transcribe_file(path, options, display_name=name, progress=on_progress)
    finally:
        for bar in bars:
            bar.close()  # the final line, once
    os.makedirs(output_dir, exist_ok=True)  # only once there is something to write
    stem = os.path.splitext(name)[0]
    for fmt in formats:
        target = os.path.join(output_dir, f"{stem}.{fmt}")
        with open(target, "w", encoding="utf-8") as out:
            out.write(write(fmt, transcript, options.layout))
        if not quiet:
            print(f"wrote {target}", file=sys.stderr)


BAR_SHORT_OF_DONE = 0.99  # of the bar's total, at most, until the file is done
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]"
