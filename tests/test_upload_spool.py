"""Uploads stream to the object store as they arrive (issue 26): werkzeug parses a form's
file straight into an S3 multipart upload that buffers one 8 MB part, a raw body is copied
into one, and the media check reads the finished object through a short-lived URL. On a
real SeaweedFS (tests/seaweed.py) and PostgreSQL:

- every entry path (the native API, OpenAI's, SageMaker's raw body, the browser's form)
  streams, and the web host's data folder never holds the upload;
- the check works through the URL on wav, mp3, webm and an mp4 whose index is at its end;
  what is not media is refused and leaves no object and no open multipart upload;
- a 20 MB upload goes up in 8 MB parts, one part buffered at most; a client gone after
  two parts leaves no multipart upload open;
- a 200+ MB upload through a real server process: the process writes next to nothing to
  disk (/proc/<pid>/io), its memory stays bounded, and the job is done with the words;
- the store stopped in the middle of a multipart upload: 503 with Retry-After, no orphan
  object nor multipart upload once collected, and the same upload sent again with its
  Idempotency-Key once the store is back is done once.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pytest

from conftest import SPEECH, make_app, real_server, wait_until
from seaweed import BUCKET
from test_app import csrf
from test_jobs import Backend, Recorder, wait_finished
from whisper_service.queue.jobs import JobQueue
from whisper_service.queue.store.base import MEDIA_FILE
from whisper_service.queue.store.objects import MULTIPART_BYTES, ObjectFiles

BOUNDARY = "whisper-spool-test-boundary"
OUTAGE_SECONDS = 15.0  # how long the object store is stopped (issue 26)
BIG_BYTES = 210 * 1024 * 1024  # "a 200+ MB upload"
# what the web process may write to its disk while taking in the big upload: logs, Python's
# caches; the upload itself is 210 MB
BIG_DISK_WRITES = 8 * 1024 * 1024
# how much the web process's resident memory may grow while taking it in: a part buffered,
# one in flight, werkzeug's and botocore's buffers; the upload itself is 210 MB
BIG_RSS_GROWTH = 96 * 1024 * 1024


@pytest.fixture
def s3(postgres_url, object_store, tmp_path) -> Backend:
    return Backend("s3", postgres_url, str(tmp_path / "jobs"), object_store)


@pytest.fixture
def targets(monkeypatch) -> List:
    """Every upload target the object store opens in this process, in order."""
    made: List = []
    original = ObjectFiles.upload_target

    def recorded(self, job_id):
        made.append(original(self, job_id))
        return made[-1]

    monkeypatch.setattr(ObjectFiles, "upload_target", recorded)
    return made


def _prefix(backend: Backend) -> str:
    return backend.object_store.split(f"s3://{BUCKET}/", 1)[1] + "/"


def _job_ids(seaweed, backend: Backend) -> List[str]:
    return sorted({key[len(_prefix(backend)):].split("/")[0]
                   for key in seaweed.keys(_prefix(backend))})


def _open_uploads(seaweed, prefix: str) -> List[str]:
    answer = seaweed.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return [upload["Key"] for upload in answer.get("Uploads", ())]


def _job_folders(folder: Path) -> List[str]:
    """Job folders (named like an id) under a host's data folder."""
    if not folder.exists():
        return []
    return [name for name in os.listdir(folder) if len(name) == 22]


# --- a WAV with a large padding chunk, and a multipart body made as it is read -------------


def padded_wav(speech: bytes, padding: int) -> Tuple[bytes, int]:
    """The speech WAV rewritten as RIFF header, fmt, data (the speech) and a JUNK chunk of
    `padding` zero bytes after it: ffmpeg hears the speech and skips the padding. Returns
    (the bytes up to the padding, the whole file's length)."""
    assert speech[:4] == b"RIFF" and speech[8:12] == b"WAVE"
    chunks, offset = {}, 12
    while offset + 8 <= len(speech):
        name, size = speech[offset:offset + 4], struct.unpack_from("<I", speech, offset + 4)[0]
        size = min(size, len(speech) - offset - 8)  # espeak's stdout header may overstate
        chunks[name] = speech[offset + 8:offset + 8 + size]
        offset += 8 + size + (size & 1)
    fmt, data = chunks[b"fmt "], chunks[b"data"]
    data += b"\0" * (len(data) & 1)
    body = (b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
            + data + b"JUNK" + struct.pack("<I", padding))
    total = 12 + len(body) + padding
    return b"RIFF" + struct.pack("<I", total - 8) + b"WAVE" + body, total


