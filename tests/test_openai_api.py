"""The OpenAI-compatible /v1 endpoints through Flask's test client, and the pure mapping
from OpenAI's fields to TranscribeOptions."""

from __future__ import annotations

import json
import math
import re
import socket
import threading

import pytest
from werkzeug.datastructures import MultiDict

from werkzeug.serving import make_server

from conftest import make_app, wait_until
from web.http import sync
from web.api.openai_compat import GRANULARITY_FIELD, parse_request, transcript_events
from whisper_service.errors import BadOption
from whisper_service.options import DEFAULT_TEMPERATURES
from whisper_service.transcript import Segment, Transcript

# one greedy decode at temperature 0: a random-weight model would otherwise fall back
# through every temperature (seconds per call instead of a fraction of one)
FAST = {"language": "en", "temperature": "0", "temperature_increment_on_fallback": "0",
        "beam_size": "greedy"}
SEGMENT_KEYS = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                "compression_ratio", "no_speech_prob"}
SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n")
VTT_CUE = re.compile(r"^\d\d:\d\d\.\d\d\d --> \d\d:\d\d\.\d\d\d\n", re.M)
ALLOWED = ("tiny", "base")


# --- the mapping, without HTTP -----------------------------------------------------------


def parse(endpoint_task="transcribe", **fields):
    pairs = [(k, x) for k, v in fields.items() for x in (v if isinstance(v, list) else [v])]
    return parse_request(MultiDict(pairs), endpoint_task, "tiny", ALLOWED)


def refused_field(**fields) -> str:
    with pytest.raises(BadOption) as caught:
        parse(**fields)
    return caught.value.field


@pytest.mark.parametrize("fields, expected", [
    ({}, DEFAULT_TEMPERATURES),
    ({"temperature": "0"}, DEFAULT_TEMPERATURES),  # OpenAI: 0 means automatic fallback
    ({"temperature": "0.0"}, DEFAULT_TEMPERATURES),
    ({"temperature": "0.4"}, (0.4,)),  # any other value is used exactly
    ({"temperature": "1"}, (1.0,)),
    ({"temperature": "0", "temperature_increment_on_fallback": "0"}, (0.0,)),
    ({"temperature": "0.4", "temperature_increment_on_fallback": "0.2"}, (0.4, 0.6, 0.8, 1.0)),
])
def test_temperature_follows_openai_semantics(fields, expected):
    assert parse(**fields).options.temperature == expected


@pytest.mark.parametrize("value", ["0.2,0.4", "warm", "1.5", "-0.1", "nan"])
def test_temperature_must_be_one_number_from_0_to_1(value):
    assert refused_field(temperature=value) == "temperature"


def test_openai_fields_map_to_options():
    asked = parse(model="whisper-1", language="Korean", prompt="Glossary: Kubernetes.")
    assert asked.options.model == "tiny"  # whisper-1 is the default model
    assert asked.options.language == "ko"
    assert asked.options.initial_prompt == "Glossary: Kubernetes."
    assert asked.options.task == "transcribe"
    assert asked.response_format == "json"
    assert asked.granularities == ("segment",)
    assert asked.options.word_timestamps is False
    assert parse(model="base").options.model == "base"
    assert parse().options.model == "tiny"  # no model: the default, leniently
    assert parse("translate", language="de").options.task == "translate"


def test_our_extra_fields_pass_through():
    options = parse(beam_size="2", patience="2", best_of="3", condition_on_previous_text="false",
                    word_timestamps="true", max_line_width="30").options
    assert (options.beam_size, options.patience, options.best_of) == (2, 2.0, 3)
    assert options.condition_on_previous_text is False
    assert options.layout.max_line_width == 30
    assert parse(beam_size="greedy").options.beam_size is None


def test_word_granularity_turns_on_word_timestamps():
    asked = parse(response_format="verbose_json", **{GRANULARITY_FIELD: ["word", "segment"]})
    assert asked.options.word_timestamps is True
    assert asked.granularities == ("word", "segment")
    assert parse(response_format="verbose_json", **{GRANULARITY_FIELD: "segment"}) \
        .options.word_timestamps is False


