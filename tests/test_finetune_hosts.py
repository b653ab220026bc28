"""Fine-tunes on many hosts sharing one PostgreSQL (files as rows, or as objects in a real S3
server): a WHISPER_ROLE=web host takes the archive and queues it; a `worker` host runs it;
killed with SIGKILL mid-way, another worker resumes it from the checkpoint the first sent
(the step goes on, not back to 0); the model appears in the web host's /v1/models and
/api/v1/models without a restart, and a job naming it transcribes on a worker that fetches
the model on first use. With the object store the model is an object under the prefix and
no model file is a PostgreSQL row; DELETE, from any host, cancels within seconds and
removes the fine-tune's files."""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import psycopg
import pytest

from bundled_model import speak
from conftest import make_app, real_server, wait_until
from finetune_speech import HELD_OUT, TRAINING, manifest
from seaweed import BUCKET
from test_finetune_api import FINISHED, QUICK, URL, zipped
from whisper_service.checkpoints import BUNDLED

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

ROOT = Path(__file__).resolve().parents[1]
LEASE_SECONDS = "3"  # a killed worker's fine-tune is taken by another after about this long
WAIT = 600.0  # a loaded 2-core machine: generous, never waited out by a correct run
NAME = "names-hosts"
VOLUMES = 100  # SeaweedFS volumes of 64 MB: a checkpoint of tiny.en is about 400 MB


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("names-hosts")
    table = manifest(folder, TRAINING + HELD_OUT, "names")
    return zipped({"names.csv": table.read_bytes(),
                   **{p.name: p.read_bytes() for p in sorted(folder.glob("names-*.wav"))}})


@pytest.fixture(scope="module")
def roomy_seaweed():
    """An S3 server of this module's own, with room for checkpoints of a few hundred MB
    (SeaweedFS frees a deleted object's room only when it compacts a volume)."""
    from seaweed import MissingSeaweed, Seaweed

    yield from real_server(lambda: Seaweed(volumes=VOLUMES), MissingSeaweed)


@pytest.fixture(params=["rows", "objects"])
def shared(request, postgres_url, monkeypatch) -> Dict[str, str]:
    """The settings every host shares: the database, and the object store or not."""
    config = {"WHISPER_DATABASE_URL": postgres_url, "WHISPER_LEASE_SECONDS": LEASE_SECONDS}
    if request.param == "objects":
        seaweed = request.getfixturevalue("roomy_seaweed")
        for name, value in seaweed.environment().items():  # where boto3 and the hosts read it
            monkeypatch.setenv(name, value)
        config["WHISPER_OBJECT_STORE"] = f"s3://{BUCKET}/t_{secrets.token_hex(6)}"
    return config


