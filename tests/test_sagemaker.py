"""SageMaker's container contract through Flask's test client: /invocations with the audio
file itself as the body (what boto3's invoke_endpoint sends), and /ping."""

from __future__ import annotations

import io

import pytest

from conftest import make_app
from web.api.sagemaker import ATTRIBUTES_HEADER, RAW_TYPES

# greedy at one temperature: the fastest decode, given as SageMaker's CustomAttributes
FAST = {ATTRIBUTES_HEADER: "beam_size=greedy&temperature=0&language=en"}
JOBS = "/api/v1/jobs/"


@pytest.fixture(scope="module")
def sagemaker_app(checkpoint, tmp_path_factory):
    app = make_app(checkpoint, tmp_path_factory.mktemp("sagemaker"))
    yield app
    app.extensions["whisper_jobs"].stop()


@pytest.fixture
def client(sagemaker_app):
    return sagemaker_app.test_client()


def invoke(client, body: bytes, content_type="audio/wav", headers=FAST, **kwargs):
    return client.post("/invocations", data=body, content_type=content_type, headers=headers,
                       **kwargs)


def error_of(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()["error"]


def test_a_raw_wav_body_is_answered_with_its_text(client, media):
    response = invoke(client, media["speech.wav"].read_bytes())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert set(response.get_json()) == {"text"}
    job_url = JOBS + response.headers["X-Job-Id"]
    job = client.get(job_url).get_json()
    assert (job["options"]["language"], job["options"]["beam_size"]) == ("en", None)
    assert job["options"]["temperature"] == [0.0]
    assert job["state"] == "done" and job["filename"] == "upload"
    assert response.get_json()["text"] == client.get(job_url + "/transcript.json").get_json()["text"]


def test_custom_attributes_take_jumpstart_names(client, media):
    response = invoke(client, media["speech.flac"].read_bytes(), "audio/flac", headers={
        ATTRIBUTES_HEADER: "num_beams=2&temperature=0&task=translate&max_new_tokens=50"})
    assert response.status_code == 200, response.get_data(as_text=True)
    options = client.get(JOBS + response.headers["X-Job-Id"]).get_json()["options"]
    assert (options["beam_size"], options["task"]) == (2, "translate")


@pytest.mark.parametrize("content_type", RAW_TYPES)
def test_every_raw_type_is_read_as_the_file_itself(client, media, content_type):
    # what is not media is refused as an upload would be: the body was taken as the file
    # (and no CustomAttributes, as the plain invoke_endpoint call sends, is fine)
    error = error_of(invoke(client, media["notes.mp3"].read_bytes(), content_type, headers={}),
                     415)
    assert error["code"] == "not_media"


def test_an_empty_body_is_refused_like_an_empty_upload(client):
    assert error_of(invoke(client, b""), 422)["code"] == "empty_media"


def test_another_content_type_is_415_naming_the_ones_taken(client, media):
    error = error_of(invoke(client, media["speech.wav"].read_bytes(), "text/plain"), 415)
    assert error["code"] == "unsupported_media_type"
    assert "audio/wav" in error["message"] and "audio_input" in error["message"]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_raw_body_over_the_size_limit_is_413(client, chunked):
    body = io.BytesIO(b"RIFF" + b"\0" * (3 * 1024 * 1024))  # the limit is 2 MB
    if chunked:  # no declared length: the limit is found while the body streams in
        sent = dict(headers={**FAST, "Transfer-Encoding": "chunked"},
                    environ_overrides={"wsgi.input_terminated": True})
    else:
        sent = dict(headers=FAST, content_length=len(body.getvalue()))
    response = client.post("/invocations", input_stream=body, content_type="audio/wav", **sent)
    assert error_of(response, 413)["code"] == "request_entity_too_large"
    assert client.application.extensions["whisper_jobs"].queued_count() == 0


@pytest.mark.parametrize("attributes, field, words", [
    ("beam_size", ATTRIBUTES_HEADER, "query string"),
    ("num_beams=99", "num_beams", "num_beams: must be in"),  # named as the caller sent it
    ("num_beams=x", "num_beams", "num_beams: must be a whole number"),
    ("beam_size=99", "beam_size", "beam_size: must be in"),
    ("penalty_alpha=0.6", "penalty_alpha", "is not an option"),
])
def test_bad_custom_attributes_are_400_naming_the_field(client, media, attributes, field, words):
    response = invoke(client, media["speech.wav"].read_bytes(),
                      headers={ATTRIBUTES_HEADER: attributes})
    error = error_of(response, 400)
    assert error["field"] == field and words in error["message"]


def test_a_bad_num_beams_in_json_is_named_num_beams(client, media):
    body = {"audio_input": media["speech.wav"].read_bytes().hex(), "num_beams": 99}
    error = error_of(client.post("/invocations", json=body), 400)
    assert error["field"] == "num_beams" and "beam_size" not in error["message"]


def test_idempotency_key_returns_the_first_job_for_a_raw_body(client, media):
    body = media["speech.wav"].read_bytes()
    headers = {**FAST, "Idempotency-Key": "sagemaker-retry-1"}
    first = invoke(client, body, headers=headers)
    again = invoke(client, body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.headers["X-Job-Id"] == again.headers["X-Job-Id"]
    assert first.get_json() == again.get_json()
    other = invoke(client, media["speech.flac"].read_bytes(), "audio/flac", headers=headers)
    assert error_of(other, 409)["code"] == "key_reused"


def test_ping_is_readiness_without_a_key_and_invocations_need_one(checkpoint, tmp_path, media):
    app = make_app(checkpoint, tmp_path, WHISPER_API_KEYS="k1")
    client = app.test_client()
    try:
        loading = client.get("/ping")
        assert loading.status_code == 503 and loading.get_json()["status"] == "loading"
        error = error_of(invoke(client, media["speech.wav"].read_bytes()), 401)
        assert error["code"] == "api_key_required"
        service = app.extensions["whisper_service"]
        service.models.get(service.models.default)
        ready = client.get("/ping")
        assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
        keyed = invoke(client, media["speech.wav"].read_bytes(),
                       headers={**FAST, "Authorization": "Bearer k1"})
        assert keyed.status_code == 200 and "text" in keyed.get_json()
    finally:
        app.extensions["whisper_jobs"].stop()