@pytest.mark.parametrize("fields, field", [
    ({"model": "gpt-4o-transcribe"}, "model"),
    ({"response_format": "xml"}, "response_format"),
    ({"response_format": "diarized_json", "diarize": "false"}, "diarize"),  # it asks for speakers
    ({"response_format": "diarized_json", "endpoint_task": "translate"}, "response_format"),
    ({GRANULARITY_FIELD: "word"}, GRANULARITY_FIELD),  # needs verbose_json
    ({GRANULARITY_FIELD: "sentence", "response_format": "verbose_json"}, GRANULARITY_FIELD),
    ({"stream": "true", "response_format": "srt"}, "stream"),  # events carry text
    ({"stream": "maybe"}, "stream"),  # as every other yes/no field: not taken as false
    ({"include[]": "logprobs"}, "include[]"),
    ({"task": "translate"}, "task"),
    ({"initial_prompt": "hello"}, "initial_prompt"),
    ({"beamsize": "2"}, "beamsize"),  # a typo is refused, not dropped
    ({"beam_size": "99"}, "beam_size"),
])
def test_refusals_name_the_field(fields, field):
    assert refused_field(**fields) == field


def test_unknown_model_lists_the_choices():
    with pytest.raises(BadOption, match="choose one of whisper-1, tiny, base"):
        parse(model="gpt-4o-transcribe")


def test_openai_only_fields_that_change_nothing_are_ignored():
    asked = parse(stream="false", chunking_strategy="auto", keywords="Kubernetes",
                  **{"chunking_strategy[type]": "server_vad", "known_speaker_names[]": "agent",
                     "languages[]": "en"})
    assert asked.options.temperature == DEFAULT_TEMPERATURES
    assert not asked.stream


def test_stream_true_asks_for_events():
    assert parse(stream="true").stream and parse(stream="true", response_format="text").stream


def _said(*texts: str) -> Transcript:
    segments = tuple(Segment(id=i, seek=0, start=i, end=i + 1, text=text, tokens=(),
                             temperature=0.0, avg_logprob=0.0, compression_ratio=1.0,
                             no_speech_prob=0.0) for i, text in enumerate(texts))
    return Transcript(task="transcribe", language="en", language_probability=1.0,
                      duration=len(texts), model="m", text="".join(texts), segments=segments)


def _deltas(events):
    events = list(events)
    assert events[-1]["type"] == "transcript.text.done"
    return [e["delta"] for e in events[:-1]], events[-1]["text"]


def test_events_of_a_done_job_go_on_from_what_the_deltas_sent():
    transcript = _said(" One two.", " Three four.", " Five.")
    assert _deltas(transcript_events(transcript)) == (
        ["One two.", " Three four.", " Five."], "One two. Three four. Five.")
    # sent while it ran: the first segment and part of the second (stripped as done is)
    assert _deltas(transcript_events(transcript, "One two. Three")) == (
        [" four.", " Five."], "One two. Three four. Five.")
    assert _deltas(transcript_events(transcript, "One two. Three four. Five.")) == (
        [], "One two. Three four. Five.")
    # a done text that does not go on from what was sent: it alone has the last word
    assert _deltas(transcript_events(transcript, "One too.")) == ([], "One two. Three four. Five.")


@pytest.mark.parametrize("partial, sent, new", [
    ("", "", ""),
    (" Hello", "", "Hello"),
    (" Hello world. ", "Hello", " world."),  # no space after the last word: more may follow
    (" Hello world.", "Hello world.", ""),
    (" Goodbye", "Hello", ""),  # another attempt's text: nothing that contradicts the sent
])
def test_a_running_job_s_new_text(partial, sent, new):
    job = type("RunningJob", (), {"partial_text": partial})()
    assert sync._new_text(job, sent) == new


