"""The command line: same core, files out, clear errors, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Tuple

import pytest

from whisper_service.cli.main import build_parser, main

SRT_CUE = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.*)$", re.S)
VTT_TIMING = re.compile(r"^(\d\d:)?\d\d:\d\d\.\d\d\d --> (\d\d:)?\d\d:\d\d\.\d\d\d$")


def run_cli(*args, cwd=None):
    """The command line as a user runs it: a new process, its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "whisper_service", *args],
        capture_output=True, text=True, cwd=cwd, timeout=240,
    )


def call_cli(capsys, *args) -> Tuple[int, str]:
    """main() in this process (no interpreter and torch to start): (exit status, stderr).
    `python -m whisper_service` exits with what main() returns (test_exit_status_...)."""
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    return code, capsys.readouterr().err


def test_video_to_srt_and_vtt(media, checkpoint, tmp_path):
    out = tmp_path / "out"
    result = run_cli(str(media["speech.mp4"]), "--format", "srt,vtt,json", "--model", checkpoint,
                     "--device", "cpu", "--beam-size", "2", "--patience", "2", "--temperature", "0",
                     "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["speech.json", "speech.srt", "speech.vtt"]

    cues = (out / "speech.srt").read_text(encoding="utf-8").strip().split("\n\n")
    assert len(cues) >= 1
    for number, cue in enumerate(cues, start=1):
        match = SRT_CUE.match(cue)
        assert match, cue
        assert int(match.group(1)) == number
        assert match.group(2) <= match.group(3)

    vtt = (out / "speech.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n\n")
    timings = [line for line in vtt.splitlines() if "-->" in line]
    assert len(timings) == len(cues)
    assert all(VTT_TIMING.match(line) for line in timings)

    transcript = json.loads((out / "speech.json").read_text(encoding="utf-8"))
    assert transcript["model"] == "tiny-test"  # a checkpoint by its file name, not its path
    assert transcript["task"] == "transcribe"
    assert 3 < transcript["duration"] < 15
    assert "100%" in result.stderr  # the progress bar finished


def test_bad_file_is_reported_and_others_still_written(media, checkpoint, tmp_path):
    result = run_cli(str(media["notes.mp3"]), str(media["speech.wav"]), "--model", checkpoint,
                     "--temperature", "0", "--beam-size", "greedy", "--format", "txt",
                     "--mode", "batched", "--batch-windows", "1",
                     "--output-dir", str(tmp_path), "--quiet")
    assert result.returncode == 1
    assert "notes.mp3' is not an audio or video file" in result.stderr
    assert (tmp_path / "speech.txt").is_file()
    assert not (tmp_path / "notes.txt").exists()


def test_exit_status_of_the_process_is_mains(media, checkpoint):
    result = run_cli(str(media["speech.wav"]), "--model", checkpoint, "--patience", "0")
    assert result.returncode == 2
    assert "patience: must be in (0, 10]; got 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_batch_size_exits_2_naming_the_flag(media, checkpoint, capsys):
    code, err = call_cli(capsys, media["speech.wav"], "--model", checkpoint, "--batch-windows", "-3")
    assert code == 2
    assert "--batch-windows: must be a whole number, 0 or more; got '-3'" in err


def test_every_option_has_a_flag():
    flags = build_parser().format_help()
    for option in ("--task", "--language", "--beam-size", "--patience", "--best-of", "--temperature",
                   "--length-penalty", "--initial-prompt", "--condition-on-previous-text",
                   "--no-speech-threshold", "--logprob-threshold", "--compression-ratio-threshold",
                   "--hallucination-silence-threshold", "--word-timestamps", "--max-line-width",
                   "--max-line-count", "--max-words-per-line", "--highlight-words", "--format",
                   "--output-dir", "--model", "--device", "--temperature-increment-on-fallback",
                   "--mode", "--batch-windows"):
        assert option in flags


@pytest.mark.parametrize("flags, words", [
    (["--format", "docx"], "--format takes txt, srt, vtt, tsv, json or all; got 'docx'"),
    (["--device", "cuda"], "--device: device 'cuda' was asked for, but no CUDA GPU is visible"),
    (["--model", "/no/such/model.pt"], "--model: '/no/such/model.pt' is neither a checkpoint"),
    (["--beam-size", "17"], "beam_size: must be in [1, 16]; got 17"),
])
def test_bad_flags_exit_2_naming_the_flag(media, checkpoint, tmp_path, capsys, flags, words):
    if "--model" not in flags:
        flags = [*flags, "--model", checkpoint]
    code, err = call_cli(capsys, media["speech.wav"], *flags, "--output-dir", tmp_path / "out")
    assert code == 2, err
    assert words in err and "WHISPER_" not in err
    assert not (tmp_path / "out").exists()


def test_progress_is_drawn_once_per_decoded_file_and_nothing_for_a_refused_one(
        media, checkpoint, tmp_path):
    out = tmp_path / "out"
    result = run_cli(str(media["notes.mp3"]), str(media["speech.wav"]), "--model", checkpoint,
                     "--format", "txt", "--beam-size", "0", "--temperature", "0",
                     "--output-dir", str(out))
    assert result.returncode == 1
    shown = [part for part in re.split(r"[\r\n]", result.stderr) if part.strip()]
    assert not any(part.startswith("notes.mp3:") for part in shown)  # refused: no bar
    final = [part for part in shown if part.startswith("speech.wav: 100%")]
    assert len(final) == 1, shown  # the last line once
    assert re.search(r"\| \d+/\d+ s audio", final[0]) and "0/0 s" not in result.stderr
    assert (out / "speech.txt").exists()


def test_no_output_folder_when_every_file_failed(media, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = call_cli(capsys, media["notes.mp3"], "--model", checkpoint, "--output-dir", out)
    assert code == 1 and "notes.mp3" in err
    assert not out.exists()


def test_help_says_none_where_nothing_is_set_and_documents_greedy():
    text = build_parser().format_help()
    compact = " ".join(text.split())
    assert "(default: auto)" not in compact
    assert "spoken language: auto, a code (ko) or a name (Korean) (default: none)" in compact
    assert "0 or 'greedy' for greedy decoding" in compact
