"""The native JSON API, /invocations and /readyz through Flask's test client."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import pytest

from conftest import make_app, wait_finished
from whisper_service.errors import ModelUnavailable
from whisper_service.writers import FORMATS

# greedy at one temperature: the fastest decode, and the same result every time
FAST = {"temperature": "0", "beam_size": "greedy", "language": "en"}
JOBS = "/api/v1/jobs/"
JOB_URL = re.compile(r"^/api/v1/jobs/[A-Za-z0-9_-]{22}$")
FINISHED = ("done", "failed", "cancelled")
CONCURRENT_POSTS = 20
ASYNC = {"async": "1"}


def post(client, path, name=None, url="/api/v1/transcriptions", query=None, **fields):
    data = {"file": (io.BytesIO(path.read_bytes()), name or path.name), **fields}
    return client.post(url, data=data, query_string=query)


def post_json(client, body, url="/api/v1/transcriptions"):
    return client.post(url, data=json.dumps(body), content_type="application/json")


def as_base64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def wait_until_finished(client, job_url, seconds=60):
    return wait_finished(lambda: client.get(job_url).get_json(), job_url, seconds)


def error_of(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    return response.get_json()["error"]


def without_job_id(body):
    return {k: v for k, v in body.items() if k != "job_id"}


@pytest.fixture(scope="module")
def shared_app(checkpoint, tmp_path_factory):
    """One app for the tests that only read: the model loads once."""
    app = make_app(checkpoint, tmp_path_factory.mktemp("api"))
    yield app
    app.extensions["whisper_jobs"].stop()


@pytest.fixture
def api(shared_app):
    return shared_app.test_client()


@pytest.fixture(scope="module")
def done(shared_app, media):
    """A synchronous transcription of speech.wav: (its answer, the job's URL)."""
    response = post(shared_app.test_client(), media["speech.wav"], **FAST)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert response.headers["X-Job-Id"] == body["job_id"]
    return body, JOBS + body["job_id"]


@pytest.fixture
def stopped(checkpoint, tmp_path):
    """An app whose consumer is stopped: jobs stay queued; one may wait."""
    app = make_app(checkpoint, tmp_path, WHISPER_MAX_QUEUED="1")
    app.extensions["whisper_jobs"].stop()
    return app.test_client()


# --- transcriptions and jobs ---------------------------------------------------------------


def test_synchronous_answer_is_the_jobs_transcript(api, done):
    body, job_url = done
    assert body["language"] == "en" and body["task"] == "transcribe"
    assert body["duration"] == pytest.approx(8.0, abs=0.5)
    assert body["text"] and body["segments"]
    assert api.get(job_url + "/transcript.json").get_json() == without_job_id(body)

    job = api.get(job_url).get_json()
    assert job["state"] == "done" and job["progress"] == 1.0 and job["error"] is None
    assert job["position"] is None and job["attempts"] == 1
    assert job["filename"] == "speech.wav" and job["model"] == body["model"]
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["options"]["beam_size"] is None and job["options"]["temperature"] == [0.0]
    assert job["options"]["layout"]["highlight_words"] is False
    assert job["links"]["self"] == job_url
    assert job["links"]["transcript"] == {f: f"{job_url}/transcript.{f}" for f in FORMATS}


@pytest.mark.parametrize("fmt, content_type, shape", [
    ("json", "application/json", r'^\{"task": "transcribe", "language": "en"'),
    ("txt", "text/plain", r"^\S.*\n$"),
    ("srt", "application/x-subrip", r"^1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S"),
    ("vtt", "text/vtt", r"^WEBVTT\n\n00:\d\d\.\d{3} --> 00:\d\d\.\d{3}\n\S"),
    ("tsv", "text/tab-separated-values", r"^start\tend\ttext\n\d+\t\d+\t\S"),
])
def test_transcript_formats(api, done, fmt, content_type, shape):
    body, job_url = done
    response = api.get(f"{job_url}/transcript.{fmt}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == f"{content_type}; charset=utf-8"
    text = response.get_data(as_text=True)
    assert re.match(shape, text, re.S), text
    if fmt == "txt":
        assert text == "".join(s["text"].strip() + "\n" for s in body["segments"])


def test_unknown_transcript_format_is_404(api, done):
    assert error_of(api.get(done[1] + "/transcript.docx"), 404)["code"] == "not_found"


@pytest.mark.parametrize("how", [{"query_string": {"async": "1"}},
                                 {"headers": {"Prefer": "wait=5, respond-async"}}])
def test_async_request_answers_202_then_the_job_finishes(api, media, how):
    response = api.post("/api/v1/transcriptions", **how, data={
        "file": (io.BytesIO(media["speech.mp3"].read_bytes()), "talk.mp3"), **FAST})
    assert response.status_code == 202
    job_url = response.headers["Location"]
    assert JOB_URL.match(job_url)
    job = response.get_json()
    assert job["state"] in ("queued", "running") and job["finished_at"] is None
    assert job["links"]["self"] == job_url and job["filename"] == "talk.mp3"
    assert wait_until_finished(api, job_url)["state"] == "done"
    assert api.get(job_url + "/transcript.json").get_json()["language"] == "en"


def test_json_body_with_base64_gives_the_same_transcript(api, media, done):
    response = post_json(api, {"audio": as_base64(media["speech.wav"]),
                               "filename": "talk.wav", **FAST})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert without_job_id(response.get_json()) == without_job_id(done[0])
    assert api.get(JOBS + response.get_json()["job_id"]).get_json()["filename"] == "talk.wav"


def test_synchronous_call_past_the_timeout_becomes_202(checkpoint, tmp_path, long_speech):
    app = make_app(checkpoint, tmp_path, WHISPER_SYNC_TIMEOUT="0.05")
    client = app.test_client()
    try:
        response = post(client, long_speech, **FAST)
        assert response.status_code == 202
        job_url = response.headers["Location"]
        assert response.get_json()["state"] in ("queued", "running")
        # a running job stops at its next progress report; a queued one at once
        assert client.delete(job_url).status_code == 204
        assert wait_until_finished(client, job_url)["state"] == "cancelled"
    finally:
        app.extensions["whisper_jobs"].stop()


def test_delete_cancels_a_queued_job_then_deletes_it(stopped, media):
    response = post(stopped, media["speech.wav"], query=ASYNC, **FAST)
    job_url = response.headers["Location"]
    assert response.get_json()["position"] == 1
    not_yet = stopped.get(job_url + "/transcript.txt")
    assert error_of(not_yet, 404)["message"] == (
        f"The transcript is not ready yet: the job is number 1 in the queue. Poll {job_url} "
        "and try again.")
    assert not_yet.headers["Retry-After"] == "5"

    assert stopped.delete(job_url).status_code == 204
    assert stopped.get(job_url).get_json()["state"] == "cancelled"
    conflict = error_of(stopped.get(job_url + "/transcript.txt"), 409)
    assert "cancelled" in conflict["message"] and "no transcript" in conflict["message"]

    assert stopped.delete(job_url).status_code == 204
    assert error_of(stopped.get(job_url), 404)["code"] == "not_found"
    assert error_of(stopped.delete(job_url), 404)["code"] == "not_found"


@pytest.mark.parametrize("method, path", [
    ("get", "x"), ("get", "A" * 22), ("delete", "A" * 22), ("get", "A" * 22 + "/transcript.srt"),
])
def test_unknown_job_is_404_json(api, method, path):
    error = error_of(getattr(api, method)(JOBS + path), 404)
    assert error == {"code": "not_found", "message": error["message"], "field": None}


def test_failed_job_is_its_error_status_and_has_no_transcript(api, media):
    # the first seconds decode, so the upload is accepted; the job fails at the end
    error = error_of(post(api, media["truncated.mp3"], **FAST), 422)
    assert error["code"] == "truncated_media" and "is truncated" in error["message"]
    assert error["field"] == "file"

    job_url = post(api, media["truncated.mp3"], query=ASYNC, **FAST).headers["Location"]
    job = wait_until_finished(api, job_url)
    assert job["state"] == "failed" and "is truncated" in job["error"]
    conflict = error_of(api.get(job_url + "/transcript.srt"), 409)
    assert "failed" in conflict["message"] and job["error"] in conflict["message"]


# --- refused requests ----------------------------------------------------------------------


@pytest.mark.parametrize("fields, field, words", [
    ({"beam_size": "99"}, "beam_size", "must be in [1, 16]"),
    ({"temperature": "0.5,0.2"}, "temperature", "must not decrease"),
    ({"language": "Klingon"}, "language", "unknown language"),
    ({"model": "large-v2"}, "model", "is not offered here"),
    ({"max_line_width": "40"}, "word_timestamps", "must be on"),
    ({"beam": "5"}, "beam", "is not an option"),
])
def test_bad_option_is_400_naming_the_field(api, media, fields, field, words):
    error = error_of(post(api, media["speech.wav"], **fields), 400)
    assert error["field"] == field and words in error["message"]
    assert error["code"] == "bad_option"


@pytest.mark.parametrize("fields", [{"beam_size": "9" * 400}, {"patience": 10 ** 400}])
def test_huge_numbers_are_400(api, media, fields):
    # too large for a float: once an OverflowError (500)
    response = post_json(api, {"audio": as_base64(media["speech.wav"]), **fields})
    assert error_of(response, 400)["field"] == next(iter(fields))


def test_patience_too_small_for_the_beam_is_400(api, media):
    # whisper's beam search asserts round(beam_size x patience) >= 1
    response = post(api, media["speech.wav"], **{**FAST, "beam_size": "5", "patience": "0.0625"})
    assert error_of(response, 400)["field"] == "patience"


@pytest.mark.parametrize("body, field, words", [
    ({"audio": "not base64!", "filename": "a.wav"}, "audio", "base64"),
    ({"audio": 12}, "audio", "base64"),
    ({"filename": "a.wav"}, "audio", "base64"),
    ({"audio": "AAAA", "filename": ["a"]}, "filename", "must be a string"),
    ({"audio": "AAAA", "beam_size": [1]}, "beam_size", "whole number"),
    ({"audio": "AAAA", "word_timestamp": True}, "word_timestamp", "is not an option"),
])
def test_bad_json_body_is_400_naming_the_field(api, body, field, words):
    error = error_of(post_json(api, body), 400)
    assert error["field"] == field and words in error["message"]


def test_malformed_requests(api):
    unnamed = api.post("/api/v1/transcriptions",
                       data={"\n": "x", "": "y", "file": (io.BytesIO(), "a")})
    assert "no name" in error_of(unnamed, 400)["message"]
    assert error_of(post_json(api, ["audio"]), 400)["message"] == "The JSON body must be an object."
    assert error_of(api.post("/api/v1/transcriptions", data="{", content_type="application/json"),
                    400)["code"] == "bad_request"
    assert error_of(api.post("/api/v1/transcriptions", data="x", content_type="text/plain"),
                    415)["code"] == "unsupported_media_type"
    assert error_of(api.post("/api/v1/transcriptions", data={"task": "translate"}),
                    415)["code"] == "unsupported_media_type"  # a urlencoded form has no file
    assert error_of(api.post("/api/v1/transcriptions", data={"task": "translate"},
                             content_type="multipart/form-data"), 400)["field"] == "file"
    assert error_of(api.get("/api/v1/transcriptions"), 405)["code"] == "method_not_allowed"


@pytest.mark.parametrize("name, status, code", [
    ("notes.mp3", 415, "not_media"), ("talk.mp4", 422, "no_audio_stream"),
    ("empty.wav", 422, "empty_media"),
])
def test_bad_media_is_refused_with_the_reason(api, media, name, status, code):
    error = error_of(post(api, media[name], **FAST), status)
    assert error["code"] == code and error["field"] == "file" and name in error["message"]


def test_too_large_upload_is_413_json(api):
    big = b"\0" * (3 * 1024 * 1024)  # the test apps accept 2 MB
    response = api.post("/api/v1/transcriptions", data={"file": (io.BytesIO(big), "big.wav")})
    error = error_of(response, 413)
    assert error["field"] == "file" and "2 MB" in error["message"]
    as_json = post_json(api, {"audio": base64.b64encode(big).decode()})
    assert error_of(as_json, 413)["code"] == "request_entity_too_large"


def test_full_queue_is_503_with_retry_after(stopped, media):
    assert post(stopped, media["speech.wav"], query=ASYNC).status_code == 202
    response = post(stopped, media["speech.wav"], **FAST)
    assert error_of(response, 503)["code"] == "queue_full"
    assert int(response.headers["Retry-After"]) > 0


def test_api_keys(checkpoint, tmp_path, media):
    app = make_app(checkpoint, tmp_path, WHISPER_API_KEYS="k1,k2")
    client = app.test_client()
    try:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k1"}):
            for url in ("/api/v1/models", JOBS + "A" * 22):
                response = client.get(url, headers=headers)
                assert error_of(response, 401)["code"] == "api_key_required"
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            error_of(post_json(client, {"audio_input": "00"}, url="/invocations"), 401)
        keyed = client.get("/api/v1/models", headers={"Authorization": "Bearer k2"})
        assert keyed.status_code == 200
        # probes and the API description stay open
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503  # not 401: the model is not loaded
        assert client.get("/api/openapi.json").status_code == 200
    finally:
        app.extensions["whisper_jobs"].stop()


# --- language detection, models, readiness -------------------------------------------------


def test_detect_language(api, media):
    multipart = post(api, media["speech.wav"], url="/api/v1/detect-language")
    assert multipart.status_code == 200, multipart.get_data(as_text=True)
    found = multipart.get_json()
    probabilities = found["probabilities"]
    assert len(probabilities) == 99 and set(probabilities[0]) == {"language", "name", "probability"}
    assert sum(p["probability"] for p in probabilities) == pytest.approx(1.0, abs=1e-3)
    assert [p["probability"] for p in probabilities] == sorted(
        (p["probability"] for p in probabilities), reverse=True)
    assert found["language"] == probabilities[0]["language"]
    assert found["language_name"] == probabilities[0]["name"]
    assert {"language": "en", "name": "english"}.items() <= next(
        p for p in probabilities if p["language"] == "en").items()

    as_json = post_json(api, {"audio": as_base64(media["speech.wav"]), "model": ""},
                        url="/api/v1/detect-language")
    assert as_json.get_json() == found  # the same model on the same audio


@pytest.mark.parametrize("fields, status, field", [
    ({"task": "translate"}, 400, "task"), ({"model": "tiny"}, 400, "model"),
])
def test_detect_language_refuses_other_fields(api, media, fields, status, field):
    response = post(api, media["speech.wav"], url="/api/v1/detect-language", **fields)
    assert error_of(response, status)["field"] == field


def test_detect_language_refuses_what_is_not_media(api, media):
    assert error_of(post(api, media["notes.mp3"], url="/api/v1/detect-language"),
                    415)["code"] == "not_media"


def test_models(api, shared_app, done):
    # a checkpoint goes by its file name: the server's paths stay private
    listing = api.get("/api/v1/models").get_json()
    assert {key: listing[key] for key in ("default", "allowed", "loaded", "translate_model")} == {
        # large-v3 is not on hand; the bundled models are
        "default": "tiny-test", "allowed": ["tiny-test", "bundled-base", "bundled"],
        "loaded": ["tiny-test"], "translate_model": "large-v3",
    }
    assert [(m["id"], m["label"], m["available"]) for m in listing["models"]] == [
        ("tiny-test", "tiny-test", True), ("bundled-base", "base (bundled, multilingual)", True),
        ("bundled", "tiny.en (bundled, English only)", True)]


def test_readyz_is_503_until_the_model_is_loaded(app, client, media):
    assert client.get("/healthz").get_json()["status"] == "ok"
    waiting = client.get("/readyz")
    assert waiting.status_code == 503
    body = waiting.get_json()
    assert body.pop("disk")["min_free_mb"] == 100  # the data folder's room (test_disk_space.py)
    assert body == {"status": "loading", "queued": 0, "max_queued": 100}
    assert client.get("/api/v1/models").get_json()["loaded"] == []  # readyz loads nothing
    assert post(client, media["speech.wav"], **FAST).status_code == 200
    body = client.get("/readyz").get_json()
    body.pop("disk")
    assert body == {"status": "ready", "queued": 0, "max_queued": 100}


def test_readyz_says_why_the_model_could_not_be_loaded(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    app = make_app(str(broken), tmp_path)
    try:
        client = app.test_client()
        assert client.get("/readyz").get_json()["status"] == "loading"  # not tried yet
        with pytest.raises(ModelUnavailable):
            app.extensions["whisper_service"].models.get("broken")
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.get_json()["status"] == "unavailable"
        assert answer.get_json()["error"].startswith("model 'broken' could not be loaded: ")
    finally:
        app.extensions["whisper_jobs"].stop()


def test_readyz_is_503_busy_when_the_queue_is_full(stopped, media):
    assert post(stopped, media["speech.wav"], query=ASYNC).status_code == 202
    app = stopped.application
    service = app.extensions["whisper_service"]
    service.models.get(service.models.default)
    assert stopped.get("/readyz").status_code == 503
    assert stopped.get("/readyz").get_json()["status"] == "busy"


# --- SageMaker JumpStart -------------------------------------------------------------------


def test_invocations_take_hex_audio_and_jumpstart_names(api, media):
    payload = {
        "audio_input": media["speech.wav"].read_bytes().hex(), "language": "french",
        "task": "translate", "num_beams": 2, "temperature": 0.0,
        "max_length": 100, "top_p": 0.9, "do_sample": False,  # ignored: no whisper counterpart
    }
    response = post_json(api, payload, url="/invocations")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert set(response.get_json()) == {"text"}
    job_url = JOBS + response.headers["X-Job-Id"]
    options = api.get(job_url).get_json()["options"]
    assert (options["language"], options["task"], options["beam_size"]) == ("fr", "translate", 2)
    assert options["temperature"] == [0.0]
    assert response.get_json()["text"] == api.get(job_url + "/transcript.json").get_json()["text"]


@pytest.mark.parametrize("payload, field, words", [
    ({"audio_input": "xyz"}, "audio_input", "hexadecimal"),
    ({"audio": "00"}, "audio_input", "hexadecimal"),
    ({"audio_input": "00", "num_beams": 99}, "num_beams", "must be in"),
    ({"audio_input": "00", "penalty_alpha": 0.6}, "penalty_alpha", "is not an option"),
])
def test_bad_invocations_are_400_naming_the_field(api, payload, field, words):
    error = error_of(post_json(api, payload, url="/invocations"), 400)
    assert error["field"] == field and words in error["message"]


def test_invocations_refuse_what_is_not_media(api):
    assert error_of(post_json(api, {"audio_input": b"not audio".hex()}, url="/invocations"),
                    415)["code"] == "not_media"


# --- concurrency ---------------------------------------------------------------------------


def test_concurrent_requests_end_in_200_or_503_with_the_serial_result(checkpoint, tmp_path, media):
    # a short queue: some requests are refused (503), the others wait for the one consumer
    # (each in a place of its own: test_sync_waiters covers calls past their number)
    app = make_app(checkpoint, tmp_path, WHISPER_MAX_QUEUED="8",
                   WHISPER_SYNC_WAITERS=str(CONCURRENT_POSTS))
    try:
        serial = post(app.test_client(), media["speech.mp3"], **FAST)
        assert serial.status_code == 200
        answers = []
        start = threading.Barrier(CONCURRENT_POSTS)

        def one_request():
            client = app.test_client()
            start.wait()
            answers.append(post(client, media["speech.mp3"], **FAST))

        threads = [threading.Thread(target=one_request) for _ in range(CONCURRENT_POSTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        statuses = sorted(a.status_code for a in answers)
        assert len(statuses) == CONCURRENT_POSTS and set(statuses) <= {200, 503}, statuses
        assert 200 in statuses
        for answer in answers:
            if answer.status_code == 200:
                assert without_job_id(answer.get_json()) == without_job_id(serial.get_json())
            else:
                assert answer.get_json()["error"]["code"] == "queue_full"
    finally:
        app.extensions["whisper_jobs"].stop()


def test_a_checkpoint_under_a_short_name_is_shown_asked_for_and_reported_by_it(
    checkpoint, tmp_path, media
):
    app = make_app(f"meetings={checkpoint}", tmp_path)
    try:
        client = app.test_client()
        listing = client.get("/api/v1/models").get_json()
        assert (listing["default"], listing["allowed"]) == ("meetings", ["meetings", "bundled-base", "bundled"])
        page = client.get("/").get_data(as_text=True)
        # its languages are not known until it loads: every language is offered
        assert '<option value="meetings" selected data-english-only="false">meetings</option>' in page
        assert checkpoint not in page  # the path on the server stays private
        assert client.get("/v1/models/meetings").get_json()["id"] == "meetings"
        done = post(client, media["speech.wav"], model="meetings", **FAST)
        assert done.status_code == 200 and done.get_json()["model"] == "meetings"
        refused = post(client, media["speech.wav"], model=checkpoint, **FAST)
        assert refused.status_code == 400 and "meetings" in refused.get_json()["error"]["message"]
    finally:
        app.extensions["whisper_jobs"].stop()


def test_language_detection_waits_for_a_busy_model_only_so_long(checkpoint, tmp_path, media,
                                                               monkeypatch):
    app = make_app(checkpoint, tmp_path, WHISPER_SYNC_TIMEOUT="0.5")
    try:
        client = app.test_client()
        loaded = app.extensions["whisper_service"].models.get("tiny-test")
        with loaded.lock:  # a long transcription holds the model
            asked = []  # how long each wait for the model was to last, and what it got
            acquire = loaded.lock.acquire

            def timed_acquire(blocking=True, timeout=-1, **kwargs):
                asked.append((timeout, acquire(blocking, timeout, **kwargs)))
                return asked[-1][1]

            monkeypatch.setattr(loaded.lock, "acquire", timed_acquire)
            started = time.monotonic()
            busy = post(client, media["speech.wav"], url="/api/v1/detect-language")
            waited = time.monotonic() - started
            monkeypatch.undo()
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "60"
        error = busy.get_json()["error"]
        assert error["code"] == "model_busy" and "busy with a long transcription" in error["message"]
        # it waited, and for WHISPER_SYNC_TIMEOUT, not for ever (counted by the lock's timeout,
        # not the wall clock, which a loaded machine stretches)
        assert waited > 0.4
        assert asked == [(0.5, False)]
        assert post(client, media["speech.wav"], url="/api/v1/detect-language").status_code == 200
    finally:
        app.extensions["whisper_jobs"].stop()