class FormBody(io.RawIOBase):
    """A multipart/form-data body with one file, made as it is read (never whole in this
    process): the file's first bytes, then `zeros` zero bytes. `when` = (offset, action):
    action() runs once as soon as reading has passed offset."""

    def __init__(self, filename: str, head: bytes, zeros: int,
                 when: Optional[Tuple[int, Callable[[], None]]] = None):
        super().__init__()
        self._start = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                       f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream"
                       "\r\n\r\n").encode() + head
        self._zeros = zeros
        self._end = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.length = len(self._start) + zeros + len(self._end)
        self.sent = 0
        self._when = when

    content_type = f"multipart/form-data; boundary={BOUNDARY}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:  # werkzeug's test client measures the stream
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.sent = offset + (0, self.sent, self.length)[whence]
        return self.sent

    def tell(self) -> int:
        return self.sent

    def read(self, size: int = -1) -> bytes:
        size = 1 << 20 if size is None or size < 0 else min(size, 1 << 20)
        at, zeros_end = self.sent, len(self._start) + self._zeros
        if at < len(self._start):
            piece = self._start[at:at + size]
        elif at < zeros_end:
            piece = bytes(min(size, zeros_end - at))
        else:
            piece = self._end[at - zeros_end:at - zeros_end + size]
        self.sent += len(piece)
        if self._when is not None and self.sent > self._when[0]:
            action, self._when = self._when[1], None
            action()
        return piece

    def readinto(self, buffer) -> int:
        piece = self.read(len(buffer))
        buffer[:len(piece)] = piece
        return len(piece)


# --- every path streams; the check reads the object through its URL ------------------------


def test_every_entry_path_streams_to_the_store(s3, seaweed, checkpoint, media, tmp_path, targets):
    web = make_app(checkpoint, tmp_path / "web", **s3.settings(), WHISPER_ROLE="web")
    worker = JobQueue(s3.store(str(tmp_path / "gpu-host")), Recorder(text="streamed"))
    worker.start()
    client = web.test_client()
    data = media["speech.wav"].read_bytes()
    try:
        native = client.post("/api/v1/transcriptions", query_string={"async": "1"},
                             data={"file": (io.BytesIO(data), "native.wav")})
        assert native.status_code == 202, native.get_data(as_text=True)
        openai = client.post("/v1/audio/transcriptions", data={
            "file": (io.BytesIO(data), "openai.wav"), "model": "whisper-1"})
        assert openai.status_code == 200, openai.get_data(as_text=True)
        assert openai.get_json()["text"] == "streamed"
        sagemaker = client.post("/invocations", data=data, content_type="audio/wav")
        assert sagemaker.status_code == 200, sagemaker.get_data(as_text=True)
        assert sagemaker.get_json()["text"] == "streamed"
        page = client.post("/jobs", data={"file": [(io.BytesIO(data), "one.wav"),
                                                   (io.BytesIO(data), "two.wav")],
                                          "csrf_token": csrf(client)})
        assert page.status_code in (302, 303), page.get_data(as_text=True)
        # five uploads, five targets, each kept as a job whose object holds the bytes
        assert len(targets) == 5 and all(t.kept for t in targets)
        ids = [t.job_id for t in targets]
        assert _job_ids(seaweed, s3) == sorted(ids)
        for job_id in ids:
            body = seaweed.client().get_object(Bucket=BUCKET,
                                               Key=f"{_prefix(s3)}{job_id}/{MEDIA_FILE}")
            assert body["Body"].read() == data
        assert native.get_json()["id"] == ids[0]
        # the web host never held an upload in its data folder
        assert _job_folders(tmp_path / "web" / "jobs") == []
        for job_id in ids:
            assert wait_finished(worker, job_id).state.value == "done"
    finally:
        worker.stop(timeout=5)
        worker.store.close()
        web.extensions["whisper_jobs"].store.close()


