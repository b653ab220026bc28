"""A failure in people's words: a sentence without server paths or errnos, "Try again" and
"Try with another model" on the job page, the operator's detail in the log and, for a
signed-in operator, under "Details"; the APIs' error sentences alike."""

from __future__ import annotations

import io
import logging
import re

import pytest

from conftest import make_app, wait_finished
from test_app import FAST, upload
from test_signin import sign_in
from whisper_service.checkpoints.files import DownloadFailed
from whisper_service.errors import (
    BadOption, ModelUnavailable, NotMedia, StoreUnavailable, TruncatedMedia,
)
from whisper_service.failures import SERVER_FAILED, explain, remedies, scrub

# what a job page or an error body must never show
PATH_OR_ERRNO = re.compile(r"(/[\w.-]+){2,}|Errno|Traceback")
OFFLINE = ("model 'large-v3' could not be loaded: it is not in /root/.cache/whisper and could "
           "not be downloaded ([Errno -2] Name or service not known)")


def test_offline_download_in_the_users_terms():
    failure = explain(DownloadFailed(OFFLINE))
    assert failure.message == ("This server cannot reach the internet to download large-v3; "
                               "choose another model.")
    assert failure.detail == f"DownloadFailed: {OFFLINE}"  # the operator's, whole
    assert (failure.kind, failure.field, failure.retry, failure.other_model) == (
        "DownloadFailed", "model", True, True)


@pytest.mark.parametrize("error, sentence", [
    (ModelUnavailable("model 'meetings' could not be loaded: '/srv/models/ft' holds no "
                      "Whisper checkpoint"),
     "The model meetings cannot be loaded on this server; choose another model."),
    (ModelUnavailable("model '/srv/models/ft.pt' could not be loaded: CUDA out of memory"),
     "The server has no room for ft.pt in its GPU's memory right now; try again later, or "
     "choose a smaller model."),
    (RuntimeError("[Errno 5] Input/output error: '/var/lib/whisper/jobs/ab/media'"), SERVER_FAILED),
    (FileNotFoundError(2, "No such file or directory", "/data/jobs/x/media"),
     "The upload is no longer on the server; upload the file again."),
])
def test_server_conditions_become_sentences(error, sentence):
    failure = explain(error)
    assert failure.message == sentence
    assert not PATH_OR_ERRNO.search(failure.message)
    assert str(error) in failure.detail


def test_sentences_written_for_people_pass_through():
    assert explain(NotMedia("'notes.mp3' is not audio or video")).message == "'notes.mp3' is not audio or video"
    refused = explain(BadOption("language", "model 'tiny.en' is English-only"))
    assert (refused.message, refused.field, refused.retry) == (
        "language: model 'tiny.en' is English-only", "language", False)
    away = explain(StoreUnavailable("connection refused", retry_after=7))
    assert away.retry and "try again in 7 s" in away.message


def test_scrub_keeps_names_and_drops_where_they_are():
    assert scrub("cannot read /srv/models/ft/model.bin ([Errno 13] Permission denied)") == \
        "cannot read model.bin"
    assert scrub("beam_size: must be 1-16") == "beam_size: must be 1-16"
    assert scrub("'a/b.mp3' is empty (0 bytes)") == "'a/b.mp3' is empty (0 bytes)"  # relative: a name


def test_remedies():
    assert remedies("NotMedia", "file") == (False, False)  # another file is needed
    assert remedies("BadOption", "language") == (False, True)  # the same would be refused again
    assert remedies("DownloadFailed", "model") == (True, True)
    assert remedies(None, None) == (True, True)


@pytest.fixture
def two_models(checkpoint, tmp_path):
    """An app whose default model cannot load (a CTranslate2 folder whose weights are cut
    short, at a server path) and a second one that works."""
    empty = tmp_path / "server-models" / "meetings"
    empty.mkdir(parents=True)
    (empty / "model.bin").write_bytes(b"\x01\x00")
    built = []

    def build(**config):
        app = make_app(f"meetings={empty}", tmp_path / f"app{len(built)}",
                       WHISPER_MODELS=f"meetings={empty},good={checkpoint}", **config)
        built.append(app)
        return app

    yield build, str(empty)
    for app in built:
        app.extensions["whisper_jobs"].stop()


