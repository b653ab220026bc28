"""Speech full of words tiny.en cannot know, for the fine-tuning tests: made-up names and
terms in training sentences, and held-out sentences that use the same terms in other
contexts. espeak-ng speaks them; a CSV manifest (cli/evaluate.py's format) lists them."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Sequence, Tuple

import pytest

from bundled_model import speak

TERMS = ("Zorvath", "Quellitron", "Brindlemar", "Vexolan", "Tarkimund", "Oshpelli")

TRAINING = (
    "Zorvath opened the door.",
    "The Quellitron is warm today.",
    "We walked to Brindlemar at noon.",
    "Vexolan called me last night.",
    "Tarkimund sells fresh bread.",
    "Oshpelli plays the violin.",
    "Zorvath and Vexolan are friends.",
    "Put the Quellitron on the table.",
    "Brindlemar is a quiet town.",
    "Tarkimund has a red car.",
    "Ask Oshpelli about the meeting.",
    "The Quellitron needs new batteries.",
    "Zorvath lives in Brindlemar.",
    "Vexolan fixed the Quellitron.",
    "Oshpelli met Tarkimund at the station.",
    "I gave the book to Zorvath.",
    "The road to Brindlemar is long.",
    "Vexolan writes letters every week.",
    "Tarkimund and Oshpelli went home.",
    "Turn off the Quellitron please.",
    "Zorvath likes green tea.",
    "My sister moved to Brindlemar.",
    "Vexolan will arrive tomorrow.",
    "Tarkimund built a small boat.",
    "Oshpelli found the keys.",
    "The old Quellitron still works.",
    "Zorvath told Oshpelli a story.",
    "Brindlemar has a big market.",
    "Vexolan and Tarkimund play chess.",
    "Where is the Quellitron now?",
)

HELD_OUT = (
    "Tarkimund repaired the Quellitron yesterday.",
    "Zorvath walked to the market in Brindlemar.",
    "Oshpelli and Vexolan cooked dinner.",
    "The Quellitron in Brindlemar is broken.",
    "Vexolan asked Zorvath for help.",
    "Oshpelli visited Tarkimund on Sunday.",
)


def manifest(folder: Path, sentences: Sequence[str], name: str) -> Path:
    """A CSV manifest (audio, text) of `sentences` spoken by espeak-ng into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("audio", "text"))
        for index, sentence in enumerate(sentences):
            clip = f"{name}-{index:02d}.wav"
            speak(sentence, folder / clip)
            writer.writerow((clip, sentence))
    return path


FAST = ("--beam-size", "1", "--temperature", "0")  # the held-out clips decoded greedily


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Tuple[Path, Path]:
    """(training manifest, held-out manifest), spoken once per test module that imports it."""
    folder = tmp_path_factory.mktemp("names")
    return manifest(folder, TRAINING, "train"), manifest(folder, HELD_OUT, "held")


def run_finetune(argv: Sequence[str]) -> Tuple[int, str, str]:
    """`whisper-service finetune ARGV` in this process: (exit code, stdout, stderr)."""
    from whisper_service.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["finetune", *argv])
    return code, out.getvalue(), err.getvalue()
