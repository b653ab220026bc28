"""A live session's backpressure: the intake (a multiple of real time, a bound on the audio
waiting for the decoder, drops reported at most once a second), the session's backlog it
reads and the WebSocket inbox that stops reading when full, each on its own; then the
settings over a connection to the app in-process."""

from __future__ import annotations

import json
import threading
import time
import wave

import numpy as np
import pytest
import requests
from websockets.sync.client import connect

from bundled_model import spoken_wav
from conftest import FakeClock, make_app, serving, wait_until
from web.live.socket import Inbox
from whisper_service.live.backpressure import REPORT_SECONDS, Intake, IntakeLimits
from whisper_service.live.session import LiveOptions, LiveSession

RATE = 16000


def read_pcm(path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768


def test_a_real_time_stream_is_never_dropped_even_after_a_stall():
    clock = FakeClock()
    intake = Intake(IntakeLimits(max_speed=4, burst_seconds=10), clock)
    for frame in range(4 * 600):  # ten minutes of 0.25 s frames, as spoken
        assert intake.admit(0.25, backlog_seconds=0.0)
        clock.advance(0.25)
        if frame == 1000:  # the network stalls 8 s, then the client catches up at once
            clock.advance(8)
            assert all(intake.admit(0.25, 0.0) for _ in range(32))
    assert intake.dropped_seconds == 0 and intake.report() is None


def test_a_tight_loop_gets_the_burst_then_max_speed_and_the_rest_is_dropped():
    clock = FakeClock()
    intake = Intake(IntakeLimits(max_speed=4, burst_seconds=10), clock)
    taken = [intake.admit(1.0, 0.0) for _ in range(100)]  # 100 s of audio at one instant
    assert taken.count(True) == 10 and taken[:10] == [True] * 10
    assert intake.dropped_seconds == 90
    clock.advance(1.0)
    assert [intake.admit(1.0, 0.0) for _ in range(10)].count(True) == 4  # 4x real time
    clock.advance(600)  # a long pause refills the bucket to the burst, no more
    assert [intake.admit(1.0, 0.0) for _ in range(100)].count(True) == 10


def test_audio_is_dropped_while_the_decoder_is_the_buffer_behind():
    clock = FakeClock()
    intake = Intake(IntakeLimits(max_speed=4, max_backlog_seconds=30), clock)
    assert intake.admit(0.5, backlog_seconds=29.9)
    assert not intake.admit(0.5, backlog_seconds=30.0)
    dropped = intake.report()
    assert dropped.reason == "behind" and dropped.seconds == 0.5
    assert "30 s of audio behind" in dropped.message and "neither transcribed nor recorded" \
        in dropped.message


def test_drops_are_reported_at_most_once_a_second_with_what_was_dropped_since():
    clock = FakeClock()
    intake = Intake(IntakeLimits(max_speed=2, burst_seconds=1), clock)
    assert intake.report() is None
    for _ in range(5):
        intake.admit(0.5, 0.0)
    first = intake.report()
    assert (first.reason, first.seconds, first.total_seconds) == ("too_fast", 1.5, 1.5)
    assert "at most 2x as fast as real time" in first.message
    for _ in range(10):
        intake.admit(0.5, 0.0)
        assert intake.report() is None  # within the second: nothing more is said
    clock.advance(REPORT_SECONDS)
    second = intake.report()
    assert second.seconds == 5.0 and second.total_seconds == 6.5
    assert intake.report() is None


def test_the_session_backlog_is_the_audio_waiting_for_the_decoder(tmp_path):
    speech = read_pcm(spoken_wav("The quick brown fox jumps over the lazy dog.", tmp_path,
                                 before=1.0, after=1.0))
    session = LiveSession(LiveOptions(), lambda event: None)
    assert session.backlog_seconds == 0
    for _ in range(3):  # three utterances, none decoded (no scheduler asks)
        for start in range(0, len(speech), RATE // 4):
            session.feed(speech[start:start + RATE // 4])
    waiting = session.backlog_seconds
    assert waiting > 3 * 2.0, waiting  # each holds its seconds of speech
    request = session.next_request()  # the first ended utterance goes to the decoder ...
    assert request.final
    assert session.backlog_seconds == pytest.approx(waiting)  # ... and waits till applied


def test_a_full_inbox_holds_its_reader_until_a_message_is_taken():
    inbox = Inbox(limit=2)
    inbox.append(b"1")
    inbox.append(b"2")
    appended = threading.Event()

    def reader():
        inbox.append(b"3")
        appended.set()

    threading.Thread(target=reader, daemon=True).start()
    time.sleep(0.3)
    assert not appended.is_set() and len(inbox) == 2  # the reader waits: no socket read
    assert inbox.pop(0) == b"1"
    wait_until(appended.is_set, 5, what="the reader to go on")
    assert list(inbox) == [b"2", b"3"]


def test_a_shut_inbox_ends_its_reader():
    inbox = Inbox(limit=1)
    inbox.append(b"1")
    failed = []

    def reader():
        try:
            inbox.append(b"2")
        except OSError as error:  # what ends simple-websocket's reading thread
            failed.append(error)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.2)
    inbox.shut()
    thread.join(5)
    assert not thread.is_alive() and failed and list(inbox) == [b"1"]
    with pytest.raises(OSError):
        inbox.append(b"3")


def test_the_settings_set_the_limits_and_what_is_dropped_is_not_recorded(checkpoint, tmp_path):
    """WHISPER_LIVE_MAX_SPEED over a real connection (in-process, no model: silence only)."""
    app = make_app(checkpoint, tmp_path, WHISPER_LIVE_MAX_SPEED="1")
    with serving(app) as base, connect(base.replace("http://", "ws://") + "/api/live",
                                       compression=None) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        began = time.monotonic()
        for _ in range(30):  # 30 s of silence at once: the 10 s burst is taken, no more
            ws.send(b"\0" * 32000)
        ws.send(json.dumps({"type": "stop"}))
        events = []
        while not events or events[-1]["type"] != "done":
            events.append(json.loads(ws.recv(timeout=30)))
        elapsed = time.monotonic() - began
        dropped = [e for e in events if e["type"] == "error"]
        assert [e["code"] for e in dropped] == ["audio_dropped"], events
        assert "at most 1x as fast as real time" in dropped[0]["message"]
        assert dropped[0]["param"] == "audio"
        media = requests.get(f"{base}/jobs/{events[-1]['job']}/media", timeout=30).content
    taken = (len(media) - 44) / 32000
    assert 10 <= taken <= 10 + elapsed + 1, (taken, elapsed)