def test_the_check_reads_the_object_through_its_url(s3, seaweed, checkpoint, media, tmp_path,
                                                    targets, capsys):
    """wav, mp3, webm and an mp4 with its index (moov) at the end: ffmpeg reads them over
    HTTP with Range requests. What is not media is refused and leaves nothing behind."""
    mp4 = media["speech.mp4"].read_bytes()
    assert mp4.index(b"moov") > mp4.index(b"mdat")  # the index at the end: ffmpeg must seek
    web = make_app(checkpoint, tmp_path / "web", **s3.settings(), WHISPER_ROLE="web")
    client = web.test_client()
    took = {}
    try:
        for name in ("speech.wav", "speech.mp3", "speech.webm", "speech.mp4"):
            began = time.perf_counter()
            answer = client.post("/api/v1/transcriptions", query_string={"async": "1"},
                                 data={"file": (io.BytesIO(media[name].read_bytes()), name)})
            took[name] = time.perf_counter() - began
            assert answer.status_code == 202, (name, answer.get_data(as_text=True))
            kept = web.extensions["whisper_jobs"].store.get(answer.get_json()["id"])
            assert (kept["media_type"] or "").startswith(("audio/", "video/")), (name, kept)
        refused = client.post("/api/v1/transcriptions", query_string={"async": "1"},
                              data={"file": (io.BytesIO(b"not media at all\n" * 4096), "x.mp3")})
        assert refused.status_code == 415, refused.get_data(as_text=True)
        assert refused.get_json()["error"]["code"] == "not_media"
        assert len(targets) == 5 and [t.kept for t in targets] == [True] * 4 + [False]
        assert _job_ids(seaweed, s3) == sorted(t.job_id for t in targets[:4])
        assert _open_uploads(seaweed, _prefix(s3)) == []
        assert _job_folders(tmp_path / "web" / "jobs") == []
    finally:
        web.extensions["whisper_jobs"].store.close()
    with capsys.disabled():
        print("\nupload + check through a presigned URL, seconds: " +
              ", ".join(f"{name} {seconds:.2f}" for name, seconds in took.items()))


@contextlib.contextmanager
def padded_upload(s3, checkpoint, media, tmp_path, padding: int, cut_at: Optional[int] = None):
    """(the web app, its answer, the body's length) to a wav of speech and `padding` bytes
    more posted to a web host with the object store; the body ends after `cut_at` bytes
    when given (a client gone in the middle). The app's store is closed after the `with`."""
    head, total = padded_wav(media["speech.wav"].read_bytes(), padding)
    body = FormBody("long.wav", head, total - len(head))
    if cut_at is not None:
        read = body.read
        body.read = lambda size=-1: read(size) if body.sent < cut_at else b""
    web = make_app(checkpoint, tmp_path / "web", **s3.settings(), WHISPER_ROLE="web",
                   WHISPER_MAX_UPLOAD_MB="64")
    try:
        yield web, web.test_client().post(
            "/api/v1/transcriptions", query_string={"async": "1"}, input_stream=body,
            content_type=body.content_type, content_length=body.length), total
    finally:
        web.extensions["whisper_jobs"].store.close()


def test_a_large_upload_goes_up_in_parts_one_buffered_at_a_time(s3, seaweed, checkpoint, media,
                                                               tmp_path, targets):
    with padded_upload(s3, checkpoint, media, tmp_path, 20 * 1024 * 1024) as (_, answer, total):
        assert answer.status_code == 202, answer.get_data(as_text=True)
        (target,) = targets
        assert target.size == total
        assert len(target._parts) == -(-total // MULTIPART_BYTES) == 3
        # one part buffered at most, and a piece of what werkzeug read
        assert MULTIPART_BYTES <= target.peak_buffered <= MULTIPART_BYTES + 256 * 1024
        stored = seaweed.client().head_object(
            Bucket=BUCKET, Key=f"{_prefix(s3)}{target.job_id}/{MEDIA_FILE}")
        assert stored["ContentLength"] == total
        assert _job_folders(tmp_path / "web" / "jobs") == []


def test_a_client_gone_mid_upload_leaves_no_part_behind(s3, seaweed, checkpoint, media, tmp_path,
                                                        targets):
    """The body ends after two parts went up, short of its declared length (the client
    went away): 400, and the multipart upload is aborted at once."""
    cut_at = 2 * MULTIPART_BYTES + (1 << 20)
    with padded_upload(s3, checkpoint, media, tmp_path, 30 * 1024 * 1024,
                       cut_at) as (web, answer, _):
        assert answer.status_code == 400, answer.get_data(as_text=True)
        (target,) = targets
        assert len(target._parts) == 2 and not target.kept
        assert _open_uploads(seaweed, _prefix(s3)) == []
        assert _job_ids(seaweed, s3) == []
        assert web.extensions["whisper_jobs"].store.get(target.job_id) is None


# --- 200+ MB through a real server process --------------------------------------------------

SERVE = """
import json, os, sys
from werkzeug.serving import make_server
sys.path.insert(0, os.getcwd())
from app import create_app
app = create_app(json.loads(sys.argv[1]))
server = make_server("127.0.0.1", 0, app, threaded=True)
print(server.server_port, flush=True)
server.serve_forever()
"""


def _io_written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("write_bytes:")).split()[1])


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) * 1024


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except FileNotFoundError:
                pass
    return total


