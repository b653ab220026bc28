"""Command line: transcribe or translate files with the same core the server runs.

    python -m whisper_service talk.mp4 lecture.mp3 --model turbo --format srt,vtt --output-dir out
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from typing import List, Optional, Sequence

from tqdm import tqdm

from .config import Settings
from .progress import Progress
from .errors import ConfigError, ServiceError
from .options import OPTION_NAMES, SubtitleLayout, TranscribeOptions
from .service import WhisperService
from .writers import FORMATS, write

# options the command line sets through Settings rather than per file
_SETTINGS_FLAGS = ("model",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m whisper_service",
        description="Transcribe or translate audio and video files with Whisper.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio or video files")
    parser.add_argument("--model", help="model name or checkpoint path (default: WHISPER_MODEL or turbo)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: WHISPER_DEVICE or auto)")
    parser.add_argument("--model-dir", help="where named models are downloaded")
    parser.add_argument("--batch-windows", type=_count, metavar="N",
                        help="windows the batched mode decodes at once (default: "
                             "WHISPER_BATCH_WINDOWS, or chosen from free GPU memory)")
    parser.add_argument(
        "--format", "-f", default="txt,srt,vtt",
        help=f"comma-separated output formats: {','.join(FORMATS)} or all (default: txt,srt,vtt)",
    )
    parser.add_argument("--output-dir", "-o", default=".", help="folder for the output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="log what happens")
    for spec in (*fields(TranscribeOptions), *fields(SubtitleLayout)):
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
    return parser


def _count(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more; got {raw!r}")
    return int(raw)


def _shown(default) -> str:
    if isinstance(default, tuple):
        return ",".join(f"{v:g}" for v in default)
    return "auto" if default is None else str(default)


def parse_formats(value: str) -> List[str]:
    wanted = [f.strip().lower() for f in value.split(",") if f.strip()]
    if wanted == ["all"]:
        return list(FORMATS)
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise SystemExit(f"error: --format takes {', '.join(FORMATS)} or all; got {value!r}")
    return wanted


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    formats = parse_formats(args.format)
    environ = dict(os.environ)
    if args.model:
        # on the command line any model may be used: it is the allow-list
        environ.update(WHISPER_MODEL=args.model, WHISPER_MODELS=args.model)
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
        options = TranscribeOptions.from_mapping(option_values)
    except (ConfigError, ServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.output_dir, exist_ok=True)
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
    return 1 if failures else 0


def transcribe_one(
    service: WhisperService, path: str, options: TranscribeOptions, formats: List[str],
    output_dir: str, quiet: bool,
) -> None:
    name = os.path.basename(path)
    with tqdm(total=0.0, unit="s", desc=name, disable=quiet, bar_format=_BAR) as bar:

        def on_progress(progress: Progress) -> None:
            bar.total = round(progress.total_seconds, 1)
            bar.n = round(progress.done_seconds, 1)
            bar.refresh()

        transcript = service.transcribe_file(path, options, display_name=name, progress=on_progress)
    stem = os.path.splitext(name)[0]
    for fmt in formats:
        target = os.path.join(output_dir, f"{stem}.{fmt}")
        with open(target, "w", encoding="utf-8") as out:
            out.write(write(fmt, transcript, options.layout))
        if not quiet:
            print(f"wrote {target}", file=sys.stderr)


_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]"

if __name__ == "__main__":
    sys.exit(main())
