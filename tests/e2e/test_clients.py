"""Clients nobody here wrote, against a job that outlasts WHISPER_SYNC_TIMEOUT: the official
OpenAI Node SDK and a SageMaker-style caller get their answer, never a 202 they cannot read;
and the README's curl lines, run as a user pastes them, also on the offline default (turbo
cannot be downloaded: the bundled models stand in)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import whisper

from conftest import make_app, run_ffmpeg, serving, wait_until

ROOT = Path(__file__).resolve().parents[2]
NODE_TESTS = ROOT / "tests" / "node"
README = ROOT / "README.md"
README_BASE = "http://127.0.0.1:8000"
SRT_START = re.compile(r"^1\n00:00:\d\d,\d\d\d --> ")


def serve(app):
    with serving(app) as base:
        yield app, base


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """A server whose sync wait is short: every transcription here outlasts it."""
    yield from serve(make_app(checkpoint, tmp_path_factory.mktemp("clients"),
                              WHISPER_SYNC_TIMEOUT="0.2", WHISPER_MAX_UPLOAD_MB="50"))


@pytest.fixture
def default_server(checkpoint, tmp_path):
    """A server as the README's user has it: the default waits."""
    yield from serve(make_app(checkpoint, tmp_path, WHISPER_MAX_UPLOAD_MB="50"))


@pytest.fixture
def offline_default_server(tmp_path, monkeypatch):
    """A fresh clone's first start without internet: the default model (turbo) and the
    translation model (large-v3) cannot be downloaded."""
    for name in ("turbo", "large-v3"):
        monkeypatch.setitem(whisper._MODELS, name, f"http://127.0.0.1:9/0000/{name}.pt")
    yield from serve(make_app("turbo", tmp_path / "server", WHISPER_MAX_UPLOAD_MB="50",
                              WHISPER_SYNC_TIMEOUT="600"))  # answers, not 202, on a busy CPU


def test_the_official_node_sdk_gets_text_and_srt(server, media):
    assert (NODE_TESTS / "node_modules" / "openai").is_dir(), "make test installs it (npm ci)"
    done = subprocess.run(["node", "transcribe.mjs", server[1] + "/v1", str(media["speech.wav"])],
                          cwd=NODE_TESTS, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert isinstance(answer["text"], str) and answer["text"].strip()
    assert answer["srtType"] == "string" and SRT_START.match(answer["srt"])
    # a file that is not media: the SDK's BadRequestError, naming the field
    assert answer["notMedia"] == {"name": "BadRequestError", "status": 400, "param": "file"}


def test_a_sagemaker_style_caller_reads_text(server, media):
    response = requests.post(server[1] + "/invocations", timeout=300, json={
        "audio_input": media["speech.wav"].read_bytes().hex(), "num_beams": 1})
    assert response.status_code == 200
    assert isinstance(response.json()["text"], str)  # KeyError: 'text' before


def readme_curl_lines() -> list:
    """The curl lines of the README's native API example, as written."""
    block = README.read_text(encoding="utf-8").split("**Native** (`/api/v1`)", 1)[1]
    block = block.split("```sh", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if "curl" in line and not line.startswith("#")]
    return [re.sub(r"\s+#\s.*$", "", line) for line in lines]  # a comment after the command


def test_the_readmes_curl_lines_work_as_written(default_server, media, tmp_path):
    run_readme_curl_lines(default_server, media, tmp_path)


def test_the_readmes_curl_lines_work_on_the_offline_default(offline_default_server, media, tmp_path):
    """Korean, translation and language detection included: the bundled base stands in."""
    answers = run_readme_curl_lines(offline_default_server, media, tmp_path)
    models = next(body for line, body in answers if line.endswith("/api/v1/models"))
    assert json.loads(models)["missing"][0]["stand_in"] == "bundled-base"
    translated = next(body for line, body in answers if '"task": "translate"' in line)
    assert json.loads(translated)["model"] == "bundled-base"


def readme_openai_python() -> list:
    """The Python blocks of the README's OpenAI-compatible section that call the SDK."""
    section = README.read_text(encoding="utf-8").split("**OpenAI-compatible** (`/v1`)", 1)[1]
    section = section.split("**SageMaker**", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]
    return [block for block in blocks if "client." in block]


def test_the_readmes_openai_python_lines_work_on_the_offline_default(
        offline_default_server, media, tmp_path, monkeypatch, capsys):
    """The official Python SDK as the README shows it: a transcription, a translation to SRT
    with our beam_size, a stream of events; the bundled base runs them."""
    blocks = readme_openai_python()
    assert len(blocks) == 2 and "translations.create" in blocks[0] and "stream=True" in blocks[1]
    shutil.copy(media["speech.mp3"], tmp_path / "talk.mp3")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    for block in blocks:
        exec(block.replace(README_BASE, offline_default_server[1]), names)  # as pasted
    assert names["text"].text.strip()
    assert SRT_START.match(names["srt"]), names["srt"][:200]
    streamed = capsys.readouterr().out
    assert streamed.strip() and names["event"].type == "transcript.text.done"
    registry = offline_default_server[0].extensions["whisper_service"].models
    assert registry.loaded() == ["bundled-base"] and list(registry.missing()) == ["turbo"]


def run_readme_curl_lines(server, media, tmp_path) -> list:
    """Run each curl line of the README's native API example on `server`; (line, body) of each."""
    lines = readme_curl_lines()
    assert len(lines) >= 8
    # over 128 KB: the base64 line once failed above ~96 KB (argument list too long)
    run_ffmpeg("-i", str(media["speech.wav"]), "-af", "apad=pad_dur=20", "-c:a", "libmp3lame",
               "-b:a", "128k", str(tmp_path / "talk.mp3"))
    assert (tmp_path / "talk.mp3").stat().st_size > 128 * 1024
    shutil.copy(media["speech.mp4"], tmp_path / "lecture.mp4")
    queue = server[0].extensions["whisper_jobs"]
    job_id = None
    answers = []
    for line in lines:
        command = line.replace(README_BASE, server[1])
        if "<id>" in command:
            if "transcript" in command:
                wait_until(lambda: queue.get(job_id).finished, 300, what="the job")
            command = command.replace("<id>", job_id)
        done = subprocess.run(["bash", "-c", command + " -sS -w '\\n%{http_code}'"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (line, done.stderr)
        body, status = done.stdout.rsplit("\n", 1)
        assert status in ("200", "202", "204"), (line, status, body[:500])
        if "respond-async" in line:
            job_id = json.loads(body)["id"]
        answers.append((line, body))
    return answers