def test_a_200_mb_upload_never_lands_on_the_web_hosts_disk(s3, seaweed, media, tmp_path, capsys):
    from whisper_service.checkpoints import BUNDLED
    from whisper_service.config import Settings
    from whisper_service.service import WhisperService
    from bundled_model import word_error_rate

    data, spool = tmp_path / "web" / "jobs", tmp_path / "web" / "tmp"
    spool.mkdir(parents=True)
    config = {"TESTING": True, "SECRET_KEY": "test", "WHISPER_MODEL": BUNDLED,
              "WHISPER_DEVICE": "cpu", "WHISPER_DATA_DIR": str(data), "WHISPER_ROLE": "web",
              "WHISPER_MODEL_DIR": str(tmp_path / "web" / "models"),
              "WHISPER_MAX_UPLOAD_MB": "256", **s3.settings()}
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen([sys.executable, "-c", SERVE, json.dumps(config)], cwd=root,
                              env={**os.environ, "TMPDIR": str(spool)}, stdout=subprocess.PIPE)
    worker = None
    try:
        port = int(server.stdout.readline())
        head, total = padded_wav(media["speech.wav"].read_bytes(), BIG_BYTES)
        body = FormBody("long.wav", head, total - len(head))
        written, rss = _io_written(server.pid), _rss(server.pid)
        peaks = {"rss": rss, "folders": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peaks["rss"] = max(peaks["rss"], _rss(server.pid))
                peaks["folders"] = max(peaks["folders"], _folder_bytes(data) + _folder_bytes(spool))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.request("POST", "/api/v1/transcriptions?async=1", body=body, headers={
            "Content-Type": body.content_type, "Content-Length": str(body.length)})
        answer = connection.getresponse()
        reply = json.loads(answer.read())
        seconds = time.perf_counter() - began
        done.set()
        sampler.join()
        assert answer.status == 202, reply
        disk = _io_written(server.pid) - written
        with capsys.disabled():
            print(f"\n{total / 2**20:.0f} MB upload in {seconds:.1f} s: the web process wrote "
                  f"{disk / 2**20:.2f} MB to disk, its data folder + TMPDIR peaked at "
                  f"{peaks['folders'] / 2**20:.2f} MB, its RSS grew "
                  f"{(peaks['rss'] - rss) / 2**20:.1f} MB "
                  f"({rss / 2**20:.0f} -> {peaks['rss'] / 2**20:.0f} MB)")
        assert disk < BIG_DISK_WRITES
        assert peaks["folders"] < BIG_DISK_WRITES
        assert peaks["rss"] - rss < BIG_RSS_GROWTH
        stored = seaweed.client().head_object(
            Bucket=BUCKET, Key=f"{_prefix(s3)}{reply['id']}/{MEDIA_FILE}")
        assert stored["ContentLength"] == total
        # a GPU host (here: this process, another data folder) transcribes it from the store
        service = WhisperService(Settings(model=BUNDLED, device="cpu",
                                          model_dir=str(tmp_path / "gpu" / "models")))
        worker = JobQueue(s3.store(str(tmp_path / "gpu" / "jobs")), service)
        worker.start()
        wait_until(lambda: worker.get(reply["id"]).finished, 300, interval=0.5,
                   what="the big upload's job")
        assert worker.get(reply["id"]).state.value == "done", worker.get(reply["id"]).error
        assert word_error_rate(SPEECH, worker.transcript(reply["id"]).text) < 0.3
    finally:
        if worker is not None:
            worker.stop(timeout=10)
            worker.store.close()
        server.terminate()
        server.wait(timeout=20)


# --- the object store stopped in the middle of a multipart upload ---------------------------


@pytest.fixture(scope="module")
def own_seaweed():
    """An S3 server of this module's own: stopping it must not disturb other tests."""
    from seaweed import MissingSeaweed, Seaweed

    yield from real_server(Seaweed, MissingSeaweed)


def test_the_store_stopped_mid_upload_answers_503_and_the_retry_is_done_once(
        own_seaweed, postgres_url, checkpoint, media, tmp_path, monkeypatch, targets, capsys):
    for name, value in own_seaweed.environment().items():
        monkeypatch.setenv(name, value)
    s3 = Backend("s3", postgres_url, str(tmp_path / "jobs"), f"s3://{BUCKET}/midway")
    web = make_app(checkpoint, tmp_path / "web", **s3.settings(), WHISPER_ROLE="web",
                   WHISPER_MAX_UPLOAD_MB="64")
    client = web.test_client()
    recorder = Recorder(text="sent twice, done once")
    head, total = padded_wav(media["speech.wav"].read_bytes(), 40 * 1024 * 1024)
    key = {"Idempotency-Key": "the-long-one"}
    stopped = []

    def stop() -> None:  # two parts went up; the third is refused
        own_seaweed.stop()
        stopped.append(time.monotonic())

    def post(body: FormBody):
        return client.post("/api/v1/transcriptions", query_string={"async": "1"}, headers=key,
                           input_stream=body, content_type=body.content_type,
                           content_length=body.length)

    worker = None
    try:
        try:
            began = time.monotonic()
            cut = post(FormBody("long.wav", head, total - len(head),
                                when=(2 * MULTIPART_BYTES + (1 << 20), stop)))
            answered = time.monotonic() - began
            assert answered < 60  # an answer, not a hang
            assert stopped, "the store was never stopped"
            assert cut.status_code == 503, cut.get_data(as_text=True)
            assert int(cut.headers["Retry-After"]) > 0
            error = cut.get_json()["error"]
            assert error["code"] == "store_unavailable"
            assert "object store" in error["message"]
            (target,) = targets
            assert len(target._parts) == 2 and not target.kept
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped[0])))
        finally:
            own_seaweed.start()
        # no object of the cut upload; its parts, if the abort found the store away, are
        # collected by the retention pass
        assert own_seaweed.keys("midway/") == []
        # the abort met the store away: the multipart upload stays open until the
        # retention pass finds it older than debris may be
        assert _open_uploads(own_seaweed, "midway/") == [f"midway/{target.job_id}/{MEDIA_FILE}"]
        web.extensions["whisper_jobs"].purge_expired()
        assert len(_open_uploads(own_seaweed, "midway/")) == 1  # young: it may be in progress
        web.extensions["whisper_jobs"].store._files.stray_seconds = 0.0
        web.extensions["whisper_jobs"].purge_expired()
        assert _open_uploads(own_seaweed, "midway/") == []
        # the same upload, sent again once the store is back, is one job, done once
        again = post(FormBody("long.wav", head, total - len(head)))
        assert again.status_code == 202, again.get_data(as_text=True)
        job_id = again.get_json()["id"]
        once_more = post(FormBody("long.wav", head, total - len(head)))
        assert once_more.get_json()["id"] == job_id
        worker = JobQueue(s3.store(str(tmp_path / "gpu-host")), recorder)
        worker.start()
        assert wait_finished(worker, job_id).state.value == "done"
        time.sleep(0.5)
        assert recorder.seen == [job_id]
        assert [k.split("/")[1] for k in own_seaweed.keys("midway/")] == [job_id, job_id]
        assert _open_uploads(own_seaweed, "midway/") == []
        with capsys.disabled():
            print(f"\nthe store stopped after {len(target._parts)} parts of a "
                  f"{total / 2**20:.0f} MB upload: 503 in {answered:.1f} s")
    finally:
        if worker is not None:
            worker.stop(timeout=5)
            worker.store.close()
        web.extensions["whisper_jobs"].store.close()


def test_nginx_passes_bodies_through_when_there_is_an_object_store(tmp_path):
    """nginx reads every request whole before gunicorn sees it (to its disk): with an object
    store it passes bodies through instead, or the upload would land on the host anyway."""
    import re

    from web.http import proxy

    def buffering(stream_bodies: bool) -> str:
        config = proxy.ProxyConfig(host="127.0.0.1", port=8000, upstream_socket="/s",
                                   folder=str(tmp_path), max_upload_mb=10, read_timeout=60,
                                   stream_bodies=stream_bodies)
        return re.search(r"location / \{.*?proxy_request_buffering (\w+);", proxy.render(config),
                         re.S).group(1)

    assert buffering(False) == "on" and buffering(True) == "off"
    conf = (Path(__file__).resolve().parent.parent / "gunicorn.conf.py").read_text()
    assert '"object_store": bool(settings.object_store)' in conf
    assert 'stream_bodies=FACTS["object_store"]' in conf
