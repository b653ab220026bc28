"""No word lost at the edges of a live stream: real speech (espeak-ng, the bundled tiny.en)
through the production server's two live protocols, its final transcript held to the file
engine's transcript of the same audio.

The speech begins on the stream's first sample (its first words come before the speech
gate can open), has pauses that end utterances between its sentences, and stops on its last
word (no silence after it): the stream then ends by `stop` (/api/live), by
`input_audio_buffer.commit` (/v1/realtime) or by the client dropping the connection (the
session is kept as a job). Each time, the words at the start, at every utterance boundary
and at the end must all be there.

WER_BOUND: the word error rate between the live transcript and the file transcript
(openai-whisper's English normaliser) allowed. Measured on this speech with the bundled
tiny.en: 0.00 to 0.04 over the protocols (the live decodes see each utterance alone, with
the committed text before it as the prompt; the file engine sees 30 s windows), see
README "Live captions". The edge words are asserted one by one besides.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
import requests
from openai import OpenAI
from websockets.sync.client import connect

from bundled_model import spoken_wav, word_error_rate
from conftest import run_ffmpeg, wait_until
from live_ws import frames, pcm_at_rates, realtime_transcription, send_appends, ws_url

SENTENCES = (
    "Good morning, everyone, and thank you for joining.",
    "The committee met on Tuesday to discuss the budget for next year.",
    "Please remember to bring your identification to the appointment.",
    "The library will be closed on Monday for the public holiday.",
)
PAUSE_SECONDS = 1.0  # between sentences: the gate ends an utterance in each
WER_BOUND = 0.1
FIRST_WORDS = ("good", "morning", "everyone")  # before the gate opens: the stream's start
LAST_WORDS = ("public", "holiday")  # right before the stream ends
BOUNDARY_WORDS = ("joining", "committee", "year", "please", "appointment", "library")
PACE_SECONDS = 0.25  # between frames of 0.25 s: real time, as a microphone sends


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """The sentences with pauses, from the first sample to the last word: a WAV (what the
    file engine gets) and its PCM16 at 16 and 24 kHz."""
    folder = tmp_path_factory.mktemp("live-edges")
    # each sentence spoken alone with its pause after it, joined by ffmpeg, the silence
    # at both ends of the whole cut off
    parts = []
    for index, sentence in enumerate(SENTENCES):
        part = folder / f"part{index}"
        part.mkdir()
        parts.append(spoken_wav(sentence, part, after=PAUSE_SECONDS if index < len(SENTENCES) - 1 else 0))
    wav = folder / "speech.wav"
    inputs = [arg for path in parts for arg in ("-i", str(path))]
    run_ffmpeg(*inputs, "-filter_complex",
               "".join(f"[{i}:a]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1,"
               "silenceremove=start_periods=1:start_threshold=-60dB,areverse,"
               "silenceremove=start_periods=1:start_threshold=-60dB,areverse",
               "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", str(wav))
    return {"wav": wav, "pcm": pcm_at_rates(wav, folder)}


@pytest.fixture(scope="module")
def file_text(server, speech):
    """What the file engine says about the same audio."""
    answer = requests.post(server.base + "/v1/audio/transcriptions", timeout=300,
                           data={"language": "en", "response_format": "json"},
                           files={"file": ("speech.wav", speech["wav"].read_bytes())})
    assert answer.status_code == 200, answer.text
    text = answer.json()["text"]
    assert all(w in words(text) for w in FIRST_WORDS + LAST_WORDS), text
    return text


def words(text: str) -> list:
    return re.findall(r"[a-z]+", text.lower())


def assert_every_word_kept(live: str, file_text: str) -> None:
    heard = words(live)
    for word in FIRST_WORDS + BOUNDARY_WORDS + LAST_WORDS:
        assert word in heard, f"{word!r} lost: live {live!r}; file {file_text!r}"
    error_rate = word_error_rate(file_text, live)
    print(f"WER {error_rate:.3f}: live {live!r}; file {file_text!r}")  # shown with -s
    assert error_rate <= WER_BOUND, (live, file_text)


def native_session(server, speech, end) -> tuple:
    """Stream the speech to /api/live and end it with `end(ws)`; the events and the job."""
    events = []
    with connect(ws_url(server, "/api/live?language=en")) as ws:
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready"

        def read():
            try:
                while True:
                    events.append(json.loads(ws.recv(timeout=180)))
                    if events[-1]["type"] == "done":
                        return
            except Exception:  # closed: the events so far are what came
                return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for frame in frames(speech["pcm"][16000], 16000):
            ws.send(frame)
            time.sleep(PACE_SECONDS)
        end(ws)
        reader.join(200)
    return events, ready["session"]


def test_native_stop_right_after_the_last_word_keeps_every_word(server, speech, file_text):
    events, _ = native_session(server, speech, lambda ws: ws.send(json.dumps({"type": "stop"})))
    assert events and events[-1]["type"] == "done", events[-3:]
    committed = "".join(e["text"] for e in events if e["type"] == "committed")
    assert events[-1]["text"] == committed.strip()
    # the pauses ended utterances: the boundaries were crossed
    assert sum(e["type"] == "speech_stopped" for e in events) >= len(SENTENCES) - 1
    assert_every_word_kept(committed, file_text)


def test_a_dropped_connection_keeps_every_word_in_the_job(server, speech, file_text):
    def drop(ws):
        time.sleep(0.2)
        ws.close()  # no stop: the client is gone

    _, job = native_session(server, speech, drop)
    found = {}

    def finished() -> bool:
        answer = requests.get(f"{server.base}/api/v1/jobs/{job}", timeout=10)
        found.update(answer.json() if answer.ok else {})
        return answer.ok and found.get("state") == "done"

    wait_until(finished, 180, 0.5, what="the dropped session's job")
    text = requests.get(f"{server.base}/jobs/{job}/transcript.txt", timeout=10).text
    assert_every_word_kept(text, file_text)


def test_realtime_commit_at_the_end_keeps_every_word(server, speech, file_text):
    client = OpenAI(base_url=f"{server.base}/v1", api_key="anything", max_retries=0)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        realtime_transcription(connection, "whisper-1")
        # the last words, still being spoken, committed
        sent = send_appends(connection, speech["pcm"][24000], PACE_SECONDS,
                            then=connection.input_audio_buffer.commit)
        watchdog = threading.Timer(240, connection.close)
        watchdog.start()
        items, completed = [], {}

        def finished() -> bool:  # every item completed, the last one after the commit
            return (sent.is_set() and bool(items) and set(items) <= set(completed)
                    and LAST_WORDS[-1] in words(completed[items[-1]]))

        try:
            while not finished():
                try:
                    event = connection.recv()
                except Exception as error:  # the watchdog closed it: the last words never came
                    pytest.fail(f"no transcript with the last words ({error}): {completed}")
                if event.type == "input_audio_buffer.committed":
                    items.append(event.item_id)
                elif event.type == "conversation.item.input_audio_transcription.completed":
                    completed[event.item_id] = event.transcript
                elif event.type == "error":
                    pytest.fail(f"error event: {event.error}")
        finally:
            watchdog.cancel()
    assert len(items) >= len(SENTENCES)  # every pause ended an utterance, and the commit one
    assert_every_word_kept(" ".join(completed[item] for item in items), file_text)
