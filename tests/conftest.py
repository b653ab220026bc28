"""Shared fixtures: seeded checkpoints in the official format, generated media, settings."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator

import pytest

from whisper_service.config import Settings, bundled_ffmpeg
from whisper_service.service import WhisperService
from whisper_service.synthetic import make_checkpoint

SPEECH = (
    "The quick brown fox jumps over the lazy dog. "
    "Whisper turns speech into text, and this sentence checks that it does."
)
# (file name, ffmpeg arguments after the inputs); input 0 is speech.wav, input 1 a test picture
CONTAINERS = {
    "speech.mp3": ["-map", "0:a", "-c:a", "libmp3lame", "-b:a", "64k"],
    "speech.flac": ["-map", "0:a", "-c:a", "flac"],
    "speech.ogg": ["-map", "0:a", "-c:a", "libvorbis"],
    "speech.opus": ["-map", "0:a", "-c:a", "libopus", "-b:a", "32k"],
    "speech.m4a": ["-map", "0:a", "-c:a", "aac", "-b:a", "64k"],
    "speech.webm": ["-map", "0:a", "-c:a", "libopus", "-b:a", "32k"],
    "speech.mp4": ["-map", "1:v", "-map", "0:a", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                   "-c:a", "aac", "-shortest"],
    "speech.mov": ["-map", "1:v", "-map", "0:a", "-c:v", "mjpeg", "-c:a", "pcm_s16le",
                   "-shortest"],
    "speech.mkv": ["-map", "1:v", "-map", "0:a", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                   "-c:a", "libmp3lame", "-shortest"],
}


FINISHED_STATES = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules that run the bundled tiny.en: its matrices are small, and on a shared
    2-core machine two threads per product spend more time waiting for each other than
    computing (three times slower, measured). The synthetic models' batched tests are the
    other way round (45 % slower on one thread), so this is not the session's default."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- running in parallel (pytest-xdist; `make test` runs `-n 2 --dist loadfile`) ---------


def pytest_configure(config):
    """In a worker of a parallel run with a worker per core, torch computes on one thread:
    two workers of two threads each on two cores spend their time waiting for each other.
    The servers the tests start inherit OMP_NUM_THREADS."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1 and workers >= (os.cpu_count() or 1):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# the modules whose tests talk to the session's live server (live_server below): in a
