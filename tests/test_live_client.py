"""The live command line (`python -m whisper_service live`): its options refused in process,
its reading of the server's events and close codes against a small fake server, and the
real thing end to end: espeak-ng's speech streamed at real-time speed from a file to the
production server (gunicorn, nginx in front, the bundled tiny.en), committed words on
stdout and in -o's file, the job saved at the address it prints."""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import requests
from flask import Flask, request
from flask_sock import Sock

from bundled_model import spoken_wav
from conftest import FakeClock, serving
from e2e.server import free_port
from test_cli import call_cli
from whisper_service.cli import live_client
from whisper_service.cli.live_client import Captions, Paced, live_url, server_base

SPEECH = "Please remember to bring your umbrella tomorrow morning."
DISTINCT_WORDS = ("remember", "umbrella", "tomorrow", "morning")
SILENCE_AFTER_SECONDS = 1.0  # the end of the utterance is heard before the file ends
JOB_LINE = re.compile(r"^job: (http://\S+/jobs/([A-Za-z0-9_-]+))$", re.M)


def run_live(*args, timeout=60):
    """The command as a user runs it: a new process, its exit status and output."""
    return subprocess.run([sys.executable, "-m", "whisper_service", "live", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """About 3.5 s of espeak-ng's speech, then a second of silence, as a 16 kHz WAV."""
    return spoken_wav(SPEECH, tmp_path_factory.mktemp("live-client"), rate=16000,
                      after=SILENCE_AFTER_SECONDS, words_per_minute="160")


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args, said", [
    ((), "--server"),
    (("--server", "ftp://example.org"), "--server takes an http(s):// or ws(s):// address"),
    (("--server", "http://:8000"), "--server has no host"),
    (("--server", "http://127.0.0.1:8000", "--file", "/no/such/file.wav"), "no such file"),
    (("--server", "http://127.0.0.1:8000", "--format", "srt"), "--format saves a download: give -o FILE"),
    (("--server", "http://127.0.0.1:8000", "--task", "summarise"), "invalid choice: 'summarise'"),
    (("--server", "http://127.0.0.1:8000", "--format", "doc", "-o", "x.doc"), "invalid choice: 'doc'"),
    (("--server", "http://127.0.0.1:8000", "--file", "a.wav", "--device", "hw:1"), "not allowed with"),
])
def test_bad_options_are_refused_before_anything_starts(capsys, args, said):
    code, err = call_cli(capsys, "live", *args)
    assert code == live_client.EXIT_USAGE
    assert said in err
    assert "Traceback" not in err


def test_output_to_a_folder_is_refused(capsys, speech, tmp_path):
    code, err = call_cli(capsys, "live", "--server", "http://127.0.0.1:8000", "--file", speech,
                         "-o", tmp_path)
    assert code == live_client.EXIT_USAGE
    assert "is a folder" in err


