"""Live captions over the production server (gunicorn behind nginx, the bundled tiny.en):
the native protocol from a plain WebSocket client, OpenAI Realtime from the official SDK,
and what bad input, too many sessions, a minute of silence and the length limit get."""

from __future__ import annotations

import contextlib
import json
import re
import threading

import pytest
import requests
from openai import OpenAI
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import LIVE_SESSIONS, make_app, serving, wait_until
from live_ws import (
    closed_with, pcm_at_rates, read_until, realtime_transcription, send_appends, send_paced, ws_url,
)
from whisper_service.checkpoints import BUNDLED

FRAME_BYTES = 8000  # 0.25 s of 16 kHz PCM16
PACE_SECONDS = 0.1  # between frames: 2.5 times real time
HEARD = {"quick", "brown", "fox", "lazy", "dog", "whisper", "speech", "text", "sentence"}


@pytest.fixture(scope="module")
def server(live_server):
    """conftest's live server: LIVE_SESSIONS sessions of at most a minute, tiny.en."""
    return live_server


@pytest.fixture(scope="module")
def pcm(media, tmp_path_factory):
    """conftest's speech (two sentences, about 8 s) as raw PCM16: 16 kHz and 24 kHz."""
    return pcm_at_rates(media["speech.wav"], tmp_path_factory.mktemp("live-pcm"), pad_seconds=1.5)


def words_heard(text: str) -> set:
    return HEARD & set(re.findall(r"[a-z]+", text.lower()))


def test_native_protocol_partials_commits_and_a_finished_job(server, pcm):
    with connect(ws_url(server, "/api/live?language=en")) as ws:
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["sample_rate"] == 16000
        assert ready["max_frame_bytes"] == 32000 and ready["model"] == BUNDLED
        send_paced(ws, pcm[16000], FRAME_BYTES, PACE_SECONDS, then=json.dumps({"type": "stop"}))
        events = read_until(ws, "done")
        assert closed_with(ws) == (1000, "session ended")
    kinds = [e["type"] for e in events]
    assert kinds.index("speech_started") < kinds.index("committed")
    assert any(e["type"] == "partial" and e["text"].strip() for e in events)
    committed = "".join(e["text"] for e in events if e["type"] == "committed")
    assert len(words_heard(committed)) >= 4, committed
    done = events[-1]
    assert done["text"] == committed.strip() and done["url"] == f"/jobs/{done['job']}"
    assert all(e["start"] < e["end"] for e in events if e["type"] == "committed")

    job = requests.get(f"{server.base}/api/v1/jobs/{done['job']}", timeout=10).json()
    assert job["state"] == "done" and job["filename"].startswith("live-")
    srt = requests.get(f"{server.base}/jobs/{done['job']}/transcript.srt", timeout=10)
    assert srt.status_code == 200
    cues = srt.text.strip().split("\n\n")
    assert cues and all(re.match(r"\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+", c)
                        for c in cues)
    assert words_heard(srt.text) == words_heard(committed)
    recording = requests.get(f"{server.base}/jobs/{done['job']}/media", timeout=10)
    assert recording.status_code == 200 and recording.content[:4] == b"RIFF"
    # the whole stream was recorded: 16 kHz PCM16 after a 44-byte header
    assert len(recording.content) - 44 == len(pcm[16000])


def test_openai_realtime_sdk_gets_deltas_and_completed(server, pcm):
    client = OpenAI(base_url=f"{server.base}/v1", api_key="anything", max_retries=0)
    audio = pcm[24000]
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        realtime_transcription(connection, "gpt-4o-transcribe")
        sent = send_appends(connection, audio, PACE_SECONDS)  # 0.25 s appends
        watchdog = threading.Timer(180, connection.close)  # recv() has no timeout of its own
        watchdog.start()
        events, completed, items = [], [], []
        try:
            # every utterance committed is completed, once the audio is all sent
            while not (sent.is_set() and items and len(completed) == len(items)):
                events.append(connection.recv())
                if events[-1].type == "input_audio_buffer.committed":
                    items.append(events[-1].item_id)
                if events[-1].type == "conversation.item.input_audio_transcription.completed":
                    completed.append(events[-1])
        finally:
            watchdog.cancel()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["session.created", "session.updated"]
    assert events[1].session.audio.input.transcription.language == "en"
    assert "input_audio_buffer.speech_started" in kinds
    assert "input_audio_buffer.committed" in kinds
    deltas = [e for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    assert deltas and all(e.item_id.startswith("item_") for e in deltas)
    assert [e.item_id for e in completed] == items  # in order, each once
    for done in completed:  # the deltas of an item, appended, are its transcript
        assert "".join(e.delta for e in deltas if e.item_id == done.item_id).strip() == done.transcript
    assert len(words_heard(" ".join(e.transcript for e in completed))) >= 3
    # the session is kept once the client leaves: its recording is the 24 kHz stream at 16 kHz
    job = events[0].session.id.removeprefix("sess_")
    wait_until(lambda: requests.get(f"{server.base}/api/v1/jobs/{job}", timeout=10).ok, 60,
               what="the Realtime session's job")
    recording = requests.get(f"{server.base}/jobs/{job}/media", timeout=10).content
    assert abs((len(recording) - 44) - len(audio) * 2 // 3) <= 4


def test_realtime_errors_name_the_problem_and_the_session_goes_on(server):
    with connect(ws_url(server, "/v1/realtime?intent=transcription")) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"

        def answer(message) -> dict:
            ws.send(json.dumps(message))
            return json.loads(ws.recv(timeout=30))

        error = answer({"type": "response.create", "event_id": "e1"})["error"]
        assert error["code"] == "unknown_event" and error["event_id"] == "e1"
        assert "input_audio_buffer.append" in error["message"]
        error = answer({"type": "input_audio_buffer.append", "audio": "not base64!"})["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "audio")
        error = answer({"type": "input_audio_buffer.commit"})["error"]
        assert error["code"] == "input_audio_buffer_commit_empty"
        error = answer({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 16000}}}}})["error"]
        assert error["code"] == "unsupported_format" and "24000" in error["message"]
        error = answer({"type": "transcription_session.update",
                        "session": {"input_audio_transcription": {"language": "klingon"}}})["error"]
        assert error["param"] == "session.input_audio_transcription.language"
        updated = answer({"type": "transcription_session.update",
                          "session": {"input_audio_transcription": {"model": "whisper-1",
                                                                    "language": "en"}}})
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["input_audio_transcription"]["language"] == "en"
        assert answer({"type": "input_audio_buffer.clear"})["type"] == "input_audio_buffer.cleared"


