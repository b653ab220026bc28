"""Fine-tunes through the API: a dataset archive in, a job that reaches done, the model in
/v1/models and /api/v1/models without a restart; a restart in the middle resumes from the
checkpoint; DELETE cancels; each bad archive is refused with its sentence, before training."""

from __future__ import annotations

import io
import zipfile

import pytest

from conftest import make_app, wait_until
from finetune_speech import HELD_OUT, TRAINING, manifest
from whisper_service.checkpoints import BUNDLED

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

URL = "/api/v1/fine-tunes"
FINISHED = ("done", "failed", "cancelled")
# a few steps of 4 clips; the held-out share is 5 of the 36 clips
QUICK = {"max_steps": "4", "batch_size": "4", "learning_rate": "1e-4", "eval_fraction": "0.14",
         "language": "en"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names-api")
    return manifest(folder, TRAINING + HELD_OUT, "names")


def zipped(files) -> bytes:
    """A zip of {name in the archive: bytes}."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return data.getvalue()


@pytest.fixture(scope="module")
def archive(clips) -> bytes:
    folder = clips.parent
    return zipped({"names.csv": clips.read_bytes(),
                   **{p.name: p.read_bytes() for p in sorted(folder.glob("names-*.wav"))}})


def server(folder, **config):
    return make_app(BUNDLED, folder, WHISPER_MAX_UPLOAD_MB="50", **config)


def stop(app):
    app.extensions["whisper_finetunes"].stop(60)
    app.extensions["whisper_jobs"].stop()


def start(client, archive, name, **fields):
    return client.post(URL, data={"dataset": (io.BytesIO(archive), "names.zip"), "model": BUNDLED,
                                  "name": name, **QUICK, **fields})


def state_of(client, response) -> dict:
    return client.get(response.headers["Location"]).get_json()


def test_an_archive_becomes_a_model_every_list_offers(archive, tmp_path):
    app = server(tmp_path)
    try:
        client = app.test_client()
        response = start(client, archive, "names-api")
        assert response.status_code == 202, response.get_data(as_text=True)
        assert response.get_json()["state"] == "queued" and response.get_json()["clips"] == 36
        wait_until(lambda: state_of(client, response)["state"] in FINISHED, 600, 0.5, "the fine-tune")
        state = state_of(client, response)
        assert state["state"] == "done", state
        assert state["step"] == state["total_steps"] == 4
        assert state["after"]["wer"] < state["before"]["wer"], state
        assert [s for s, _ in state["losses"]] == [1, 2, 3, 4]
        assert "names-api" in client.get("/api/v1/models").get_json()["allowed"]
        assert "names-api" in [m["id"] for m in client.get("/v1/models").get_json()["data"]]
        assert [s["id"] for s in client.get(URL).get_json()["fine_tunes"]] == [state["id"]]
    finally:
        stop(app)
    again = server(tmp_path)  # finished fine-tunes are offered again after a restart
    try:
        assert "names-api" in again.test_client().get("/api/v1/models").get_json()["allowed"]
    finally:
        stop(again)


def test_a_restart_in_the_middle_resumes_from_the_checkpoint(archive, tmp_path):
    app = server(tmp_path)
    try:
        client = app.test_client()
        response = start(client, archive, "resumed", max_steps="6", save_steps="2")
        assert response.status_code == 202, response.get_data(as_text=True)
        wait_until(lambda: (state_of(client, response)["step"] or 0) >= 2, 600, 0.2, "step 2")
    finally:
        stop(app)  # stops after the step running, which is written as a checkpoint
    stopped_at = state_of(client, response)["step"]
    assert state_of(client, response)["state"] == "running"
    app = server(tmp_path)
    try:
        client = app.test_client()
        wait_until(lambda: state_of(client, response)["state"] in FINISHED, 600, 0.5, "the fine-tune")
        state = state_of(client, response)
        assert state["state"] == "done" and state["step"] == 6, state
        # the second run logged only the steps after the checkpoint: it went on, not back to 0
        assert state["losses"][0][0] > stopped_at >= 2, (stopped_at, state["losses"])
    finally:
        stop(app)


def test_delete_cancels_a_running_fine_tune_within_seconds(archive, tmp_path):
    app = server(tmp_path)
    try:
        client = app.test_client()
        response = start(client, archive, "cancelled", max_steps="200")
        wait_until(lambda: (state_of(client, response)["step"] or 0) >= 1, 600, 0.2, "a step")
        assert client.delete(response.headers["Location"]).status_code == 202
        wait_until(lambda: state_of(client, response)["state"] == "cancelled", 30, 0.2, "the cancel")
        assert state_of(client, response)["step"] < 200
        assert "cancelled" not in client.get("/api/v1/models").get_json()["allowed"]
    finally:
        stop(app)


@pytest.mark.parametrize("files, field, words", [
    (None, "dataset", "not a zip archive"),
    ({"clip.wav": b"RIFF"}, "dataset", "has no table"),
    ({"t.csv": b"audio,text\nclip.wav,hello\n", "clip.wav": b"these are notes, not sound"},
     "dataset", "'clip.wav' cannot be a training clip"),
    ({"t.csv": b"audio,text\nclip.wav,\n", "clip.wav": b"RIFF"}, "dataset", "has no text"),
    ({"t.csv": b"audio,text\ngone.wav,hello\n"}, "dataset", "does not hold, e.g. 'gone.wav'"),
    ({"t.csv": b"path,words\nclip.wav,hello\n"}, "dataset", "'t.csv' needs 'audio' and 'text' columns"),
    ({"t.csv": b"audio,text\n"}, "dataset", "'t.csv' lists no clips"),
    ({"../evil.csv": b"audio,text\n"}, "dataset", "outside its own folder"),
    ({"zeros.wav": bytes(40 * 1024 * 1024)}, "dataset", "an archive bomb is refused"),
])
def test_each_bad_archive_is_refused_with_its_sentence(tmp_path, files, field, words):
    app = server(tmp_path)
    try:
        client = app.test_client()
        body = b"not a zip at all" if files is None else zipped(files)
        response = client.post(URL, data={"dataset": (io.BytesIO(body), "d.zip"), "model": BUNDLED,
                                          "name": "bad"})
        assert response.status_code == 400, response.get_data(as_text=True)
        error = response.get_json()["error"]
        assert error["field"] == field and words in error["message"], error
        assert client.get(URL).get_json()["fine_tunes"] == []  # nothing was queued
    finally:
        stop(app)


@pytest.mark.parametrize("fields, field, words", [
    ({"model": "large-v3"}, "model", "is not offered here"),
    ({"name": "../x"}, "name", "name the fine-tuned model"),
    ({"name": BUNDLED}, "name", "already a model named"),
    ({"max_steps": "many"}, "max_steps", "must be a whole number"),
    ({"batch_size": "0"}, "batch_size", "batch size must be 1 or more"),
    ({"colour": "red"}, "colour", "is not a fine-tune option"),
])
def test_bad_options_are_refused_before_the_archive_is_read(archive, tmp_path, fields, field, words):
    app = server(tmp_path)
    try:
        response = app.test_client().post(URL, data={
            "dataset": (io.BytesIO(archive), "names.zip"), "model": BUNDLED, "name": "x", **fields})
        assert response.status_code == 400, response.get_data(as_text=True)
        error = response.get_json()["error"]
        assert error["field"] == field and words in error["message"], error
    finally:
        stop(app)


def test_without_an_archive_the_field_is_named(tmp_path):
    app = server(tmp_path)
    try:
        response = app.test_client().post(URL, data={"model": BUNDLED, "name": "x"})
        assert response.status_code == 400
        assert response.get_json()["error"]["field"] == "dataset"
        assert app.test_client().get(URL + "/" + "A" * 22).status_code == 404
    finally:
        stop(app)
