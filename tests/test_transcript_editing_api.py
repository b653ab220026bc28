"""Correcting a transcript over the API and on the page's routes, on both stores: PATCH
refuses what cannot apply with 400 naming it, every download shows the corrections, the
model's transcript is kept, downloadable and restorable; the loudness envelope is served
and kept."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from conftest import make_app
from test_jobs import FAST, backend, root  # noqa: F401
from test_openapi import documented
from whisper_service.loudness import MIN_BINS
from whisper_service.transcript import Segment, Speaker, Transcript, Word

LINES = ((0.0, 1.0, " Hello world.", "S1"), (1.2, 2.0, " How are you?", "S2"),
         (2.2, 2.8, " Fine thanks.", "S1"))


def recorded_transcript() -> Transcript:
    segments = tuple(
        Segment(id=i, seek=0, start=start, end=end, text=text, tokens=(), temperature=0.0,
                avg_logprob=-0.2, compression_ratio=1.2, no_speech_prob=0.0, speaker=speaker,
                words=tuple(Word(w, start, end, 0.4, speaker) for w in [text]))
        for i, (start, end, text, speaker) in enumerate(LINES))
    return Transcript(task="transcribe", language="en", language_probability=1.0, duration=3.0,
                      model="fake-model", text="".join(line[2] for line in LINES),
                      segments=segments,
                      speakers=(Speaker("S1", "Speaker 1"), Speaker("S2", "Speaker 2")))


@pytest.fixture
def web_app(backend, checkpoint, tmp_path):
    app = make_app(checkpoint, tmp_path, **backend.settings(), WHISPER_ROLE="web")
    yield app
    app.extensions["whisper_jobs"].store.close()


@pytest.fixture
def done_job(web_app, media) -> str:
    """A finished job with a real recording (as a live session leaves one)."""
    queue = web_app.extensions["whisper_jobs"]
    job_id, path = queue.new_recording()
    shutil.copyfile(media["speech.wav"], path)
    queue.add_recorded(job_id, "talk.wav", FAST, recorded_transcript())
    return job_id


def patch(client, job_id, *edits, **kwargs):
    return client.patch(f"/api/v1/jobs/{job_id}/transcript", json={"edits": list(edits)}, **kwargs)


def test_edits_show_in_every_download_and_the_original_is_kept(web_app, done_job):
    client = web_app.test_client()
    answer = patch(client, done_job, {"op": "text", "segment": 1, "text": "How are you doing?"},
                   {"op": "merge", "segment": 1}, {"op": "retime", "segment": 0, "end": 1.1})
    assert answer.status_code == 200, answer.get_json()
    documented("/api/v1/jobs/{job_id}/transcript", "patch", 200).validate(answer.get_json())
    assert [s["text"] for s in answer.get_json()["segments"]] == [
        " Hello world.", " How are you doing? Fine thanks."]
    base = f"/api/v1/jobs/{done_job}"
    for fmt in ("txt", "srt", "vtt", "tsv", "json"):
        body = client.get(f"{base}/transcript.{fmt}").get_data(as_text=True)
        assert "How are you doing? Fine thanks." in body, fmt
        original = client.get(f"{base}/original.{fmt}")
        assert "How are you?" in original.get_data(as_text=True) and "doing" not in original.get_data(as_text=True)
        assert "talk-original." in original.headers["Content-Disposition"]
    assert "00:00:01,100" in client.get(f"{base}/transcript.srt").get_data(as_text=True)
    assert client.get(f"/jobs/{done_job}/transcript.txt").get_data(as_text=True).count("doing") == 1
    restored = client.delete(f"{base}/transcript/edits")
    assert restored.status_code == 204
    assert "doing" not in client.get(f"{base}/transcript.txt").get_data(as_text=True)


@pytest.mark.parametrize("body, field, words", [
    ({"edits": [{"op": "retime", "segment": 2, "end": 99}]}, "edits[0].end", "past the end of the audio"),
    ({"edits": [{"op": "retime", "segment": 1, "start": 0.5}]}, "edits[0].start", "before line 0 ends"),
    ({"edits": [{"op": "text", "segment": 0, "text": "ok"}, {"op": "merge", "segment": 7}]},
     "edits[1].segment", "line 7 does not exist"),
    ({"edits": [{"op": "speaker", "segment": 0, "speaker": "S3"}]}, "edits[0].speaker", "'S3'"),
    ({"edits": "merge"}, "edits", '{"edits": [...]}'),
    ({"changes": []}, "edits", '{"edits": [...]}'),
])
def test_a_patch_that_cannot_apply_is_400_naming_the_problem_and_keeps_nothing(
        web_app, done_job, body, field, words):
    client = web_app.test_client()
    answer = client.patch(f"/api/v1/jobs/{done_job}/transcript", json=body)
    assert answer.status_code == 400
    documented("/api/v1/jobs/{job_id}/transcript", "patch", 400).validate(answer.get_json())
    error = answer.get_json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert "Hello world." in client.get(f"/api/v1/jobs/{done_job}/transcript.txt").get_data(as_text=True)
    assert not web_app.extensions["whisper_jobs"].is_edited(done_job)


def test_a_patch_that_is_not_json_is_400_saying_so(web_app, done_job):
    answer = web_app.test_client().patch(f"/api/v1/jobs/{done_job}/transcript", data="merge 1")
    assert answer.status_code == 400 and "Content-Type: application/json" in answer.get_json()["error"]["message"]
    broken = web_app.test_client().patch(f"/api/v1/jobs/{done_job}/transcript", data="{",
                                         content_type="application/json")
    assert broken.status_code == 400 and "not valid JSON" in broken.get_json()["error"]["message"]


def test_editing_a_job_without_a_transcript_is_404(web_app, media):
    client = web_app.test_client()
    assert patch(client, "A" * 22, {"op": "merge", "segment": 0}).status_code == 404
    queued = client.post("/api/v1/transcriptions?async=1",
                         data={"file": (media["speech.wav"].open("rb"), "talk.wav")})
    assert queued.status_code == 202  # the web role runs no consumer: it stays queued
    answer = patch(client, queued.get_json()["id"], {"op": "merge", "segment": 0})
    assert answer.status_code == 404 and "not ready" in answer.get_json()["error"]["message"]
    assert client.get(f"/api/v1/jobs/{queued.get_json()['id']}/envelope").status_code == 404


def test_the_envelope_is_served_small_and_kept(web_app, done_job):
    client = web_app.test_client()
    answer = client.get(f"/api/v1/jobs/{done_job}/envelope")
    assert answer.status_code == 200
    envelope = answer.get_json()
    documented("/api/v1/jobs/{job_id}/envelope", "get", 200).validate(envelope)
    levels = base64.b64decode(envelope["levels"])
    assert envelope["bins"] == len(levels) == MIN_BINS
    assert 0 <= envelope["seconds_per_bin"] * MIN_BINS - envelope["duration"] < envelope["seconds_per_bin"]
    assert max(levels) > 100 and min(levels) < max(levels)  # speech and quieter moments
    assert len(answer.get_data()) < 1000
    assert client.get(f"/jobs/{done_job}/envelope.json").get_json() == envelope


def test_the_page_saves_edits_with_its_token_and_answers_the_new_lines(web_app, done_job):
    client = web_app.test_client()
    page = client.get(f"/jobs/{done_job}").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    url = f"/jobs/{done_job}/edits"
    refused = client.post(url, json={"edits": [{"op": "merge", "segment": 0}]})
    assert refused.status_code == 400  # no token: not from this site
    answer = client.post(url, json={"edits": [{"op": "speaker", "segment": 1, "speaker": "S1"}]},
                         headers={"X-CSRF-Token": token})
    assert answer.status_code == 200
    assert answer.get_json()["edited"] is True and answer.get_json()["html"].count("<li") == 3
    bad = client.post(url, json={"edits": [{"op": "merge", "segment": 2}]}, headers={"X-CSRF-Token": token})
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "edits[0].segment"
    assert 'id="edited">' in client.get(f"/jobs/{done_job}").get_data(as_text=True)
    restored = client.post(f"/jobs/{done_job}/edits/restore", data={"csrf_token": token})
    assert restored.status_code == 303
    assert 'id="edited" hidden>' in client.get(f"/jobs/{done_job}").get_data(as_text=True)
    assert json.loads(client.get(f"/jobs/{done_job}/original.json").get_data())["segments"][1]["speaker"] == "S2"