def test_bad_frames_get_errors_and_an_oversized_one_ends_the_session_kept(server, pcm):
    with connect(ws_url(server, "/api/live")) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(pcm[16000][:8001])  # an odd number of bytes
        error = json.loads(ws.recv(timeout=30))
        assert (error["type"], error["code"]) == ("error", "bad_frame")
        assert "8001" in error["message"]
        ws.send("hello")
        assert json.loads(ws.recv(timeout=30))["code"] == "bad_frame"
        ws.send(pcm[16000][:16000])  # a good frame: the session goes on
        ws.send(b"\0" * 40000)  # 1.25 s: more than a frame may hold
        events = read_until(ws, "done")
        assert closed_with(ws) == (1009, "frame_too_large")
    errors = [e for e in events if e["type"] == "error"]
    assert errors[-1]["code"] == "frame_too_large" and "32000 bytes" in errors[-1]["message"]
    # what came before is kept
    job = requests.get(f"{server.base}/api/v1/jobs/{events[-1]['job']}", timeout=10).json()
    assert job["state"] == "done"


def test_one_session_too_many_is_closed_at_once_and_the_server_goes_on(server):
    url = ws_url(server, "/api/live")
    wait_until(lambda: "whisper_live_sessions 0\n" in requests.get(f"{server.base}/metrics",
                                                                  timeout=10).text,
               60, what="the shared server's other sessions to end")
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(url)) for _ in range(LIVE_SESSIONS)]
        for ws in held:
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        with connect(url) as extra:
            error = json.loads(extra.recv(timeout=30))
            assert (error["type"], error["code"]) == ("error", "too_many_sessions")
            assert f"{LIVE_SESSIONS} live session" in error["message"]
            assert closed_with(extra) == (1013, "too_many_sessions")
        metrics = requests.get(f"{server.base}/metrics", timeout=10).text
        assert f"whisper_live_sessions {LIVE_SESSIONS}\n" in metrics
        assert f"whisper_live_sessions_limit {LIVE_SESSIONS}\n" in metrics
        held[0].send(json.dumps({"type": "stop"}))
        assert read_until(held[0], "done")[-1]["job"] is None  # nothing was sent: nothing kept
        held[0].close()
        with connect(url) as again:  # the freed place is taken again
            assert json.loads(again.recv(timeout=30))["type"] == "ready"
        assert requests.get(f"{server.base}/healthz", timeout=10).status_code == 200


def test_a_minute_of_silence_gives_no_text_and_the_length_limit_ends_it(server):
    with connect(ws_url(server, "/api/live")) as ws:
        ready = json.loads(ws.recv(timeout=30))
        assert ready["max_seconds"] == 60
        # 1 s frames at 4 times real time: as fast as the server takes audio (with 10 s ahead)
        send_paced(ws, b"\0" * 32000 * 61, frame=32000, pace=0.25)
        events = read_until(ws, "done")
        assert closed_with(ws) == (1000, "session_too_long")
    kinds = {e["type"] for e in events}
    assert kinds == {"error", "done"}, events  # no speech, no partial, no text
    assert events[0]["code"] == "session_too_long" and "1 minutes" in events[0]["message"]
    assert events[-1]["text"] == ""
    recording = requests.get(f"{server.base}/jobs/{events[-1]['job']}/media", timeout=10)
    assert len(recording.content) - 44 == 60 * 32000  # exactly the limit was kept


def test_a_bad_option_is_refused_naming_it(server):
    with connect(ws_url(server, "/api/live?beam_size=99&model=bundled")) as ws:
        error = json.loads(ws.recv(timeout=30))
        assert (error["code"], error["param"]) == ("bad_option", "beam_size")
        assert closed_with(ws)[0] == 1008


def test_plain_http_to_a_websocket_address_is_told_so(server):
    for path, shape in (("/api/live", "code"), ("/v1/realtime", "type")):
        answer = requests.get(server.base + path, timeout=10)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == "websocket_mismatch" and shape in error
        assert "WebSocket client (ws:// or wss://)" in error["message"]


@pytest.fixture(scope="module")
def keyed_server(checkpoint, tmp_path_factory):
    """The app with an API key, served in-process (no model is loaded: nothing is said)."""
    app = make_app(checkpoint, tmp_path_factory.mktemp("live-keys"), WHISPER_API_KEYS="sesame")
    with serving(app) as base:
        yield base.replace("http://", "ws://")


@pytest.mark.parametrize("path", ["/api/live", "/v1/realtime?intent=transcription"])
def test_api_keys_apply_to_both_protocols(keyed_server, path):
    with pytest.raises(InvalidStatus) as refused:
        connect(keyed_server + path)
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus):  # a browser of another site, with no key
        connect(keyed_server + path, origin="http://evil.example")
    with connect(keyed_server + path, additional_headers={"Authorization": "Bearer sesame"}) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] in ("ready", "session.created")