class Workers:
    """`python -m whisper_service worker` processes, each a host with its own data folder."""

    def __init__(self, config: Dict[str, str], folder: Path):
        self.config, self.folder = config, folder
        self.processes: Dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        env = {**os.environ, **self.config, "WHISPER_MODEL": BUNDLED, "WHISPER_DEVICE": "cpu",
               "WHISPER_DATA_DIR": str(self.folder / name), "WHISPER_PRELOAD": "false",
               "WHISPER_MODEL_DIR": str(self.folder / "models"), "WHISPER_GRACEFUL_TIMEOUT": "5",
               "OMP_NUM_THREADS": "1"}  # tiny.en: one thread is faster on two shared cores
        log = open(self.folder / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "whisper_service", "worker", "--devices", "cpu"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(30)

    def stop(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)

    def stop_all(self) -> None:
        for name in self.processes:
            self.stop(name)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def workers(shared, tmp_path):
    team = Workers(shared, tmp_path / "hosts")
    (tmp_path / "hosts").mkdir()
    yield team
    team.stop_all()


@pytest.fixture
def web(shared, tmp_path):
    app = make_app(BUNDLED, tmp_path / "web", WHISPER_ROLE="web", WHISPER_MAX_UPLOAD_MB="50",
                   **shared)
    yield app.test_client()
    app.extensions["whisper_jobs"].store.close()
    app.extensions["whisper_finetunes"].store.close()


def start(client, archive: bytes, name: str, **fields):
    response = client.post(URL, data={"dataset": (io.BytesIO(archive), "names.zip"),
                                      "model": BUNDLED, "name": name, **QUICK, **fields})
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["id"]


def state(client, fine_tune_id: str) -> dict:
    response = client.get(f"{URL}/{fine_tune_id}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def file_names(shared: Dict[str, str], fine_tune_id: str) -> List[str]:
    """The fine-tune's files where the shared store keeps them: objects or rows."""
    if "WHISPER_OBJECT_STORE" in shared:
        import boto3

        prefix = shared["WHISPER_OBJECT_STORE"].split(f"s3://{BUCKET}/", 1)[1]
        prefix = f"{prefix}/fine-tunes/{fine_tune_id}/"
        listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"][len(prefix):] for item in listed.get("Contents", ()))
    with psycopg.connect(shared["WHISPER_DATABASE_URL"]) as db:
        return sorted(row[0] for row in db.execute(
            "SELECT DISTINCT name FROM fine_tune_files WHERE job_id = %s", (fine_tune_id,)))


def file_rows(shared: Dict[str, str]) -> int:
    """How many pieces of fine-tune files PostgreSQL holds (none where the table is absent)."""
    with psycopg.connect(shared["WHISPER_DATABASE_URL"]) as db:
        if db.execute("SELECT to_regclass('fine_tune_files')").fetchone()[0] is None:
            return 0
        return db.execute("SELECT COUNT(*) FROM fine_tune_files").fetchone()[0]


def test_a_web_host_queues_workers_train_resume_after_a_kill_and_every_host_offers_it(
        web, workers, shared, archive, tmp_path):
    fine_tune_id = start(web, archive, NAME, max_steps="9", save_steps="3")
    assert state(web, fine_tune_id)["state"] == "queued"
    assert file_names(shared, fine_tune_id) == ["dataset.zip"]  # the web host kept no copy
    assert not (tmp_path / "web" / "jobs" / "fine-tunes" / fine_tune_id).exists()

    workers.start("gpu-a")
    wait_until(lambda: state(web, fine_tune_id)["step"] >= 4, WAIT, 0.1, "step 4 on gpu-a")
    workers.kill("gpu-a")  # mid-way, after checkpoint 3 went to the store
    stopped_at = state(web, fine_tune_id)["step"]
    assert state(web, fine_tune_id)["state"] == "running" and 4 <= stopped_at < 9
    assert "checkpoint.tar" in file_names(shared, fine_tune_id)

    workers.start("gpu-b")  # another host: its folder never saw the fine-tune
    wait_until(lambda: state(web, fine_tune_id)["state"] in FINISHED, WAIT, 0.5, "the fine-tune")
    done = state(web, fine_tune_id)
    assert done["state"] == "done", (done, workers.log("gpu-b"))
    assert done["step"] == done["total_steps"] == 9
    # gpu-b logged only the steps after the checkpoint gpu-a sent: it went on, not back to 0
    assert 3 < done["losses"][0][0] <= stopped_at + 1, (stopped_at, done["losses"])
    assert done["after"]["wer"] < done["before"]["wer"], done
    # the web host offers it without a restart
    assert NAME in web.get("/api/v1/models").get_json()["allowed"]
    assert NAME in [m["id"] for m in web.get("/v1/models").get_json()["data"]]
    # the model is kept once; the archive and checkpoint go just after the record is done
    wait_until(lambda: file_names(shared, fine_tune_id) == ["model.tar"], 30, 0.2,
               "only the model kept")
    if "WHISPER_OBJECT_STORE" in shared:
        assert file_rows(shared) == 0  # no model file is a PostgreSQL row

    # a host that never had the model fetches it for a job naming it
    workers.stop("gpu-b")
    workers.start("gpu-c")
    held_out = tmp_path / "held.wav"
    speak(HELD_OUT[0], held_out)  # the terms the fine-tune learned
    response = web.post("/api/v1/transcriptions", query_string={"async": "1"}, data={
        "file": (io.BytesIO(held_out.read_bytes()), "held.wav"), "model": NAME,
        "language": "en", "temperature": "0"})
    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.get_json()["id"]
    wait_until(lambda: web.get(f"/api/v1/jobs/{job}").get_json()["state"]
               in ("done", "failed", "cancelled"), WAIT, 0.5, "the job")
    status = web.get(f"/api/v1/jobs/{job}").get_json()
    assert status["state"] == "done", (status, workers.log("gpu-c"))
    assert status["model"] == NAME
    fetched = tmp_path / "hosts" / "gpu-c" / "fine-tunes" / fine_tune_id / NAME
    assert (fetched / "finetune.json").exists()
    text = web.get(f"/api/v1/jobs/{job}/transcript.txt").get_data(as_text=True)
    assert text.strip(), text


# on objects only: the rows' removal is the store suite's (test_finetune_store.py), and each
# run here trains on worker processes for half a minute
@pytest.mark.parametrize("shared", ["objects"], indirect=True)
def test_delete_from_the_web_host_cancels_within_seconds_and_removes_the_files(
        web, workers, shared, archive):
    queued = start(web, archive, "names-queued")
    assert web.delete(f"{URL}/{queued}").status_code == 202
    assert state(web, queued)["state"] == "cancelled"  # queued: at once
    assert file_names(shared, queued) == []
    # a name is taken once among the queued, running and done, whichever host is asked
    again = web.post(URL, data={"dataset": (io.BytesIO(archive), "names.zip"),
                                "model": BUNDLED, "name": "names-running",
                                **{**QUICK, "max_steps": "200"}})
    assert again.status_code == 202
    clash = web.post(URL, data={"dataset": (io.BytesIO(archive), "names.zip"),
                                "model": BUNDLED, "name": "names-running", **QUICK})
    assert clash.status_code == 400 and clash.get_json()["error"]["field"] == "name"
    running = again.get_json()["id"]

    workers.start("gpu-a")
    wait_until(lambda: state(web, running)["step"] >= 1, WAIT, 0.2, "a step on gpu-a")
    assert web.delete(f"{URL}/{running}").status_code == 202
    wait_until(lambda: state(web, running)["state"] == "cancelled", 30, 0.2, "the cancel")
    assert file_names(shared, running) == []
    assert "names-running" not in web.get("/api/v1/models").get_json()["allowed"]
