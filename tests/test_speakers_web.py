"""Speaker labels through the web (issue 12): the option on every path, 400 naming the field
for bad values, the pyannote backend's sentence without a token, OpenAI's diarized_json, and
renaming on the transcript page (a plain form post) changing every download.

The synthetic test model's words are random; what is checked here is the plumbing: labels,
names, status codes and shapes (tests/test_speakers.py hears real words)."""

from __future__ import annotations

import io
import json
import re

import pytest
from openai.types.audio import TranscriptionDiarized

from conftest import make_app, wait_finished
from conversations import conversation
from test_app import FAST, csrf, upload, wait_until_finished
from whisper_service.speakers import pyannote as pyannote_backend
from whisper_service.writers import FORMATS


@pytest.fixture(scope="session")
def talk_wav(tmp_path_factory):
    return conversation(2, 3, seed=0).write(tmp_path_factory.mktemp("talk") / "talk.wav")


def wav_bytes(path):
    return io.BytesIO(path.read_bytes())


# --- bad values: 400 naming the field, on every path ----------------------------------------

def test_bad_speaker_values_are_400_naming_the_field_everywhere(client, talk_wav):
    native = client.post("/api/v1/transcriptions", data={
        "file": (wav_bytes(talk_wav), "talk.wav"), "diarize": "true", "max_speakers": "0"})
    assert native.status_code == 400
    assert native.get_json()["error"]["field"] == "max_speakers"
    assert "max_speakers: must be at least 1; got 0" in native.get_json()["error"]["message"]

    openai = client.post("/v1/audio/transcriptions", data={
        "file": (wav_bytes(talk_wav), "talk.wav"), "model": "whisper-1", "diarize": "true",
        "min_speakers": "3", "max_speakers": "2"})
    assert openai.status_code == 400
    assert openai.get_json()["error"]["param"] == "min_speakers"
    assert "must not exceed max_speakers" in openai.get_json()["error"]["message"]

    invocations = client.post("/invocations", json={
        "audio_input": talk_wav.read_bytes().hex(), "diarize": True, "num_speakers": 0})
    assert invocations.status_code == 400
    assert "num_speakers: must be at least 1; got 0" in invocations.get_data(as_text=True)

    page = upload(client, talk_wav, diarize="true", max_speakers="0", **FAST)
    assert page.status_code == 400
    assert "max_speakers: must be at least 1; got 0" in page.get_data(as_text=True)


def test_the_upload_page_offers_speaker_labels(client):
    page = client.get("/").get_data(as_text=True)
    assert re.search(r'<input id="diarize" name="diarize" type="checkbox" value="true"', page)
    for name in ("min_speakers", "max_speakers"):
        assert f'name="{name}" type="number" min="1" max="20"' in page


# --- the pyannote backend without a token ----------------------------------------------------------

def test_pyannote_without_a_token_answers_the_sentence_not_a_trace(checkpoint, tmp_path, talk_wav,
                                                                    monkeypatch):
    monkeypatch.setattr(pyannote_backend, "installed", lambda: True)
    for variable in pyannote_backend.TOKEN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    app = make_app(checkpoint, tmp_path, WHISPER_DIARIZATION="pyannote")
    try:
        answer = app.test_client().post("/api/v1/transcriptions", data={
            "file": (wav_bytes(talk_wav), "talk.wav"), "diarize": "true"})
    finally:
        app.extensions["whisper_jobs"].stop()
    assert answer.status_code == 503
    error = answer.get_json()["error"]
    assert error["field"] == "diarize"
    assert "need a Hugging Face token" in error["message"] and "HF_TOKEN" in error["message"]
    assert "Traceback" not in answer.get_data(as_text=True)


# --- OpenAI's diarized_json ---------------------------------------------------------------------------

def test_openai_diarized_json_is_openais_shape(client, talk_wav):
    answer = client.post("/v1/audio/transcriptions", data={
        "file": (wav_bytes(talk_wav), "talk.wav"), "model": "whisper-1",
        "response_format": "diarized_json", "language": "en", "beam_size": "2",
        "patience": "2", "mode": "sequential"})
    assert answer.status_code == 200
    body = json.loads(answer.get_data(as_text=True))
    parsed = TranscriptionDiarized.model_validate(body)  # the official SDK's own type
    assert parsed.task == "transcribe" and parsed.segments
    assert {s.type for s in parsed.segments} == {"transcript.text.segment"}
    assert {s.speaker for s in parsed.segments} <= {"A", "B"} and parsed.segments[0].speaker == "A"
    assert body["usage"] == {"type": "duration", "seconds": 11}


# --- the transcript page: colours, renaming, downloads ----------------------------------------------

def test_renaming_a_speaker_changes_the_page_and_every_download(client, talk_wav):
    job_url = upload(client, talk_wav, diarize="true", mode="sequential", **FAST).headers["Location"]
    assert wait_until_finished(client, job_url)["state"] == "done"
    page = client.get(job_url).get_data(as_text=True)
    assert '<span class="speaker-name" data-speaker="S1">Speaker 1</span>' in page
    assert 'class="speaker-0"' in page
    assert f'<form method="post" action="{job_url}/speakers" id="speakers"' in page
    assert 'name="speaker-S1" value="Speaker 1"' in page

    before = {fmt: client.get(f"{job_url}/transcript.{fmt}").get_data(as_text=True) for fmt in FORMATS}
    assert before["txt"].startswith("Speaker 1: ")
    assert "<v Speaker 1>" in before["vtt"]

    # a plain form post, as a browser without JavaScript sends it
    renamed = client.post(f"{job_url}/speakers", data={"csrf_token": csrf(client),
                                                        "speaker-S1": "  Ana\tMaria "})
    assert renamed.status_code == 303
    assert renamed.headers["Location"].endswith(job_url + "#speakers")
    page = client.get(job_url).get_data(as_text=True)
    assert '<span class="speaker-name" data-speaker="S1">Ana Maria</span>' in page
    after = {fmt: client.get(f"{job_url}/transcript.{fmt}").get_data(as_text=True) for fmt in FORMATS}
    assert after["txt"].startswith("Ana Maria: ")
    assert "\nAna Maria: " in after["srt"] and "<v Ana Maria>" in after["vtt"]
    assert after["tsv"].splitlines()[1].endswith("\tAna Maria")
    assert json.loads(after["json"])["speakers"][0] == {"id": "S1", "name": "Ana Maria"}
    assert all("Speaker 1" not in text for text in after.values())
    # the native API's download and the job's JSON see the same names
    job_id = job_url.rsplit("/", 1)[1]
    assert client.get(f"/api/v1/jobs/{job_id}/transcript.txt").get_data(as_text=True) == after["txt"]


def test_renaming_needs_the_csrf_token_and_a_short_name(client, talk_wav):
    job_url = upload(client, talk_wav, diarize="true", mode="sequential", **FAST).headers["Location"]
    assert wait_until_finished(client, job_url)["state"] == "done"
    assert client.post(f"{job_url}/speakers", data={"speaker-S1": "Ana"}).status_code == 400
    too_long = client.post(f"{job_url}/speakers", data={"csrf_token": csrf(client),
                                                        "speaker-S1": "x" * 61})
    assert too_long.status_code == 400
    assert "at most 60 characters" in too_long.get_data(as_text=True)
    assert "Speaker 1: " in client.get(f"{job_url}/transcript.txt").get_data(as_text=True)