# --- over HTTP -----------------------------------------------------------------------------


def post(client, media_path, endpoint="transcriptions", headers=None, **fields):
    with open(media_path, "rb") as f:
        data = {"file": (f, media_path.name), "model": "whisper-1", **FAST, **fields}
        return client.post(f"/v1/audio/{endpoint}", data=data, headers=headers or {},
                           content_type="multipart/form-data")


def openai_error(response, status, param):
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return error


def test_json_and_text(client, app, media):
    response = post(client, media["speech.wav"])
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"text", "usage"}
    assert body["text"] and body["text"] == body["text"].strip()
    duration = app.extensions["whisper_jobs"].transcript(response.headers["X-Job-Id"]).duration
    assert body["usage"] == {"type": "duration", "seconds": math.ceil(duration)}  # billed up
    text = post(client, media["speech.wav"], response_format="text")
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert text.get_data(as_text=True) == body["text"] + "\n"  # greedy: the same words


def test_srt_and_vtt(client, media):
    srt = post(client, media["speech.wav"], response_format="srt")
    assert srt.status_code == 200
    assert srt.headers["Content-Type"] == "application/x-subrip; charset=utf-8"
    cues = srt.get_data(as_text=True).strip().split("\n\n")
    assert cues and all(SRT_CUE.match(cue) for cue in cues)
    vtt = post(client, media["speech.wav"], response_format="vtt")
    assert vtt.headers["Content-Type"] == "text/vtt; charset=utf-8"
    text = vtt.get_data(as_text=True)
    assert text.startswith("WEBVTT\n\n")
    assert len(VTT_CUE.findall(text)) == len(cues)


def test_verbose_json_has_openai_shape(client, app, media):
    response = post(client, media["speech.wav"], response_format="verbose_json")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"task", "language", "duration", "text", "segments", "usage"}
    assert (body["task"], body["language"]) == ("transcribe", "english")
    assert body["duration"] == pytest.approx(8.0, abs=0.5)
    assert body["segments"] and all(set(s) == SEGMENT_KEYS for s in body["segments"])
    assert [s["id"] for s in body["segments"]] == list(range(len(body["segments"])))
    assert all(s["temperature"] == 0.0 for s in body["segments"])
    assert body["text"] == "".join(s["text"] for s in body["segments"]).strip()
    # whisper-1 ran the default model, and the job is there to read again
    job = app.extensions["whisper_jobs"].get(response.headers["X-Job-Id"])
    assert job.options.model == app.extensions["whisper_service"].models.default == "tiny-test"


def test_word_granularity(client, media):
    both = post(client, media["speech.wav"], response_format="verbose_json",
                **{GRANULARITY_FIELD: ["word", "segment"]}).get_json()
    assert both["segments"] and both["words"]
    assert all(set(w) == {"word", "start", "end"} for w in both["words"])
    assert all(0 <= w["start"] <= w["end"] for w in both["words"])
    assert all(w["word"] == w["word"].strip() for w in both["words"])
    words_only = post(client, media["speech.wav"], response_format="verbose_json",
                      **{GRANULARITY_FIELD: "word"}).get_json()
    assert "segments" not in words_only and words_only["words"] == both["words"]


def test_translation(client, media):
    response = post(client, media["speech.wav"], endpoint="translations",
                    response_format="verbose_json")
    assert response.status_code == 200
    body = response.get_json()
    assert body["task"] == "translate"
    assert body["language"] == "english"
    assert "usage" not in body  # OpenAI's translations report none
    plain = post(client, media["speech.wav"], endpoint="translations").get_json()
    assert set(plain) == {"text"}


