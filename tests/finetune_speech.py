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


def transcribe_held_out(output: Path, name: str, folder: Path, clip: Path) -> str:
    """The transcript of a held-out clip in a job of a server that serves the fine-tuned
    folder `output` as `name` through WHISPER_MODELS (asserting it is offered and done)."""
    from conftest import make_app, wait_finished
    from whisper_service.checkpoints import BUNDLED

    app = make_app(BUNDLED, folder, WHISPER_MODELS=f"{name}={output}")
    try:
        client = app.test_client()
        assert name in client.get("/api/v1/models").get_json()["allowed"]
        response = client.post("/api/v1/transcriptions", data={
            "file": (io.BytesIO(clip.read_bytes()), clip.name), "model": name, "language": "en",
            "temperature": "0", "beam_size": "greedy"}, query_string={"async": "1"})
        assert response.status_code == 202, response.get_data(as_text=True)
        job = response.headers["Location"]
        status = wait_finished(lambda: client.get(job).get_json(), job, 60)
        assert status["state"] == "done", status
        return client.get(job + "/transcript.txt").get_data(as_text=True)
    finally:
        app.extensions["whisper_jobs"].stop()


def halved_report(run: Tuple[int, str, str, Path]) -> dict:
    """The report (finetune.json) of a fine-tune run (code, stdout, stderr, its folder),
    asserting that it ended well and halved the held-out WER of the names tiny.en cannot
    know."""
    import json

    from whisper_service.training.trainer import REPORT_FILE

    code, _, err, output = run
    assert code == 0, err
    report = json.loads((output / REPORT_FILE).read_text())
    before, after = report["before"], report["after"]
    assert before["utterances"] == after["utterances"] == len(HELD_OUT)
    assert before["wer"] > 0.5, before  # tiny.en cannot know the names
    assert after["wer"] <= before["wer"] / 2, (before, after)
    return report
