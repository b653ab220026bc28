"""The pages as people meet them (issue 15, items 5-10), through Flask's test client: what a
browser without JavaScript gets, and the markup the scripts build on."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest

from conftest import make_app
from test_app import FAST, JOB_URL, csrf, upload, wait_until_finished
from web.pages.views import retention_words, state_words
from whisper_service.queue.jobs import JobState

STATIC = Path(__file__).resolve().parents[1] / "static"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[^>]+\sstyle=", re.I)
EVENT_ATTRIBUTE = re.compile(r"<[^>]+\son[a-z]+=", re.I)


def job_of(app, job_url):
    return app.extensions["whisper_jobs"].get(JOB_URL.match(job_url).group(1))


def queued_job(busy_client, media, name="speech.wav"):
    return upload(busy_client, media[name], **FAST).headers["Location"]


# --- 5: progress, estimates, the tab may be closed --------------------------------------

def test_a_waiting_job_shows_its_place_and_that_the_tab_may_close(busy_client, media):
    page = busy_client.get(queued_job(busy_client, media)).get_data(as_text=True)
    assert "Waiting: number 1 in the queue" in page
    assert "You can close this tab: the job keeps running on the server." in page
    assert "Starts when the jobs ahead of it are done." in page  # no run seen yet: no number


def finish_runs(app, *seconds: float, state: str = "done") -> None:
    """Rows of jobs that ran this long, as if a consumer (of any process) had finished them."""
    with app.extensions["whisper_jobs"].store._connect(write=True) as db:  # SQLite
        for index, run in enumerate(seconds):
            db.execute(
                "INSERT INTO jobs (id, state, filename, options, created_at, started_at, "
                "finished_at) VALUES (?, ?, 'a.wav', '{}', 0, 100, ?)",
                (f"{state[0]}{index:021d}", state, 100.0 + run))


def test_a_waiting_job_gets_an_estimate_from_the_runs_done(busy_client, media):
    job_url = queued_job(busy_client, media)
    app = busy_client.application
    finish_runs(app, 40.0)
    status = busy_client.get(job_url + "/status").get_json()
    assert status["position"] == 1 and status["wait_seconds"] == 40.0
    assert "About 40 s until it is done." in busy_client.get(job_url).get_data(as_text=True)


def test_the_expected_wait_is_the_place_times_the_median_of_the_latest_runs(busy_client):
    queue = busy_client.application.extensions["whisper_jobs"]
    assert queue.expected_wait(3) is None  # nothing done yet
    finish_runs(busy_client.application, 10.0, 20.0, 90.0)
    finish_runs(busy_client.application, 999.0, state="failed")  # not counted
    assert queue.expected_wait(3) == 60.0  # 3 x the median, 20 s
    assert queue.expected_wait(None) is None  # not queued


# --- 6: cancel and delete --------------------------------------------------------------

def test_cancel_is_not_the_primary_button(busy_client, media):
    page = busy_client.get(queued_job(busy_client, media)).get_data(as_text=True)
    assert re.search(r'<button type="submit" class="secondary" id="cancel-button">Cancel</button>', page)


def test_a_running_job_with_a_cancel_asked_for_reads_cancelling(busy_client, media):
    job = job_of(busy_client.application, queued_job(busy_client, media))
    running = dataclasses.replace(job, state=JobState.RUNNING, cancel_requested=True, progress=0.3)
    assert state_words(running) == "Cancelling…"
    assert state_words(dataclasses.replace(running, cancel_requested=False)) == "Transcribing…"
    assert state_words(dataclasses.replace(job, state=JobState.CANCELLED)) == "Cancelled"


def test_deleting_a_waiting_job_asks_first(busy_client, media):
    job_url = queued_job(busy_client, media)
    token = csrf(busy_client)
    asked = busy_client.post(job_url + "/delete", data={"csrf_token": token})
    assert asked.status_code == 200
    text = asked.get_data(as_text=True)
    assert "Delete speech.wav?" in text and "still waiting in the queue" in text
    assert 'name="confirm" value="yes"' in text
    assert busy_client.get(job_url).status_code == 200  # still there
    done = busy_client.post(job_url + "/delete", data={"csrf_token": token, "confirm": "yes"})
    assert done.status_code == 303
    assert busy_client.get(job_url).status_code == 404


# --- 7: presets, plain-words help, models ----------------------------------------------

def test_presets_come_first_and_the_expert_fields_are_under_advanced(client):
    page = client.get("/").get_data(as_text=True)
    labels = re.findall(r'<label for="preset-(\w+)">([^<]+)</label>', page)
    assert labels == [("fast", "Fast"), ("balanced", "Balanced"), ("accurate", "Most accurate")]
    assert re.search(r'id="preset-balanced"[^>]*checked', page, re.S)
    advanced = page[page.index('<details class="advanced">'):page.index("</details>", page.index('<details class="advanced">'))]
    assert page.index("preset-fast") < page.index('<details class="advanced">')
    for field in ("beam_size", "patience", "temperature", "best_of", "mode", "initial_prompt",
                  "condition_on_previous_text", "word_timestamps", "max_line_width", "max_line_count"):
        assert f'name="{field}"' in advanced, field
        hint = re.search(rf'<small id="{field}-hint">([^<]+)</small>', advanced)
        assert hint and len(hint.group(1).split()) >= 5, field  # one line in plain words


@pytest.mark.parametrize("form, beam_size, patience, temperature", [
    ({"preset": "fast"}, 1, 1.0, (0.0,)),
    ({"preset": "balanced"}, 5, 1.0, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
    ({"preset": "accurate"}, 10, 2.0, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
    ({"preset": "accurate", "beam_size": "3"}, 3, 2.0, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
    ({"beam_size": "", "patience": ""}, 5, 1.0, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
])
def test_a_preset_fills_the_fields_left_empty(busy_client, media, form, beam_size, patience, temperature):
    job_url = upload(busy_client, media["speech.wav"], **form).headers["Location"]
    options = job_of(busy_client.application, job_url).options
    assert (options.beam_size, options.patience, options.temperature) == (beam_size, patience, temperature)


def test_an_unknown_preset_is_refused(client, media):
    response = upload(client, media["speech.wav"], preset="slowest")
    assert response.status_code == 400
    assert "preset: must be one of fast, balanced, accurate" in response.get_data(as_text=True)


def test_models_by_name_with_the_download_each_needs(checkpoint, tmp_path):
    app = make_app(checkpoint, tmp_path, WHISPER_MODELS="bundled,base.en")
    try:
        page = app.test_client().get("/").get_data(as_text=True)
        assert ('<option value="bundled" data-english-only="true">tiny.en (bundled, English only)'
                '</option>') in page
        assert ('<option value="base.en" data-english-only="true">base.en (first use downloads '
                '0.15 GB)</option>') in page
        assert "fetched once, on its first use" in page
        assert str(tmp_path) not in page  # no server path anywhere
        (tmp_path / "models").mkdir(exist_ok=True)
        (tmp_path / "models" / "base.en.pt").write_bytes(b"weights")
        page = app.test_client().get("/").get_data(as_text=True)
        assert '<option value="base.en" data-english-only="true">base.en</option>' in page
    finally:
        app.extensions["whisper_jobs"].stop()


def test_the_stand_in_notice_is_on_the_upload_page(client, monkeypatch):
    from whisper_service.models import ModelRegistry

    sentence = "model 'turbo' could not be loaded; tiny.en (bundled, English only) transcribes instead"
    monkeypatch.setattr(ModelRegistry, "stand_in_notice", property(lambda self: sentence))
    page = client.get("/").get_data(as_text=True)
    assert f'<p class="notice" role="status">{sentence.replace(chr(39), "&#39;")}</p>' in page


# --- 8: several files in one upload ----------------------------------------------------

def several(client, media, *names, **form):
    files = []
    for name in names:
        files.append((io.BytesIO(media[name].read_bytes()), name))
    data = {"file": files, "csrf_token": csrf(client), **FAST, **form}
    return client.post("/jobs", data=data, content_type="multipart/form-data")


def test_several_files_become_jobs_listed_together(busy_client, media):
    app = busy_client.application
    app.extensions["whisper_jobs"].max_queued = 5
    response = several(busy_client, media, "speech.wav", "speech.mp3", "speech.flac")
    assert response.status_code == 303
    batch_url = response.headers["Location"]
    ids = re.findall(r"job=([A-Za-z0-9_-]{22})", batch_url)
    assert len(set(ids)) == 3
    page = busy_client.get(batch_url).get_data(as_text=True)
    assert "3 files queued" in page
    for name in ("speech.wav", "speech.mp3", "speech.flac"):
        assert f">{name}</a>" in page
    assert page.index("speech.wav") < page.index("speech.mp3") < page.index("speech.flac")
    recent = busy_client.get("/jobs").get_data(as_text=True)
    assert all(job_id in recent for job_id in ids)


def test_a_bad_file_among_several_is_named_and_the_rest_are_queued(busy_client, media):
    busy_client.application.extensions["whisper_jobs"].max_queued = 5
    response = several(busy_client, media, "speech.wav", "notes.mp3")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "1 file queued" in page and ">speech.wav</a>" in page
    assert "1 file was not queued" in page
    assert "notes.mp3 is not audio or video we can read." in page


def test_a_full_queue_midway_names_the_files_left_out(busy_client, media):
    response = several(busy_client, media, "speech.wav", "speech.mp3")  # room for one
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "The queue is full, so speech.mp3 was not queued; try it again later." in page


# --- 9: errors next to the file field, the detail behind a toggle -----------------------

def test_a_file_that_is_no_media_is_explained_next_to_the_file_field(client, media):
    response = upload(client, media["notes.mp3"], **FAST)
    assert response.status_code == 415
    page = response.get_data(as_text=True)
    field = page[page.index('<div class="drop invalid" id="drop-zone">'):page.index("</fieldset>")]
    assert 'aria-invalid="true"' in field
    error = re.search(r'<div class="field-error">\s*<p>(.+?)</p>\s*<details><summary>Details</summary>'
                      r'<p class="detail">(.+?)</p></details>', field, re.S)
    assert error.group(1) == "notes.mp3 is not audio or video we can read."
    assert "(ffmpeg: " in error.group(2)  # the technical detail, behind the toggle
    assert "ffmpeg" not in error.group(1)


# --- 10: the finished look -------------------------------------------------------------

def test_app_name_favicon_and_the_current_page_in_the_navigation(client):
    index = client.get("/").get_data(as_text=True)
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in index
    assert "<title>Transcribe · Whisper</title>" in index
    assert re.search(r'<a href="/" aria-current="page">Transcribe</a>', index)
    assert 'href="/jobs" aria-current' not in index
    recent = client.get("/jobs").get_data(as_text=True)
    assert re.search(r'<a href="/jobs" aria-current="page">Recent jobs</a>', recent)
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert b"<script" not in icon.data


def test_the_style_has_dark_mode_and_large_tap_targets():
    css = (STATIC / "style.css").read_text()
    assert "@media (prefers-color-scheme: dark)" in css
    assert re.search(r"--tap: 2\.75rem", css)  # 44 px, the usual smallest target
    assert "position: sticky" in css.split(".player-bar", 1)[1].split("}", 1)[0]


def test_the_jobs_list_has_local_times_human_states_and_the_retention(busy_client, media):
    queued_job(busy_client, media)
    page = busy_client.get("/jobs").get_data(as_text=True)
    assert "Finished jobs and their files are deleted after 7 days." in page
    assert re.search(r'<span class="badge queued"\s+data-status-url="[^"]+">Waiting: number 1 in the queue</span>', page)
    assert re.search(r'<time class="local" datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00">', page)
    assert ">queued<" not in page


@pytest.mark.parametrize("hours, words", [(168, "7 days"), (24, "1 day"), (36, "36 hours"), (1, "1 hour"), (0.5, "0.5 hours")])
def test_retention_in_words(hours, words):
    assert retention_words(hours) == words


def test_every_page_works_under_the_policy_without_inline_script_or_style(client, busy_client, media):
    done_url = upload(client, media["speech.wav"], **FAST).headers["Location"]
    assert wait_until_finished(client, done_url)["state"] == "done"
    waiting_url = queued_job(busy_client, media)
    pages = [client.get("/"), client.get(done_url), client.get("/jobs"), client.get("/jobs/nope"),
             busy_client.get(waiting_url), busy_client.get("/jobs/batch?job=" + waiting_url[6:]),
             busy_client.post(waiting_url + "/delete", data={"csrf_token": csrf(busy_client)}),
             upload(client, media["notes.mp3"])]
    for response in pages:
        text = response.get_data(as_text=True)
        assert "<html" in text
        assert not INLINE_SCRIPT.search(text), response.request.path
        assert not STYLE_ATTRIBUTE.search(text), response.request.path
        assert not EVENT_ATTRIBUTE.search(text), response.request.path
        assert "https://" not in text and "http://" not in text  # nothing from elsewhere
    for template in TEMPLATES.glob("*.html"):
        source = template.read_text()
        assert not INLINE_SCRIPT.search(source) and " style=" not in source, template.name


def test_the_transcript_has_find_copy_and_one_tab_stop_markup(client, media):
    job_url = upload(client, media["speech.wav"], **FAST).headers["Location"]
    wait_until_finished(client, job_url)
    page = client.get(job_url).get_data(as_text=True)
    assert '<input id="find" type="search"' in page
    assert 'id="copy-timed">Copy with timestamps</button>' in page
    assert '<ol class="segments" id="segments" aria-label="Transcript">' in page
    # the player comes before the transcript, the facts after it: on a phone the text is on
    # the first screen
    assert page.index('id="player"') < page.index('id="segments"') < page.index('class="facts"')
