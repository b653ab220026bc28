"""What the live tests do on a WebSocket, once: connect to a server's address, make the PCM
they stream, send it (paced frames on /api/live, base64 appends on /v1/realtime) and
collect the events that come back."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import run_ffmpeg

FRAME_SECONDS = 0.25  # of audio in a frame, as the live page sends
REALTIME_RATE = 24000  # Hz of OpenAI Realtime's audio/pcm


def ws_url(server, path: str) -> str:
    """The WebSocket address of a path on a test server (anything with `base`)."""
    return server.base.replace("http://", "ws://") + path


def pcm_at_rates(source: Path, folder: Path, pad_seconds: float = 0.0,
                 rates: Sequence[int] = (16000, REALTIME_RATE)) -> Dict[int, bytes]:
    """The source audio as raw mono PCM16 at each rate, with pad_seconds of silence after it."""
    found = {}
    for rate in rates:
        target = folder / f"{source.stem}-{rate}.raw"
        padding = ("-af", f"apad=pad_dur={pad_seconds}") if pad_seconds else ()
        run_ffmpeg("-i", str(source), *padding, "-f", "s16le", "-ac", "1", "-ar", str(rate),
                   str(target))
        found[rate] = target.read_bytes()
    return found


def frames(pcm: bytes, rate: int, seconds: float = FRAME_SECONDS) -> List[bytes]:
    """The PCM16 cut into frames of `seconds` (the last one shorter)."""
    size = int(seconds * rate) * 2
    return [pcm[start:start + size] for start in range(0, len(pcm), size)]


def appends(pcm: bytes, seconds: float = 0.5, rate: int = REALTIME_RATE,
            whole: bool = True) -> List[str]:
    """input_audio_buffer.append events of `seconds` of the PCM16 each (whole: only whole ones)."""
    size = int(seconds * rate) * 2
    end = len(pcm) - size if whole else len(pcm)
    return [append(pcm[start:start + size]) for start in range(0, end, size)]


def append(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def send_paced(ws, data: bytes, frame: int, pace: float, then=None) -> threading.Thread:
    """Send the data in frames of `frame` bytes, `pace` seconds apart, then `then` (if any),
    from a thread of its own (returned, started)."""
    def send():
        for start in range(0, len(data), frame):
            ws.send(data[start:start + frame])
            time.sleep(pace)
        if then is not None:
            ws.send(then)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def read_until(ws, kind: str, timeout: float = 120, events: Optional[list] = None) -> list:
    """The events (appended to `events`, if given) up to and including the first of `kind`."""
    events = [] if events is None else events
    deadline = time.monotonic() + timeout
    while True:
        event = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        events.append(event)
        if event["type"] == kind:
            return events


def events_until(ws, done: threading.Event, events: list, poll: float = 0.2) -> None:
    """Collect the events that come until `done` is set."""
    while not done.is_set():
        try:
            events.append(json.loads(ws.recv(timeout=poll)))
        except TimeoutError:
            pass


def closed_with(ws) -> tuple:
    """The close code and reason the server closed with (after its last message)."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=30)
    return closed.value.rcvd.code, closed.value.rcvd.reason


def realtime_transcription(connection, model: str, language: str = "en",
                           rate: int = REALTIME_RATE) -> None:
    """Make an OpenAI SDK Realtime connection a transcription session of PCM at `rate`."""
    connection.session.update(session={
        "type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate},
                            "transcription": {"model": model, "language": language}}},
    })


def send_appends(connection, pcm: bytes, pace: float, then: Callable[[], None] = lambda: None,
                 rate: int = REALTIME_RATE) -> threading.Event:
    """From a thread: the PCM16 as FRAME_SECONDS appends on an OpenAI SDK Realtime
    connection, `pace` seconds apart, then `then()`; the event set once all is sent."""
    sent = threading.Event()

    def send():
        for frame in frames(pcm, rate):
            connection.input_audio_buffer.append(audio=base64.b64encode(frame).decode())
            time.sleep(pace)
        then()
        sent.set()

    threading.Thread(target=send, daemon=True).start()
    return sent
