"""A small real file system (a tmpfs) as the data folder of the production server: the
upload that does not fit is 507 with a sentence, its partial file is removed and the jobs
before it stand; below WHISPER_MIN_FREE_MB uploads are refused early, and /readyz and
/metrics say so. Mounting needs root (as in the container and CI); the same answers at the
file-writing seam are tested without it in tests/test_disk_space.py."""

from __future__ import annotations

import io
import os
import subprocess
import wave
from pathlib import Path

import pytest
import requests

from server import Server, server_env
from whisper_service.checkpoints import BUNDLED

MB = 1024 * 1024
DISK_MB = 8  # the data folder's file system
FLOOR_MB = 2  # WHISPER_MIN_FREE_MB of the second server


@pytest.fixture
def small_disk(tmp_path):
    """A DISK_MB tmpfs mounted for the test, unmounted after it."""
    folder = tmp_path / "data"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755",
                              "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here ({mounted.stderr.strip()}); "
                    "tests/test_disk_space.py covers the same answers")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def wav_bytes(seconds: float) -> bytes:
    """A WAV of a tone, 16 kHz mono: 32 kB a second."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes((b"\xe8\x03\x18\xfc") * int(seconds * 8000))
    return out.getvalue()


def upload(server: Server, content: bytes, name: str) -> requests.Response:
    return requests.post(server.base + "/api/v1/transcriptions", headers={"Prefer": "respond-async"},
                         files={"file": (name, content)}, timeout=60)


def start(small_disk: Path, tmp_path: Path, floor_mb: int) -> Server:
    # web only: no consumer, so nothing is transcribed and the disk holds only uploads
    env = server_env(BUNDLED, tmp_path, WHISPER_DATA_DIR=str(small_disk), WHISPER_ROLE="web",
                     WHISPER_MIN_FREE_MB=str(floor_mb))
    return Server(env, tmp_path / "server.log").start()


def entries(folder: Path) -> set:
    return {p.name for p in folder.iterdir()}


def test_the_upload_that_does_not_fit_is_507_and_leaves_nothing(small_disk, tmp_path):
    server = start(small_disk, tmp_path, floor_mb=0)
    try:
        audio = wav_bytes(90)  # 2.9 MB: two fit on the disk, a third does not
        first, second = upload(server, audio, "first.wav"), upload(server, audio, "second.wav")
        assert first.status_code == second.status_code == 202, (first.text, second.text)
        before = entries(small_disk)

        refused = upload(server, audio, "third.wav")
        assert refused.status_code == 507, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        error = refused.json()["error"]
        assert error["code"] == "disk_full"
        assert error["message"].startswith("the server's disk is full") and "nothing" in error["message"]
        assert entries(small_disk) == before  # the partial upload is gone
        openai = requests.post(server.base + "/v1/audio/transcriptions", timeout=60,
                               data={"model": "whisper-1"}, files={"file": ("x.wav", audio)})
        assert openai.status_code == 507 and openai.json()["error"]["type"] == "server_error"
        assert entries(small_disk) == before

        # the store is consistent: both jobs queued, nothing else
        assert requests.get(server.base + "/readyz", timeout=10).json()["queued"] == 2
        for answer in (first, second):
            job = requests.get(server.base + answer.headers["Location"], timeout=10).json()
            assert job["state"] == "queued"
        # room made (a job cancelled, then deleted with its files): the same upload is taken
        for _ in ("cancel", "delete"):
            assert requests.delete(server.base + first.headers["Location"], timeout=10).status_code == 204
        assert upload(server, audio, "third.wav").status_code == 202
    finally:
        server.stop()


def test_below_the_floor_uploads_are_refused_and_readyz_says_so(small_disk, tmp_path):
    server = start(small_disk, tmp_path, floor_mb=FLOOR_MB)
    try:
        audio = wav_bytes(40)  # 1.3 MB
        assert upload(server, audio, "fits.wav").status_code == 202
        ready = requests.get(server.base + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["disk"]["min_free_mb"] == FLOOR_MB

        # something else takes the disk down to below the floor
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (free - FLOOR_MB * MB + MB // 2))

        ready = requests.get(server.base + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "low_on_disk"
        assert "nearly full" in ready.json()["error"]
        metrics = requests.get(server.base + "/metrics", timeout=10).text
        assert f"whisper_disk_min_free_bytes {FLOOR_MB * MB}" in metrics
        free_now = int(next(line.split()[1] for line in metrics.splitlines()
                            if line.startswith("whisper_disk_free_bytes ")))
        assert free_now < FLOOR_MB * MB

        before = entries(small_disk)
        for content in (audio, wav_bytes(5)):  # large (refused from its headers) and small
            refused = upload(server, content, "refused.wav")
            assert refused.status_code == 507, refused.text
            assert "nearly full" in refused.json()["error"]["message"]
        page = requests.post(server.base + "/jobs", files={"file": ("p.wav", audio)}, timeout=60)
        assert page.status_code == 507 and "nearly full" in page.text.replace("&#39;", "'")
        assert entries(small_disk) == before

        filler.unlink()
        assert requests.get(server.base + "/readyz", timeout=10).status_code == 200
        assert upload(server, audio, "after.wav").status_code == 202
    finally:
        server.stop()
