"""stream=true on /v1/audio/transcriptions against the app served for real on loopback: the
official `openai` client reads the events, the bytes are OpenAI's event stream, deltas come
while the job runs (a window's text once it is decoded), and a caller that leaves
mid-stream does not leave its job running."""

from __future__ import annotations

import json
import time

import jsonschema_rs
import openai
import pytest
import requests
from openai import OpenAI
from whisper.model import TextDecoder

from conftest import make_app, serving, wait_finished
from web.api.openapi import document
from whisper_service.checkpoints import BUNDLED

# one greedy decode at temperature 0 (see test_openai_client.py)
FAST = {"temperature_increment_on_fallback": 0, "beam_size": "greedy"}
FORM = {"model": "whisper-1", "language": "en", "temperature": "0", "stream": "true",
        "temperature_increment_on_fallback": "0", "beam_size": "greedy"}
SLOW_DECODER_STEP = 0.05  # seconds added to each decoder call of the slow server


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    with serving(make_app(checkpoint, tmp_path_factory.mktemp("streaming-e2e"))) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server}/v1", api_key="anything", max_retries=0, timeout=60)


def stream_events(client, path):
    with open(path, "rb") as f:
        return list(client.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", temperature=0, stream=True,
            extra_body=FAST))


def open_stream(server, path):
    """A streaming request read by hand, and its first line (the comment sent at once)."""
    with open(path, "rb") as f:
        response = requests.post(f"{server}/v1/audio/transcriptions", data=FORM,
                                 files={"file": (path.name, f.read())}, stream=True, timeout=60)
    assert response.status_code == 200, response.text
    lines = response.iter_lines(decode_unicode=True)
    return response, lines, next(lines)


def test_the_openai_client_reads_deltas_then_done(client, media):
    events = stream_events(client, media["speech.wav"])
    *deltas, done = events
    assert deltas and all(isinstance(e, openai.types.audio.TranscriptionTextDeltaEvent)
                          and e.type == "transcript.text.delta" and e.delta for e in deltas)
    assert isinstance(done, openai.types.audio.TranscriptionTextDoneEvent)
    assert done.type == "transcript.text.done" and done.text.strip()
    assert "".join(e.delta for e in deltas) == done.text  # appended, the deltas are the text
    with open(media["speech.wav"], "rb") as f:  # the same text as without streaming
        plain = client.audio.transcriptions.create(model="whisper-1", file=f, language="en",
                                                   temperature=0, extra_body=FAST)
    assert plain.text == done.text


def test_the_bytes_are_an_event_stream(server, media):
    response, lines, first = open_stream(server, media["speech.wav"])
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    job_id = response.headers["X-Job-Id"]
    assert first.startswith(f": job {job_id} ")  # a comment at once: the answer has begun
    rest = list(lines)
    data = [json.loads(line[len("data: "):]) for line in rest if line.startswith("data: ")]
    assert [e["type"] for e in data][-1] == "transcript.text.done"
    assert {e["type"] for e in data[:-1]} == {"transcript.text.delta"}
    assert all(line == "" or line.startswith((":", "data: ")) for line in rest)  # nothing else
    components = document()["components"]
    documented = jsonschema_rs.Draft202012Validator(
        {**components["schemas"]["OpenAITranscriptionEvent"], "components": components})
    for event in data:
        documented.validate(event)
    status = requests.get(f"{server}/api/v1/jobs/{job_id}", timeout=10).json()
    assert status["state"] == "done"


def test_a_job_cancelled_mid_stream_ends_it_with_an_error_event(server, long_speech):
    response, lines, _ = open_stream(server, long_speech)
    job_id = response.headers["X-Job-Id"]
    assert requests.delete(f"{server}/api/v1/jobs/{job_id}", timeout=10).status_code == 204
    data = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert len(data) == 1 and data[0]["error"]["code"] == "conflict"
    assert "cancelled" in data[0]["error"]["message"]


@pytest.fixture
def endless_decoder(monkeypatch):
    """The model's decoder, in this process's servers, never finishes a step: a job ends
    only when it is cancelled (the checkpoint that lets a cancel in raises then). A job can
    then not win a race against noticing its caller left, however fast or slow it runs."""
    import threading

    from whisper_service import cancel

    released = threading.Event()  # after the test: a job still in there fails, not hangs

    def endless_forward(self, *args, **kwargs):
        while not released.is_set():
            cancel.checkpoint()
            time.sleep(0.01)
        raise RuntimeError("the endless decoder was released")

    monkeypatch.setattr(TextDecoder, "forward", endless_forward)
    yield
    released.set()


def test_a_caller_that_leaves_mid_stream_cancels_its_job(server, long_speech, endless_decoder):
    response, _, _ = open_stream(server, long_speech)
    job_id = response.headers["X-Job-Id"]
    response.close()  # the caller goes away while its job runs
    status = wait_finished(lambda: requests.get(f"{server}/api/v1/jobs/{job_id}",
                                                timeout=10).json(), "the abandoned job", 5)
    assert status["state"] == "cancelled"


@pytest.fixture
def slow_server(tmp_path, monkeypatch, one_torch_thread):
    """The bundled tiny.en (real words, so the text can be checked), each decoder call slowed
    so that a window takes seconds, and a window a batch in batched mode."""
    forward = TextDecoder.forward

    def slow_forward(self, *args, **kwargs):
        time.sleep(SLOW_DECODER_STEP)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TextDecoder, "forward", slow_forward)
    with serving(make_app(BUNDLED, tmp_path, WHISPER_BATCH_WINDOWS="1")) as base:
        yield base


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_deltas_come_as_windows_finish(slow_server, long_speech, mode):
    """The lecture is three windows: the first delta comes while the job still runs, and
    the deltas, appended, are the done event's text, the whole of it."""
    with open(long_speech, "rb") as f:
        response = requests.post(f"{slow_server}/v1/audio/transcriptions",
                                 data={**FORM, "mode": mode},
                                 files={"file": (long_speech.name, f.read())}, stream=True,
                                 timeout=120)
    assert response.status_code == 200, response.text
    job_id = response.headers["X-Job-Id"]
    deltas, done, at_first_delta = [], None, None
    for line in response.iter_lines(decode_unicode=True):
        if not line.startswith("data: "):
            continue
        event = json.loads(line[len("data: "):])
        assert "error" not in event, event
        if event["type"] == "transcript.text.delta":
            if at_first_delta is None:  # where the job is when its first text arrives
                at_first_delta = requests.get(f"{slow_server}/api/v1/jobs/{job_id}",
                                              timeout=10).json()
            deltas.append(event["delta"])
        else:
            done = event
    assert done is not None and done["type"] == "transcript.text.done"
    assert at_first_delta["state"] == "running" and at_first_delta["progress"] < 1, at_first_delta
    assert len(deltas) >= 2
    assert "".join(deltas) == done["text"]
    assert done["text"].lower().count("this sentence") == 3, done["text"]
    assert done["text"] == done["text"].strip()