def test_request_errors_in_openai_shape(client, media):
    error = openai_error(post(client, media["speech.wav"], model="gpt-4o-transcribe"),
                         400, "model")
    assert "whisper-1" in error["message"] and error["code"] == "bad_option"
    openai_error(post(client, media["speech.wav"], response_format="xml"), 400,
                 "response_format")
    openai_error(post(client, media["speech.wav"], **{GRANULARITY_FIELD: "word"}), 400,
                 GRANULARITY_FIELD)
    openai_error(post(client, media["speech.wav"], stream="true", response_format="vtt"), 400,
                 "stream")
    assert "true or false" in openai_error(post(client, media["speech.wav"], stream="maybe"),
                                           400, "stream")["message"]
    missing = client.post("/v1/audio/transcriptions", data={"model": "whisper-1"},
                          content_type="multipart/form-data")
    assert "'file'" in openai_error(missing, 400, "file")["message"]


def test_errors_that_a_retry_cannot_mend_tell_the_client_not_to(app, client, media):
    from werkzeug.exceptions import Conflict

    refused = post(client, media["speech.wav"], model="gpt-4o-transcribe")
    assert refused.status_code == 400 and refused.headers["x-should-retry"] == "false"
    with app.test_request_context("/v1/audio/transcriptions", method="POST"):
        cancelled = app.handle_user_exception(Conflict("The job was cancelled."))
    # the openai client retries 409 by default, uploading the file again
    assert cancelled.status_code == 409 and cancelled.headers["x-should-retry"] == "false"
    with app.test_request_context("/api/v1/transcriptions", method="POST"):
        native = app.handle_user_exception(Conflict("The job was cancelled."))
    assert native.status_code == 409 and "x-should-retry" not in native.headers


def test_media_errors_in_openai_shape(client, media):
    error = openai_error(post(client, media["notes.mp3"]), 400, "file")  # as OpenAI answers
    assert error["code"] == "not_media"
    assert "'notes.mp3' is not an audio or video file" in error["message"]
    # OpenAI's clients expect 400 for an empty file (BadRequestError), as for any bad file
    assert openai_error(post(client, media["empty.wav"]), 400, "file")["code"] == "empty_media"
    assert openai_error(post(client, media["truncated.mp3"]), 400, "file")["code"] == "truncated_media"


def test_failed_job_is_raised_again(english_checkpoint, tmp_path, media):
    app = make_app(english_checkpoint, tmp_path)
    try:
        response = post(app.test_client(), media["speech.wav"], language="ko")
        error = openai_error(response, 400, "language")  # the option the failure blamed
        assert "English-only" in error["message"]
    finally:
        app.extensions["whisper_jobs"].stop()


def test_models(client, app):
    default = app.extensions["whisper_service"].models.default
    listing = client.get("/v1/models").get_json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]][:2] == ["whisper-1", default]
    assert all({k: m[k] for k in ("id", "object", "created", "owned_by")} ==
               {"id": m["id"], "object": "model", "created": 0, "owned_by": "whisper-service"}
               for m in listing["data"])
    # and what the menus show: the bundled models by what they are, all of them usable here
    labels = {m["id"]: (m["label"], m["available"], m["english_only"]) for m in listing["data"]}
    assert labels["bundled"] == ("tiny.en (bundled, English only)", True, True)
    assert labels["bundled-base"] == ("base (bundled, multilingual)", True, False)
    assert client.get("/v1/models/whisper-1").get_json()["id"] == "whisper-1"
    # the translation model is listed only when on hand: large-v3 would download 3 GB
    assert "large-v3" not in [m["id"] for m in listing["data"]]
    assert client.get("/v1/models/large-v3").status_code == 404
    openai_error(client.get("/v1/models/gpt-4o-transcribe"), 404, None)


def test_api_keys(checkpoint, tmp_path, media):
    app = make_app(checkpoint, tmp_path, WHISPER_API_KEYS="k1,k2")
    client = app.test_client()
    try:
        refused = post(client, media["speech.wav"])
        assert openai_error(refused, 401, None)["code"] == "api_key_required"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        openai_error(client.get("/v1/models", headers={"Authorization": "Bearer k3"}), 401, None)
        openai_error(client.get("/v1/models", headers={"Authorization": "k2"}), 401, None)
        accepted = post(client, media["speech.wav"], headers={"Authorization": "Bearer k2"})
        assert accepted.status_code == 200 and accepted.get_json()["text"]
        assert client.get("/healthz").status_code == 200
    finally:
        app.extensions["whisper_jobs"].stop()


