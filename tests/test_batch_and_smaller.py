"""The smaller items of issue 23: one upload's page says where its jobs stand and gives
every transcript in one zip; the job page says when another model stood in for the chosen
one; the failed and stand-in facts in the page's words."""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile

import pytest

from conftest import make_app, wait_finished
from test_app import FAST, csrf
from web.pages.archive import batch_heading
from whisper_service.queue.jobs import JobState


@pytest.fixture
def app_of(checkpoint, tmp_path):
    built = []

    def build(**config):
        app = make_app(checkpoint, tmp_path / f"app{len(built)}", **config)
        built.append(app)
        return app

    yield build
    for app in built:
        app.extensions["whisper_jobs"].stop()


def upload_many(client, paths_and_names, **form):
    files = [(io.BytesIO(path.read_bytes()), name) for path, name in paths_and_names]
    data = {"file": files, "csrf_token": csrf(client), **FAST, **form}
    return client.post("/jobs", data=data, content_type="multipart/form-data")


def test_the_batch_heading_follows_its_jobs(app_of, media):
    client = app_of().test_client()
    answer = upload_many(client, [(media["speech.wav"], "speech.wav"),
                                  (media["speech.mp3"], "speech.mp3")])
    assert answer.status_code == 303
    batch_url = answer.headers["Location"]
    ids = re.findall(r"job=([A-Za-z0-9_-]{22})", batch_url)
    assert len(ids) == 2
    for job_id in ids:
        wait_finished(lambda: client.get(f"/jobs/{job_id}/status").get_json(), job_id)
    page = client.get(batch_url).get_data(as_text=True)
    assert '<h1 id="batch-heading">2 files done</h1>' in page
    assert "queued" not in page.split("</h1>", 1)[0]
    assert "Download all 2 transcripts as one zip" in page
    assert re.search(r'name="fmt" value="txt" checked', page)
    assert re.search(r'name="fmt" value="srt" checked', page)
    assert re.search(r'name="fmt" value="json">', page)  # offered, not ticked


def test_batch_heading_words():
    class Job:
        def __init__(self, state):
            self.state = JobState(state)

    assert batch_heading([Job("queued")] * 3) == "3 files queued"
    assert batch_heading([Job("done")] * 3) == "3 files done"
    assert batch_heading([Job("done")]) == "1 file done"
    assert batch_heading([Job("done"), Job("running"), Job("queued")]) == \
        "3 files: 1 done, 1 transcribing, 1 waiting"
    assert batch_heading([Job("done"), Job("done"), Job("failed")]) == "3 files: 2 done, 1 failed"


def test_download_all_zips_every_transcript_in_the_chosen_formats(app_of, media):
    client = app_of().test_client()
    # two uploads of the same name, and a third file
    answer = upload_many(client, [(media["speech.wav"], "talk.wav"), (media["speech.mp3"], "talk.mp3"),
                                  (media["speech.ogg"], "notes.ogg")])
    ids = re.findall(r"job=([A-Za-z0-9_-]{22})", answer.headers["Location"])
    for job_id in ids:
        assert wait_finished(lambda: client.get(f"/jobs/{job_id}/status").get_json(),
                             job_id)["state"] == "done"
    query = "&".join(f"job={i}" for i in ids)
    zipped = client.get(f"/jobs/batch/transcripts.zip?{query}&fmt=txt&fmt=srt")
    assert zipped.status_code == 200 and zipped.mimetype == "application/zip"
    assert 'filename="transcripts.zip"' in zipped.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(zipped.data)) as archive:
        names = archive.namelist()
        assert sorted(names) == ["notes.srt", "notes.txt", "talk (2).srt", "talk (2).txt",
                                 "talk.srt", "talk.txt"]
        # each file is the job's own download, byte for byte
        assert archive.read("talk.srt") == client.get(f"/jobs/{ids[0]}/transcript.srt").data
        assert archive.read("talk (2).txt") == client.get(f"/jobs/{ids[1]}/transcript.txt").data
        assert archive.read("notes.txt") == client.get(f"/jobs/{ids[2]}/transcript.txt").data


def test_download_all_refuses_what_it_cannot_give(app_of, media):
    client = app_of().test_client()
    answer = upload_many(client, [(media["speech.wav"], "a.wav"), (media["speech.mp3"], "b.mp3")])
    ids = re.findall(r"job=([A-Za-z0-9_-]{22})", answer.headers["Location"])
    query = "&".join(f"job={i}" for i in ids)
    for job_id in ids:
        wait_finished(lambda: client.get(f"/jobs/{job_id}/status").get_json(), job_id)
    no_format = client.get(f"/jobs/batch/transcripts.zip?{query}")
    assert no_format.status_code == 400 and "choose at least one format" in no_format.get_data(as_text=True)
    wrong = client.get(f"/jobs/batch/transcripts.zip?{query}&fmt=docx")
    assert wrong.status_code == 400 and "&#39;docx&#39; is not a format" in wrong.get_data(as_text=True)
    none = client.get("/jobs/batch/transcripts.zip?job=nope&fmt=txt")
    assert none.status_code == 400 and "none of these jobs has a transcript" in none.get_data(as_text=True)


def test_the_job_page_says_a_stand_in_replaced_the_chosen_model(app_of, checkpoint, media, monkeypatch):
    from whisper_service import stand_ins

    app = app_of(WHISPER_MODEL=f"main={checkpoint}", WHISPER_MODELS=f"main={checkpoint},spare={checkpoint}")
    registry = app.extensions["whisper_service"].models
    # as the registry records a configured model whose download failed; "spare" as its stand-in
    registry._missing["main"] = "model 'main' could not be loaded: it could not be downloaded"
    monkeypatch.setattr(stand_ins, "choose", lambda task, language: "spare")
    client = app.test_client()
    answer = upload_many(client, [(media["speech.wav"], "speech.wav")])
    job_url = answer.headers["Location"]
    assert wait_finished(lambda: client.get(job_url + "/status").get_json(), job_url)["state"] == "done"
    page = client.get(job_url).get_data(as_text=True)
    fact = re.search(r'<dd id="model-fact">(.+?)</dd>', page, re.S).group(1)
    assert fact.startswith("spare")
    assert "standing in for main, which could not be loaded here" in " ".join(fact.split())


def test_the_job_page_names_the_model_alone_when_it_is_the_chosen_one(app_of, media):
    client = app_of().test_client()
    job_url = upload_many(client, [(media["speech.wav"], "speech.wav")]).headers["Location"]
    wait_finished(lambda: client.get(job_url + "/status").get_json(), job_url)
    page = client.get(job_url).get_data(as_text=True)
    fact = re.search(r'<dd id="model-fact">(.+?)</dd>', page, re.S).group(1)
    assert fact.strip() == "tiny-test" and "standing in" not in page
    # the downloads come twice in the page: beside the transcript (a phone) and in the side
    assert page.count('class="downloads downloads-near"') == 1
    assert page.index("downloads-near") < page.index('id="segments"')