def test_addresses():
    assert server_base("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert server_base("wss://captions.example.org/whisper/") == "https://captions.example.org/whisper"
    assert live_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/api/live"
    assert (live_url("https://example.org/w", model="tiny.en", language="en", task="translate")
            == "wss://example.org/w/api/live?model=tiny.en&language=en&task=translate")
    assert live_client.output_format("talk.srt", None) == "srt"
    assert live_client.output_format("talk.txt", None) is None  # the text shown, not a download
    assert live_client.output_format("talk.txt", "txt") == "txt"


def test_captions_print_committed_text_one_line_per_utterance():
    out, err = io.StringIO(), io.StringIO()
    captions = Captions(out, err)
    for event in ({"type": "speech_started", "at": 0.2}, {"type": "partial", "text": " Hello"},
                  {"type": "committed", "text": " Hello", "start": 0.2, "end": 0.6},
                  {"type": "committed", "text": " there.", "start": 0.6, "end": 1.0},
                  {"type": "partial", "text": ""}, {"type": "speech_stopped", "at": 1.5},
                  {"type": "committed", "text": " Again.", "start": 2.0, "end": 2.4},
                  {"type": "done", "job": "j", "url": "/jobs/j", "text": "Hello there. Again."}):
        captions(event)
    assert out.getvalue() == "Hello there.\nAgain.\n"
    assert err.getvalue() == ""  # not a terminal: no partials drawn
    assert captions.text() == "Hello there.\nAgain."


def test_paced_frames_come_at_real_time_speed():
    """On a fake clock: frame k is given out when its audio's end is due, and a consumer that
    fell behind gets the frames already due at once, without waiting again."""
    pcm = bytes(live_client.FRAME_BYTES * 3 + 100)
    clock = FakeClock()
    paced = Paced(pcm, clock=clock, sleep=clock.sleep)
    arrivals = []
    for frame in paced:
        arrivals.append((clock() - paced.started, len(frame)))
    assert [size for _, size in arrivals] == [live_client.FRAME_BYTES] * 3 + [100]
    assert arrivals[0][0] == pytest.approx(0.25)
    assert arrivals[-1][0] == pytest.approx(0.75 + 100 / 32000)
    assert [t for t, _ in arrivals] == pytest.approx([0.25, 0.5, 0.75, 0.75 + 100 / 32000])

    late = FakeClock()
    paced = Paced(pcm, clock=late, sleep=late.sleep)
    frames = iter(paced)
    next(frames)
    late.advance(0.6)  # the consumer was busy: the other frames are overdue
    assert len(list(frames)) == 3
    assert late.slept == [pytest.approx(0.25)]  # no waiting for frames already due
    assert late() - paced.started == pytest.approx(0.85)


def fake_ffmpeg(folder, pulse: str, alsa: str):
    """An `ffmpeg` that runs `pulse` or `alsa` (shell) by the input format it is given."""
    script = folder / "ffmpeg"
    script.write_text(f"""#!/bin/sh
case "$*" in
  *"-f pulse"*) {pulse} ;;
  *"-f alsa"*) {alsa} ;;
esac
""")
    script.chmod(0o755)
    return str(script)


def test_the_microphone_falls_back_from_pulseaudio_to_alsa(tmp_path, monkeypatch):
    ffmpeg = fake_ffmpeg(tmp_path, "echo 'default: Connection refused' >&2; exit 1",
                         f"{shutil.which('head')} -c 20000 /dev/zero")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no other ffmpeg to try
    audio = live_client.open_microphone(ffmpeg=ffmpeg)
    assert audio.command[audio.command.index("-f") + 1] == "alsa"
    assert [len(frame) for frame in audio] == [live_client.FRAME_BYTES, live_client.FRAME_BYTES, 4000]


def test_no_microphone_is_one_line_naming_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    ffmpeg = fake_ffmpeg(tmp_path, "echo 'default: Connection refused' >&2; exit 1",
                         "echo 'cannot open audio device hw:7 (No such file or directory)' >&2; exit 1")
    with pytest.raises(live_client.LiveError) as error:
        live_client.open_microphone("hw:7", ffmpeg=ffmpeg)
    assert str(error.value) == ("cannot open the microphone 'hw:7' (pulse: default: Connection refused; "
                                "alsa: cannot open audio device hw:7 (No such file or directory))")


# --- the server's answers, from a fake server --------------------------------------------------


@pytest.fixture(scope="module")
def fake_server():
    """/api/live that answers as the README says, chosen by the model asked for: `busy` is
    closed 1013 at once, `bad` gets bad_option and 1008, `drop` is closed without `done`,
    `behind` is told `audio_dropped` once (the session going on); any model but those
    echoes a committed word per second of audio, then `done`."""
    app = Flask(__name__)
    sock = Sock(app)

    @sock.route("/api/live")
    def live(ws):
        model = request.args.get("model")
        if request.headers.get("Authorization") != "Bearer right":
            ws.send(json.dumps({"type": "error", "code": "unauthorized", "message": "an API key is needed"}))
            ws.close(1008, "unauthorized")
            return
        if model == "busy":
            ws.close(1013, "too many live sessions")
            return
        if model == "bad":
            ws.send(json.dumps({"type": "error", "code": "bad_option", "message": "model 'bad' is not offered"}))
            ws.close(1008, "bad_option")
            return
        ws.send(json.dumps({"type": "ready", "session": "s", "sample_rate": 16000,
                            "max_frame_bytes": 32000, "max_seconds": 60, "model": model}))
        received = 0
        said = []
        while True:
            message = ws.receive()
            if isinstance(message, str):
                if json.loads(message)["type"] == "stop":
                    break
                continue
            received += len(message)
            if model == "drop" and received >= 16000:
                ws.close(1011, "oops")
                return
            if model == "behind" and received == len(message):
                ws.send(json.dumps({"type": "error", "code": "audio_dropped", "param": "audio",
                                    "message": "0.25 s of audio dropped: the decoder is 30 s "
                                               "of audio behind this session"}))
            if received % 32000 == 0:
                said.append(f" second{received // 32000}")
                ws.send(json.dumps({"type": "committed", "text": said[-1], "start": 0, "end": 1}))
        ws.send(json.dumps({"type": "speech_stopped", "at": received / 32000}))
        ws.send(json.dumps({"type": "done", "job": "fake", "url": "/jobs/fake", "text": "".join(said).strip()}))
        ws.close()

    @app.get("/api/v1/jobs/<job>/transcript.<fmt>")
    def transcript(job, fmt):
        return f"{fmt} of {job}\n"

    with serving(app) as base:
        yield base


@pytest.mark.parametrize("model, key, said", [
    ("busy", "right", "the server is busy: too many live sessions, try again later: "
                      "too many live sessions (close code 1013)"),
    ("bad", "right", "model 'bad' is not offered (bad_option)"),
    ("drop", "right", "the server failed (internal error): oops (close code 1011)"),
    ("any", "wrong", "an API key is needed (unauthorized)"),
])
def test_server_errors_are_one_line_and_exit_1(capsys, fake_server, speech, model, key, said):
    code, err = call_cli(capsys, "live", "--server", fake_server, "--file", speech,
                         "--model", model, "--api-key", key)
    assert code == live_client.EXIT_FAILED
    assert err.strip().splitlines()[-1] == f"error: {said}"


def test_an_error_that_comes_with_the_handshake_is_read(capsys, speech):
    """A server that refuses the session at once may send its error and close in the same
    packet as its 101 answer, and close the connection: the error is still what is said.
    (A raw server here, so that they always come together, as they do by chance under load.)"""
    import base64
    import hashlib
    import socket as sockets

    error = json.dumps({"type": "error", "code": "bad_option",
                        "message": "model 'bad' is not offered"}).encode()
    close = (1008).to_bytes(2, "big") + b"bad_option"
    listener = sockets.create_server(("127.0.0.1", 0))

    def refuse() -> None:
        probe, _ = listener.accept()  # the client reaches the port once before its WebSocket
        probe.close()
        connection, _ = listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(4096)
            key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.I).group(1)
            accept = base64.b64encode(hashlib.sha1(
                key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            connection.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                + bytes([0x81, len(error)]) + error + bytes([0x88, len(close)]) + close)
            connection.shutdown(sockets.SHUT_WR)
            connection.recv(4096)  # the client's close, or the end

    threading.Thread(target=refuse, daemon=True).start()
    with listener:
        code, err = call_cli(capsys, "live", "--server",
                             f"http://127.0.0.1:{listener.getsockname()[1]}",
                             "--file", speech, "--model", "bad")
    assert code == live_client.EXIT_FAILED
    assert err.strip().splitlines()[-1] == "error: model 'bad' is not offered (bad_option)"


def test_committed_text_the_job_and_a_download(capsys, fake_server, speech, tmp_path, monkeypatch):
    monkeypatch.setenv(live_client.API_KEY_VARIABLE, "right")
    code, err = call_cli(capsys, "live", "--server", fake_server, "--file", speech,
                         "-o", tmp_path / "talk.srt")
    assert code == 0, err
    assert f"job: {fake_server}/jobs/fake" in err
    assert (tmp_path / "talk.srt").read_text() == "srt of fake\n"


def test_audio_dropped_by_a_server_behind_is_a_warning_and_the_session_goes_on(
        capsys, fake_server, speech):
    code, err = call_cli(capsys, "live", "--server", fake_server, "--file", speech,
                         "--model", "behind", "--api-key", "right")
    assert code == 0, err
    assert f"job: {fake_server}/jobs/fake" in err and "error:" not in err


def test_ctrl_c_stops_the_session_and_waits_for_the_job(fake_server, speech):
    process = subprocess.Popen(
        [sys.executable, "-m", "whisper_service", "live", "--server", fake_server, "--file", str(speech),
         "--api-key", "right"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hung = threading.Timer(60, process.kill)  # a client that never prints fails, not hangs
    hung.start()
    assert process.stdout.read(len("second1")) == "second1"  # a second of audio has gone out
    hung.cancel()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopping: the server commits the rest" in err
    assert f"job: {fake_server}/jobs/fake" in err and "Traceback" not in err
    assert "second4" not in out  # stopped before the end of the 4.5 s file


def test_stream_gives_events_and_the_result(fake_server):
    events = []
    result = live_client.stream(fake_server, Paced(bytes(32000 * 2)), api_key="right", model="m",
                           on_event=events.append)
    assert [e["type"] for e in events] == ["ready", "committed", "committed", "speech_stopped", "done"]
    assert result.committed == [" second1", " second2"]
    assert (result.job, result.url, result.text) == ("fake", fake_server + "/jobs/fake", "second1 second2")
    assert result.error is None


def test_an_unreachable_server_is_one_line_and_exit_1(speech):
    port = free_port()  # nothing listens there
    done = run_live("--server", f"http://127.0.0.1:{port}", "--file", speech)
    assert done.returncode == live_client.EXIT_FAILED
    assert done.stderr.strip().splitlines() == [
        f"error: cannot reach the server at 127.0.0.1:{port}: Connection refused"]
    assert done.stdout == ""


# --- end to end ------------------------------------------------------------------------------


def test_a_file_streamed_live_comes_out_as_text_and_a_job(live_server, speech, tmp_path):
    output = tmp_path / "talk.txt"
    # a fresh server's first live decodes are slow (numba compiles whisper's word timing):
    # seconds beyond the audio's 4.5, within run_live's timeout
    done = run_live("--server", live_server.base, "--file", speech, "--language", "en", "-o", output)
    assert done.returncode == 0, done.stderr + live_server.log.read_text()[-3000:]
    heard = [word for word in DISTINCT_WORDS if word in done.stdout.lower()]
    assert len(heard) >= 3, done.stdout
    assert done.stdout.endswith("\n") and "Traceback" not in done.stderr
    assert output.read_text(encoding="utf-8").strip() == done.stdout.strip()

    url, job_id = JOB_LINE.search(done.stderr).groups()
    assert url == f"{live_server.base}/jobs/{job_id}"
    assert requests.get(url, timeout=10).status_code == 200
    job = requests.get(f"{live_server.base}/api/v1/jobs/{job_id}", timeout=10).json()
    assert job["state"] == "done", job
    saved = requests.get(f"{live_server.base}/api/v1/jobs/{job_id}/transcript.txt", timeout=10).text
    assert all(word in saved.lower() for word in heard), saved
    srt = live_client.fetch_transcript(live_server.base, job_id, "srt", None).decode("utf-8")  # --format's path
    assert srt.startswith("1\n00:00:") and all(word in srt.lower() for word in heard), srt