def test_a_slow_json_answer_is_kept_alive_with_spaces_and_stays_json(
        checkpoint, tmp_path, long_speech, monkeypatch):
    monkeypatch.setattr(sync, "HEARTBEAT_SECONDS", 0.05)
    app = make_app(checkpoint, tmp_path, WHISPER_SYNC_TIMEOUT="0.05", WHISPER_MAX_UPLOAD_MB="50")
    try:
        response = post(app.test_client(), long_speech, response_format="verbose_json")
        assert response.status_code == 200 and response.mimetype == "application/json"
        raw = response.get_data()
        assert raw.startswith(b" ") and raw.lstrip().startswith(b"{")  # spaces, then JSON
        body = json.loads(raw)
        assert body["duration"] > 50 and body["segments"]
        assert response.headers["X-Accel-Buffering"] == "no"  # nginx passes the spaces on
        job = app.extensions["whisper_jobs"].get(response.headers["X-Job-Id"])
        assert job.state == "done"
    finally:
        app.extensions["whisper_jobs"].stop()


def test_a_slow_text_answer_waits_without_spaces(checkpoint, tmp_path, long_speech):
    app = make_app(checkpoint, tmp_path, WHISPER_SYNC_TIMEOUT="0.05", WHISPER_MAX_UPLOAD_MB="50")
    try:
        response = post(app.test_client(), long_speech, response_format="srt")
        assert response.status_code == 200
        assert SRT_CUE.match(response.get_data(as_text=True))  # the SRT, from its first byte
    finally:
        app.extensions["whisper_jobs"].stop()


@pytest.mark.parametrize("response_format", ["json", "srt"])
def test_past_the_sync_limit_the_answer_is_504_and_the_job_is_cancelled(
        checkpoint, tmp_path, long_speech, response_format):
    app = make_app(checkpoint, tmp_path, WHISPER_SYNC_TIMEOUT="0.05", WHISPER_SYNC_LIMIT="0.3",
                   WHISPER_MAX_UPLOAD_MB="50")
    queue = app.extensions["whisper_jobs"]
    queue.stop()  # the job cannot finish in time
    try:
        response = post(app.test_client(), long_speech, response_format=response_format)
        if response_format == "json":  # committed to 200 already: the error is the body
            assert response.status_code == 200
            error = json.loads(response.get_data())["error"]
        else:
            assert response.status_code == 504 and response.headers["x-should-retry"] == "false"
            error = response.get_json()["error"]
        assert error["code"] == "gateway_timeout" and "WHISPER_SYNC_LIMIT" in error["message"]
        job = queue.get(response.headers["X-Job-Id"]) if "X-Job-Id" in response.headers else None
        assert queue.queued_count() == 0  # nobody waits for it any more: cancelled
        assert job is None or job.state == "cancelled"
    finally:
        queue.stop()


def test_a_caller_that_leaves_cancels_its_job(checkpoint, tmp_path, long_speech):
    app = make_app(checkpoint, tmp_path, WHISPER_MAX_UPLOAD_MB="50")
    queue = app.extensions["whisper_jobs"]
    queue.stop()  # the job waits in the queue while its caller leaves
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body, boundary = encode_multipart(long_speech)
        with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
            sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: multipart/form-data; boundary=" + boundary +
                         b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            wait_until(lambda: queue.queued_count() == 1, what="the job to be queued")
        # the caller is gone: within a look or two its job is cancelled
        wait_until(lambda: queue.queued_count() == 0, 10, what="the job to be cancelled")
    finally:
        server.shutdown()


def encode_multipart(path):
    boundary = b"----test-boundary"
    body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n" + path.read_bytes() +
            b"\r\n--" + boundary + b"--\r\n")
    return body, boundary