# parallel run they go to one worker, so the server and its model start once
LIVE_SERVER_MODULES = ("tests/e2e/test_live_page.py", "tests/e2e/test_live_protocols.py",
                       "tests/e2e/test_live_edges.py", "tests/test_live_client.py",
                       "tests/e2e/test_live_speakers_page.py")


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the live-server modules as one unit: each test module runs
    whole on one worker (its module fixtures start once, its tests keep their order), the
    live ones all on the same worker. (xdist's loadgroup cannot do this under pytest 9,
    whose node ids no longer take the group suffix xdist adds to them.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndTheLiveServer(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "live-server" if module in LIVE_SERVER_MODULES else module

        def schedule(self) -> None:
            # in collection order, not most tests first: tests/e2e/ (few tests, real
            # servers, the longest) goes out first and the many quick modules fill the end
            self.config.option.loadscopereorder = False
            super().schedule()

    return ModulesAndTheLiveServer(config, log)


def pytest_collection_modifyitems(config, items):
    """Every test that uses the session's live server is in LIVE_SERVER_MODULES."""
    for item in items:
        definitions = getattr(item, "_fixtureinfo", None)
        live = definitions.name2fixturedefs.get("live_server") if definitions else None
        if live and live[-1].scope == "session":  # the last definition is the one used
            module = item.nodeid.split("::", 1)[0]
            if module not in LIVE_SERVER_MODULES:
                raise pytest.UsageError(f"{module} uses the shared live server: add it to "
                                        "LIVE_SERVER_MODULES in tests/conftest.py")


class FakeClock:
    """Time for tests whose subject is time: a monotonic clock that moves only when told,
    and a sleep that moves it instead of waiting. Code under test takes it where it takes a
    clock (or a module's `time` is replaced by it, see as_time_module)."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.slept: list = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)

    def as_time_module(self):
        """A stand-in for the `time` module of code that calls time.monotonic() and
        time.sleep() itself."""
        from types import SimpleNamespace

        return SimpleNamespace(monotonic=self, perf_counter=self, sleep=self.sleep)


def wait_until(condition: Callable[[], object], seconds: float = 20.0, interval: float = 0.05,
               what: str = "the condition") -> None:
    """Poll until condition() is true; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(interval)


def wait_finished(read_status: Callable[[], dict], what: str, seconds: float = 60.0) -> dict:
    """Read a job's status (any client: test client, requests, the queue's JSON) until the
    job has finished; returns that status."""
    last: dict = {}

    def finished() -> bool:
        last.update(read_status())
        return last["state"] in FINISHED_STATES

    try:
        wait_until(finished, seconds)
    except AssertionError:
        raise AssertionError(f"{what} did not finish in {seconds} s: {last}") from None
    return last


def run_ffmpeg(*args: str) -> None:
    subprocess.run(
        [bundled_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
    )


@pytest.fixture(scope="session")
def ffmpeg_on_path(tmp_path_factory) -> str:
    """A PATH whose `ffmpeg` is the bundled one, for whisper.load_audio comparisons."""
    folder = tmp_path_factory.mktemp("ffmpeg-bin")
    (folder / "ffmpeg").symlink_to(bundled_ffmpeg())
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Dict[str, Path]:
    """Speech in every container a person might upload, plus a few broken files."""
    folder = tmp_path_factory.mktemp("media")
    speech = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(speech), SPEECH], check=True)
    files = {"speech.wav": speech}
    for name, codec_args in CONTAINERS.items():
        target = folder / name
        run_ffmpeg("-i", str(speech), "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
                   *codec_args, str(target))
        files[name] = target
    silent_video = folder / "talk.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "2",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", str(silent_video))
    files["talk.mp4"] = silent_video
    notes = folder / "notes.mp3"
    notes.write_text("These are my meeting notes, not an mp3 file.\n")
    files["notes.mp3"] = notes
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    files["empty.wav"] = empty
    truncated = folder / "truncated.mp3"
    truncated.write_bytes(files["speech.mp3"].read_bytes()[: files["speech.mp3"].stat().st_size // 2])
    files["truncated.mp3"] = truncated
    return files


@pytest.fixture(scope="session")
def long_speech(media, tmp_path_factory):
    """About 70 s: the speech three times with pauses, so there are several windows and segments."""
    target = tmp_path_factory.mktemp("long") / "lecture.wav"
    speech = str(media["speech.wav"])
    run_ffmpeg("-i", speech, "-i", speech, "-i", speech, "-filter_complex",
               "[0:a]apad=pad_dur=15[a];[1:a]apad=pad_dur=15[b];[a][b][2:a]concat=n=3:v=0:a=1",
               "-ar", "16000", str(target))
    return target


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A tiny multilingual model, seeded, in the official checkpoint format."""
    return make_checkpoint(str(tmp_path_factory.mktemp("models") / "tiny-test.pt"))


@pytest.fixture(scope="session")
def english_checkpoint(tmp_path_factory) -> str:
    """A tiny English-only model (vocabulary of the .en models)."""
    folder = tmp_path_factory.mktemp("models-en")
    return make_checkpoint(str(folder / "tiny-test.en.pt"), shape="test-tiny.en", seed=1)


@pytest.fixture
def settings(checkpoint, tmp_path) -> Settings:
    return Settings(
        model=checkpoint, device="cpu", model_dir=str(tmp_path / "models"), max_duration=600
    )


@pytest.fixture
def service(settings) -> WhisperService:
    return WhisperService(settings)


@contextmanager
def serving(app) -> Iterator[str]:
    """The app on a loopback port, served by werkzeug's threaded server in a thread; its
    base URL. Afterwards the server and the app's job consumer stop."""
    from werkzeug.serving import make_server

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        jobs = app.extensions.get("whisper_jobs")
        if jobs is not None:
            jobs.stop()


LIVE_SESSIONS = 2  # the shared live server's sessions at once


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """What every live test (the page, the command line, both protocols) talks to: gunicorn
    with nginx in front, one CPU worker with the bundled tiny.en loaded on one torch thread
    (faster for tiny.en on a shared machine), LIVE_SESSIONS sessions of at most a minute."""
    from e2e.server import Server, server_env
    from whisper_service.checkpoints import BUNDLED

    folder = tmp_path_factory.mktemp("live-server")
    # a shared test machine decodes slowly: the last words get longer than the default 10 s
    env = server_env(BUNDLED, folder, WHISPER_LIVE_SESSIONS=str(LIVE_SESSIONS),
                     WHISPER_LIVE_MAX_MINUTES="1", WHISPER_LIVE_STOP_SECONDS="120")
    running = Server(env, folder / "gunicorn.log").start()
    try:
        import requests

        wait_until(lambda: requests.get(running.base + "/readyz", timeout=2).ok, 60,
                   what="the model to load")
        yield running
    finally:
        running.stop()


def make_app(checkpoint, folder, **config):
    from app import create_app

    return create_app({
        "TESTING": True,
        "SECRET_KEY": "test",
        "WHISPER_MODEL": checkpoint,
        "WHISPER_DEVICE": "cpu",
        "WHISPER_MODEL_DIR": str(folder / "models"),
        "WHISPER_DATA_DIR": str(folder / "jobs"),
        "WHISPER_MAX_UPLOAD_MB": "2",
        # tests load the model when they need it; a load still running when the test
        # process exits would abort it (torch threads torn down mid-call)
        "WHISPER_PRELOAD": "false",
        **config,
    })


@pytest.fixture
def app(checkpoint, tmp_path):
    app = make_app(checkpoint, tmp_path)
    yield app
    app.extensions["whisper_jobs"].stop()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def busy_client(checkpoint, tmp_path):
    """An app whose consumer is stopped and whose queue holds one job: jobs stay queued."""
    app = make_app(checkpoint, tmp_path, WHISPER_MAX_QUEUED="1")
    app.extensions["whisper_jobs"].stop()
    return app.test_client()


def real_server(start, missing):
    """A fixture's body for a real server the tests start themselves (tests/postgres.py,
    tests/seaweed.py): yields it, destroys it after. A missing binary (`missing`) fails the
    tests that need it with what to install: they are never skipped."""
    try:
        server = start()
    except missing as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL cluster for the whole session (tests/postgres.py). Missing
    binaries fail the tests that need it, with what to install: they are never skipped."""
    from postgres import Cluster, MissingPostgres

    yield from real_server(Cluster, MissingPostgres)


@pytest.fixture(scope="session")
def seaweed():
    """One real S3 server (SeaweedFS) for the whole session (tests/seaweed.py). A missing
    binary fails the tests that need it, with what to install: they are never skipped."""
    from seaweed import MissingSeaweed, Seaweed

    yield from real_server(Seaweed, MissingSeaweed)


@pytest.fixture
def object_store(seaweed, monkeypatch) -> str:
    """A WHISPER_OBJECT_STORE of its own for one test: a fresh prefix in the session's
    bucket; the endpoint and key are in the environment, where boto3 reads them (and
    servers the test starts inherit them)."""
    import secrets

    from seaweed import BUCKET

    for name, value in seaweed.environment().items():
        monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/t_{secrets.token_hex(6)}"


@pytest.fixture
def postgres_url(postgres) -> str:
    """A database URL of its own for one test: a fresh schema, first on the search path."""
    import secrets

    schema = f"t_{secrets.token_hex(6)}"
    postgres.admin(f"CREATE SCHEMA {schema}", database="whisper")
    yield postgres.url(schema=schema)
    postgres.admin(f"DROP SCHEMA {schema} CASCADE", database="whisper")