def failed_job(client, media, **form):
    response = upload(client, media["speech.wav"], **FAST, **form)
    assert response.status_code == 303, response.get_data(as_text=True)
    job_url = response.headers["Location"]
    status = wait_finished(lambda: client.get(job_url + "/status").get_json(), job_url)
    assert status["state"] == "failed"
    return job_url, status


def test_a_failed_job_says_what_to_do_and_tries_again_with_another_model(two_models, media, caplog):
    build, folder = two_models
    client = build().test_client()
    with caplog.at_level(logging.WARNING, logger="whisper_service.queue.jobs"):
        job_url, status = failed_job(client, media)
    sentence = "The model meetings cannot be loaded on this server; choose another model."
    assert status["error"] == sentence
    # the operator's detail, with the server path, is in the log
    assert any(folder in record.getMessage() for record in caplog.records)

    page = client.get(job_url).get_data(as_text=True)
    assert sentence in page and folder not in page and "Errno" not in page
    assert 'id="try-again"' in page and ">Try again</button>" in page
    assert '<option value="good">good</option>' in page and "Try with another model" in page
    assert "<summary>Details</summary>" not in page  # nobody is signed in on an open server

    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    again = client.post(job_url + "/again", data={"csrf_token": token, "model": "good"})
    assert again.status_code == 303 and again.headers["Location"] != job_url
    retried = again.headers["Location"]
    done = wait_finished(lambda: client.get(retried + "/status").get_json(), retried)
    assert done["state"] == "done"
    assert "good" in client.get(retried).get_data(as_text=True)
    # the same again: it fails as before, as a new job
    same = client.post(job_url + "/again", data={"csrf_token": token})
    assert same.status_code == 303
    assert wait_finished(lambda: client.get(same.headers["Location"] + "/status").get_json(),
                         "again")["error"] == sentence


def test_a_signed_in_operator_sees_the_detail(two_models, media):
    build, folder = two_models
    client = build(WHISPER_API_KEYS="secret-one").test_client()
    assert sign_in(client).status_code == 303
    job_url, _ = failed_job(client, media)
    page = client.get(job_url).get_data(as_text=True)
    assert "<summary>Details</summary>" in page
    detail = page.split("<summary>Details</summary>", 1)[1]
    assert folder in detail and "ModelUnavailable" in detail


def test_a_refused_file_offers_another_file_not_a_retry(two_models, media):
    build, _ = two_models
    client = build().test_client()
    # a file that passes the upload's check and fails in the engine: its media is at fault
    service = client.application.extensions["whisper_service"]
    original = service.transcribe_file
    service.transcribe_file = lambda *a, **k: (_ for _ in ()).throw(
        TruncatedMedia("'speech.wav' is truncated: it ends before its declared length"))
    try:
        job_url, status = failed_job(client, media, model="good")
    finally:
        service.transcribe_file = original
    page = client.get(job_url).get_data(as_text=True)
    assert "is truncated" in page
    assert 'id="try-again"' not in page and "Try with another model" not in page
    assert "Upload another file" in page


def test_api_errors_have_no_paths(two_models, media):
    build, folder = two_models
    client = build().test_client()
    with open(media["speech.wav"], "rb") as f:
        answer = client.post("/v1/audio/transcriptions", content_type="multipart/form-data",
                             data={"file": (io.BytesIO(f.read()), "speech.wav"), "model": "meetings"})
    body = answer.get_json()
    assert answer.status_code >= 400, body
    message = body["error"]["message"]
    assert "meetings" in message and folder not in message and not PATH_OR_ERRNO.search(message)
