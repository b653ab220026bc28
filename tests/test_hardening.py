"""What an attack run found, one class at a time: uploads that are also HTML, names that
break headers, options that buy unbounded work, JSON of the wrong type or depth, waits that
pin threads, cancels that do not land, pages open beside API keys, server paths shown."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import threading
import time
import unicodedata
from pathlib import Path

import pytest
import whisper

from conftest import make_app, wait_until
from whisper_service import cancel
from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.config import bundled_ffmpeg
from whisper_service.queue.jobs import CANCEL_POLL_SECONDS, MAX_FILENAME_CHARS, JobQueue, JobState
from whisper_service.options import MAX_PROMPT_TOKENS, MAX_TEMPERATURES, TranscribeOptions

FAST = {"temperature": "0", "beam_size": "greedy", "language": "en"}
SCRIPT = b"<html><body><script>document.title = 'pwned by ' + document.cookie</script></body></html>"
LIMITS = DecodeLimits(max_duration=7200, timeout=600, ffmpeg=bundled_ffmpeg())
BIDI_OVERRIDE = "\u202e"  # makes 'talk\u202e3pm.exe' read 'talkexe.mp3'


def polyglot_wav(speech: Path) -> bytes:
    """A WAV file that ffmpeg decodes as speech and a browser parses as a page with a script:
    an HTML document in a LIST chunk ahead of the audio."""
    original = speech.read_bytes()
    assert original[:4] == b"RIFF" and original[8:12] == b"WAVE"
    payload = SCRIPT + (b" " if len(SCRIPT) % 2 else b"")
    chunk = b"LIST" + struct.pack("<I", len(payload)) + payload
    body = b"WAVE" + chunk + original[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def upload(client, data: bytes, name: str, **fields):
    return client.post("/jobs", data={
        "file": (io.BytesIO(data), name), "csrf_token": csrf(client), **FAST, **fields})


def csrf(client) -> str:
    page = client.get("/").get_data(as_text=True)
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def finished_job(app, response):
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    queue = app.extensions["whisper_jobs"]
    wait_until(lambda: queue.get(job_id).finished, 60, what="the job")
    return queue.get(job_id)


# --- 1. media is served by what it is, never by its name -----------------------------------


def test_an_upload_that_is_also_html_is_served_as_sandboxed_audio(app, client, media):
    job = finished_job(app, upload(client, polyglot_wav(media["speech.wav"]), "x.html"))
    assert job.state is JobState.DONE and job.media_type == "audio/wav"
    served = client.get(f"/jobs/{job.id}/media")
    assert served.status_code == 200
    assert served.mimetype == "audio/wav"  # from ffmpeg's demuxer, not from '.html'
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served.headers["Content-Security-Policy"]
    assert "attachment" not in served.headers.get("Content-Disposition", "")  # a player plays it
    assert SCRIPT in served.get_data()  # the bytes are the upload's, served as audio


@pytest.mark.parametrize("name", ["x.js", "x.svg", "speech.wav"])
def test_a_video_named_anything_is_served_as_video(app, client, media, name):
    job = finished_job(app, upload(client, media["speech.mp4"].read_bytes(), name))
    served = client.get(f"/jobs/{job.id}/media")
    assert served.mimetype == "video/mp4"
    assert "sandbox" in served.headers["Content-Security-Policy"]


def test_a_format_browsers_do_not_play_is_a_download(app, client, media, tmp_path):
    from conftest import run_ffmpeg

    aiff = tmp_path / "speech.aiff"
    run_ffmpeg("-i", str(media["speech.wav"]), str(aiff))
    job = finished_job(app, upload(client, aiff.read_bytes(), "notes.html"))
    served = client.get(f"/jobs/{job.id}/media")
    assert served.mimetype == "audio/aiff"
    assert served.headers["Content-Disposition"].startswith("attachment;")
    page = client.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert "<audio" not in page and "Download the upload" in page


def test_a_job_without_a_known_type_is_served_as_bytes_to_download(app, client, media):
    job = finished_job(app, upload(client, media["speech.wav"].read_bytes(), "a.html"))
    queue = app.extensions["whisper_jobs"]
    with queue.store._connect(write=True) as db:  # as a database written before types were kept
        db.execute("UPDATE jobs SET media_type = NULL WHERE id = ?", (job.id,))
    served = client.get(f"/jobs/{job.id}/media")
    assert served.mimetype == "application/octet-stream"
    assert served.headers["Content-Disposition"].startswith("attachment;")


def test_json_and_transcripts_carry_the_sandbox_policy_and_pages_their_own(app, client, media):
    job = finished_job(app, upload(client, media["speech.wav"].read_bytes(), "talk.wav"))
    for url in (f"/jobs/{job.id}/status", f"/jobs/{job.id}/transcript.srt",
                f"/api/v1/jobs/{job.id}", f"/api/v1/jobs/{job.id}/transcript.txt"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "sandbox" in response.headers["Content-Security-Policy"], url
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = client.get(f"/jobs/{job.id}")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


# --- 6. names ------------------------------------------------------------------------------


def test_names_lose_control_and_bidi_characters_and_are_capped(app, client, media):
    name = "talk\r\nSet-Cookie: x=1\x00" + BIDI_OVERRIDE + "3pm" + "é" * 5000 + ".wav"
    audio = base64.b64encode(media["speech.wav"].read_bytes()).decode()
    accepted = client.post("/api/v1/transcriptions", headers={"Prefer": "respond-async"},
                           json={"audio": audio, "filename": name, **FAST})
    assert accepted.status_code == 202
    job = finished_job(app, accepted)
    assert len(job.filename) <= MAX_FILENAME_CHARS and job.filename.endswith(".wav")
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in job.filename)
    page = client.get(f"/jobs/{job.id}").get_data(as_text=True)
    links = re.findall(r'href="(/jobs/[^"]+)"', page)
    assert f"/jobs/{job.id}/transcript.srt" in links
    assert all(len(link) < 80 for link in links)  # the name is never in a URL
    for url in (f"/jobs/{job.id}/transcript.srt", f"/api/v1/jobs/{job.id}/transcript.srt"):
        download = client.get(url)
        assert download.status_code == 200
        disposition = download.headers["Content-Disposition"]
        assert disposition.startswith('attachment; filename="talkSet-Cookie: x=1')
        assert not any(ord(c) < 32 or ord(c) == 127 for c in disposition)
        assert "%E2%80%AE" not in disposition  # the bidi override is gone, not encoded
        assert ".srt" in disposition and len(disposition) < 2000


# --- 3. bounded work -----------------------------------------------------------------------


@pytest.mark.parametrize("fields, field, words", [
    ({"temperature": ",".join(["0.5"] * 12)}, "temperature", f"at most {MAX_TEMPERATURES}"),
    ({"temperature": "0", "temperature_increment_on_fallback": "0.000000001"},
     "temperature_increment_on_fallback", "at least 0.1"),
    ({"initial_prompt": "word " * 60_000}, "initial_prompt", "at most 2000"),
    ({"initial_prompt": "日本語" * 300}, "initial_prompt", f"at most {MAX_PROMPT_TOKENS} tokens"),
])
def test_options_that_buy_unbounded_work_are_refused_naming_the_bound(app, client, media, fields,
                                                                       field, words):
    for url in ("/api/v1/transcriptions", "/invocations"):
        answer = client.post(url, data={"file": (io.BytesIO(b"x"), "a.wav"), **fields}) \
            if url.startswith("/api") else client.post(url, json={"audio_input": "00", **fields})
        assert answer.status_code == 400, answer.get_data(as_text=True)
        error = answer.get_json()["error"]
        assert error["field"] == field and words in error["message"]
        assert len(answer.get_data()) < 1000  # the answer does not grow with the request
    assert app.extensions["whisper_jobs"].queued_count() == 0


def test_the_openai_prompt_is_bounded_too(client):
    answer = client.post("/v1/audio/transcriptions", data={
        "file": (io.BytesIO(b"x"), "a.wav"), "prompt": "日本語" * 300})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["param"] == "initial_prompt"


def test_a_prompt_within_the_bound_is_taken(app, client, media):
    prompt = "meeting notes " * 40  # 80 tokens
    job = finished_job(app, upload(client, media["speech.wav"].read_bytes(), "t.wav",
                                   initial_prompt=prompt))
    assert job.state is JobState.DONE and job.options.initial_prompt == prompt
    status = client.get(f"/api/v1/jobs/{job.id}")
    assert len(status.get_data()) < 8000  # a status stays small whatever the options


# --- 4. types are types --------------------------------------------------------------------


@pytest.mark.parametrize("field, value, words", [
    ("initial_prompt", {"a": 1}, "must be a string; got an object"),
    ("initial_prompt", ["a", "b"], "must be a string; got a list"),
    ("beam_size", False, "must be a whole number; got true/false"),
    ("beam_size", [5], "must be a whole number; got a list"),
    ("patience", True, "must be a number; got true/false"),
    ("language", 5, "must be a string; got a number"),
    ("word_timestamps", 1, "must be true or false; got a number"),
    ("temperature", [0.0, {"t": 1}], "must be a number; got an object"),
    ("task", None, None),  # null keeps the default
])
def test_json_fields_of_the_wrong_type_are_400_naming_the_field(app, client, media, field,
                                                                 value, words):
    body = {"audio": "UklGRg==", field: value}
    answer = client.post("/api/v1/transcriptions", json=body)
    error = answer.get_json()["error"]
    if words is None:  # past the options, the file is what is wrong
        assert error["field"] == "file"
        return
    assert answer.status_code == 400 and error["field"] == field and words in error["message"]
    jumpstart = client.post("/invocations", json={"audio_input": "00", field: value})
    assert jumpstart.status_code == 400 and jumpstart.get_json()["error"]["field"] == field


@pytest.mark.parametrize("url", ["/api/v1/transcriptions", "/api/v1/detect-language",
                                 "/invocations"])
def test_json_nested_thousands_deep_is_400(client, url):
    deep = "[" * 100_000 + "]" * 100_000
    answer = client.post(url, data=deep, content_type="application/json")
    assert answer.status_code == 400
    assert "nested too deeply" in answer.get_json()["error"]["message"]


def test_a_chunked_json_body_over_the_size_limit_is_413(client):
    body = io.BytesIO(b'{"audio": "' + b"A" * (3 * 1024 * 1024) + b'"}')  # the limit is 2 MB
    for url in ("/api/v1/transcriptions", "/invocations"):
        body.seek(0)
        answer = client.post(url, input_stream=body, content_type="application/json",
                             headers={"Transfer-Encoding": "chunked"},
                             environ_overrides={"wsgi.input_terminated": True})
        assert answer.status_code == 413, answer.get_data(as_text=True)
        assert answer.get_json()["error"]["code"] == "request_entity_too_large"


# --- 3. cancel lands within a model step ---------------------------------------------------


PACE_WAIT = 60.0  # the most a poll waits for a step, or a step for a poll: never reached


class PolledStore:
    """The queue's store, whose heartbeat polls (a running job's look for a cancel from
    another process, every CANCEL_POLL_SECONDS) pace EndlessService: each poll lets one step
    run and waits for it. A cancel's cost is counted in steps and polls, the same on a
    loaded machine as on a quiet one; the period of the polls is what turns it into time."""

    def __init__(self, store):
        self._store = store
        self._turn = threading.Condition()
        self.polls = 0
        self.answered = 0  # the polls the job has taken a step for
        self.running = True
        self.answers = []  # the ids each poll found still wanted

    def __getattr__(self, name):
        return getattr(self._store, name)

    def heartbeat(self, job_ids, token, lease_seconds):
        wanted = self._store.heartbeat(job_ids, token, lease_seconds)
        with self._turn:
            self.polls += 1
            self.answers.append(list(wanted))
            self._turn.notify_all()
            self._turn.wait_for(lambda: self.answered >= self.polls or not self.running, PACE_WAIT)
        return wanted

    def next_poll(self) -> None:
        """A step was taken: let the poll that asked for it go on, wait for the next one."""
        with self._turn:
            self.answered = self.polls
            self._turn.notify_all()
            after = self.polls
            self._turn.wait_for(lambda: self.polls > after, PACE_WAIT)

    def done(self) -> None:
        with self._turn:
            self.running = False
            self._turn.notify_all()


class EndlessService:
    """Transcribes for ever, one 'decoder step' after each poll of the store, as a long job
    would; notes the step and the poll at which a checkpoint stopped it."""

    def __init__(self):
        self.started = threading.Event()
        self.steps = 0
        self.store = None  # the PolledStore
        self.stopped_at = None  # (steps, polls) when stopped

    def check_upload(self, path, options, display_name=None):
        return None

    def share_key(self, options):
        return None

    def prefetch(self, path, display_name=None):
        pass

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        self.started.set()
        try:
            while True:  # no progress report ever: only a step-level check can stop it
                cancel.checkpoint()
                self.steps += 1
                self.store.next_poll()
        except cancel.Cancelled:
            self.stopped_at = (self.steps, self.store.polls)
            raise
        finally:
            self.store.done()


@pytest.mark.parametrize("how", ["cancel here", "cancel from another process", "delete"])
def test_cancel_stops_a_running_job_within_a_second(tmp_path, how):
    """In this process a cancel or delete stops the job at its next step; from another
    process, the first poll that finds it cancelled stops it at the step that poll allows,
    two poll periods at most after it was asked: within a second."""
    assert 2 * CANCEL_POLL_SECONDS <= 1.0
    service = EndlessService()
    queue = JobQueue(str(tmp_path), service)
    queue.store = service.store = PolledStore(queue.store)
    queue.start()
    try:
        job = queue.submit(io.BytesIO(b"audio"), "long.wav", TranscribeOptions())
        assert service.started.wait(PACE_WAIT)
        if how == "cancel here":
            queue.cancel(job.id)
        elif how == "cancel from another process":  # its own queue object: no shared event
            JobQueue(str(tmp_path), service).cancel(job.id)
        else:
            queue.delete(job.id)
        steps, polls = service.steps, service.store.polls
        wait_until(lambda: service.stopped_at and (queue.get(job.id) is None
                                                   or queue.get(job.id).finished),
                   PACE_WAIT, 0.01, "the job to stop")
        stopped_steps, stopped_polls = service.stopped_at
        if how == "cancel from another process":
            # the poll that first found it no longer wanted, then the step that poll allowed
            # (poll polls + 2 began after poll polls + 1 was counted, after the cancel)
            seen = next(n for n, wanted in enumerate(service.store.answers, 1) if job.id not in wanted)
            assert seen <= polls + 2, (polls, seen)
            assert stopped_polls == seen + 1, (seen, stopped_polls)
        else:  # the step under way when asked, if any, and no other
            assert stopped_polls - polls <= 1, (polls, stopped_polls)
            assert stopped_steps - steps <= 1, (steps, stopped_steps)
        time.sleep(0.2)
        assert service.steps == stopped_steps  # nothing runs any more
        if how != "delete":
            assert queue.get(job.id).state is JobState.CANCELLED
    finally:
        queue.stop(timeout=5)


def test_the_model_stops_between_steps_inside_whisper_itself(checkpoint, media):
    model = whisper.load_model(checkpoint, device="cpu")
    cancel.install(model)
    audio = decode_file(str(media["speech.wav"]), LIMITS)
    calls = 0

    def stop_at_the_fourth_call() -> bool:
        nonlocal calls
        calls += 1
        return calls == 4

    with cancel.stop_when(stop_at_the_fourth_call), pytest.raises(cancel.Cancelled):
        whisper.transcribe(model, audio, fp16=False, language="en", temperature=0.0)
    assert calls == 4  # checked before each encoder and decoder call, stopped at the fourth
    whisper.transcribe(model, audio, fp16=False, language="en", temperature=0.0)  # outside: runs


def test_a_cancelled_decode_stops_at_once(media):
    with cancel.stop_when(lambda: True), pytest.raises(cancel.Cancelled):
        decode_file(str(media["speech.wav"]), LIMITS)
    assert len(decode_file(str(media["speech.wav"]), LIMITS)) > 16000  # outside the scope


# --- 2. synchronous waits have bounded places ----------------------------------------------


def test_synchronous_calls_past_their_places_do_not_wait(checkpoint, tmp_path, media):
    app = make_app(checkpoint, tmp_path, WHISPER_SYNC_WAITERS="1", WHISPER_SYNC_TIMEOUT="5")
    queue = app.extensions["whisper_jobs"]
    queue.stop()  # jobs stay queued: the one waiter waits
    try:
        audio = media["speech.wav"].read_bytes()
        waiter = threading.Thread(target=lambda: app.test_client().post(
            "/v1/audio/transcriptions", data={"file": (io.BytesIO(audio), "a.wav")}))
        waiter.start()
        wait_until(lambda: queue.queued_count() == 1, what="the waiting call's job")
        client = app.test_client()
        openai = client.post("/v1/audio/transcriptions", data={"file": (io.BytesIO(audio), "b.wav")})
        assert openai.status_code == 503 and openai.headers["Retry-After"] == "30"
        assert "synchronous requests open" in openai.get_json()["error"]["message"]
        jumpstart = client.post("/invocations", json={"audio_input": audio.hex()})
        assert jumpstart.status_code == 503
        assert queue.queued_count() == 1  # refused before anything was queued
        native = client.post("/api/v1/transcriptions", data={"file": (io.BytesIO(audio), "c.wav")})
        assert native.status_code == 202 and native.headers["Location"].startswith("/api/v1/jobs/")
        assert client.get("/healthz").status_code == 200
    finally:
        queue.start()  # the waiting call's job runs, and the call returns
        waiter.join(60)
        queue.stop()


# --- 7. the pages behind the API keys; no server paths ------------------------------------


def keyed_app(checkpoint, tmp_path, **config):
    return make_app(checkpoint, tmp_path, WHISPER_API_KEYS="secret-one,secret-two", **config)


def test_with_api_keys_the_pages_need_a_sign_in(checkpoint, tmp_path, media):
    app = keyed_app(checkpoint, tmp_path)
    try:
        client = app.test_client()
        first = client.get("/jobs")
        assert first.status_code == 303 and first.headers["Location"].startswith("/signin?next=/jobs")
        signin = client.get("/signin")
        token = signin.get_data(as_text=True).split('name="csrf_token" value="', 1)[1].split('"')[0]
        forbidden = client.post("/jobs", data={"csrf_token": token, "file": (io.BytesIO(b"x"), "a.wav")})
        assert forbidden.status_code == 401
        wrong = client.post("/signin", data={"csrf_token": token, "key": "guess", "next": "/jobs"})
        assert wrong.status_code == 401 and "not one of this server" in wrong.get_data(as_text=True)
        away = client.post("/signin", data={"csrf_token": token, "key": "secret-two",
                                            "next": "//evil.example/"})
        assert away.status_code == 303 and away.headers["Location"] == "/"  # never off-site
        page = client.get("/").get_data(as_text=True)
        assert "Sign out" in page and "secret-two" not in page
        done = finished_job(app, upload(client, media["speech.wav"].read_bytes(), "t.wav"))
        assert done.state is JobState.DONE
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/models").status_code == 401  # the API still wants its key
    finally:
        app.extensions["whisper_jobs"].stop()
    # the server restarts without that key: the browser that used it is signed out
    session = client.get_cookie("session").value
    changed = make_app(checkpoint, tmp_path, WHISPER_API_KEYS="secret-one")
    try:
        later = changed.test_client()
        later.set_cookie("session", session)
        assert later.get("/").status_code == 303
        kept = keyed_app(checkpoint, tmp_path / "again").test_client()
        kept.set_cookie("session", session)
        assert kept.get("/").status_code == 200  # with the key still there, still signed in
        kept.application.extensions["whisper_jobs"].stop()
    finally:
        changed.extensions["whisper_jobs"].stop()


def test_the_pages_can_be_turned_off(checkpoint, tmp_path):
    app = make_app(checkpoint, tmp_path, WHISPER_WEB_UI="off")
    try:
        client = app.test_client()
        for url in ("/", "/jobs", "/signin"):
            answer = client.get(url)
            assert answer.status_code == 404 and "turned off" in answer.get_data(as_text=True)
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/models").status_code == 200
    finally:
        app.extensions["whisper_jobs"].stop()


def test_no_answer_shows_where_models_live(app, client, checkpoint):
    folder = str(Path(checkpoint).parent)
    for url in ("/", "/api/v1/models", "/v1/models", "/api/openapi.json", "/readyz"):
        answer = client.get(url)
        assert folder not in answer.get_data(as_text=True), url
    assert json.loads(client.get("/api/v1/models").get_data())["default"] == "tiny-test"


def test_readyz_is_ready_with_a_notice_while_the_bundled_model_stands_in(app, client,
                                                                        monkeypatch):
    from whisper_service.models import ModelRegistry

    registry = app.extensions["whisper_service"].models
    assert client.get("/readyz").status_code == 503  # nothing loaded yet
    monkeypatch.setattr(ModelRegistry, "default_ready", lambda self: True)
    monkeypatch.setattr(ModelRegistry, "stand_in_notice", property(lambda self: "a sentence"))
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["notice"] == "a sentence"
    assert registry.default_ready()


def test_a_failed_job_is_logged_as_a_warning_with_its_reason(english_checkpoint, tmp_path,
                                                             media, caplog):
    app = make_app(english_checkpoint, tmp_path)
    try:
        with caplog.at_level("INFO", logger="whisper_service.queue.jobs"):
            answer = app.test_client().post("/api/v1/transcriptions", data={
                "file": (io.BytesIO(media["speech.wav"].read_bytes()), "a.wav"), "language": "ko"})
            assert answer.status_code == 400
        failed = [r for r in caplog.records if r.levelname == "WARNING" and "failed" in r.message]
        assert failed and "English-only" in failed[0].message
    finally:
        app.extensions["whisper_jobs"].stop()
