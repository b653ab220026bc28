"""The web pages through Flask's test client: every route and every error page."""

from __future__ import annotations

import io
import os
import re
import time

import pytest

from conftest import wait_finished

FAST = {"beam_size": "2", "patience": "2", "language": "en", "temperature": "0"}
JOB_URL = re.compile(r"^/jobs/([A-Za-z0-9_-]{22})$")


def csrf(client) -> str:
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def upload(client, path, name=None, token=None, **form):
    with open(path, "rb") as f:
        data = {"file": (io.BytesIO(f.read()), name or path.name), **form}
    data["csrf_token"] = token or csrf(client)
    return client.post("/jobs", data=data, content_type="multipart/form-data")


def wait_until_finished(client, job_url, seconds=60):
    return wait_finished(lambda: client.get(job_url + "/status").get_json(), job_url, seconds)


def test_upload_page_offers_every_option(client, app):
    page = client.get("/").get_data(as_text=True)
    for field in ("file", "task", "language", "model", "beam_size", "patience", "temperature",
                  "best_of", "initial_prompt", "condition_on_previous_text", "word_timestamps",
                  "max_line_width", "max_line_count", "csrf_token"):
        assert f'name="{field}"' in page
    assert 'id="beam_size" name="beam_size" type="number" min="1" max="16" step="1"\n           placeholder="5"' in page
    assert 'placeholder="1"' in page  # patience, from the Balanced preset
    assert "Up to 2 MB" in page
    assert '<option value="tiny-test" selected data-english-only="false">tiny-test</option>' in page  # by its name, never its path
    assert '<option value="ko">Korean</option>' in page


def test_upload_to_transcript_and_downloads(client, media):
    response = upload(client, media["speech.mp3"], name="강의 talk.mp3", **FAST)
    assert response.status_code == 303
    job_url = response.headers["Location"]
    assert JOB_URL.match(job_url)
    assert wait_until_finished(client, job_url)["state"] == "done"

    page = client.get(job_url).get_data(as_text=True)
    assert "강의 talk.mp3" in page
    assert "English (100 %)" in page
    assert 'id="player"' in page and 'src="' + job_url + '/media"' in page
    assert page.count('class="segment"') >= 1
    assert "beam size 2, patience 2.0" in page

    srt_link = re.search(r'href="([^"]+\.srt)" download', page).group(1)
    srt = client.get(srt_link)
    assert srt.status_code == 200
    assert srt.headers["Content-Type"] == "application/x-subrip; charset=utf-8"
    disposition = srt.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="__ talk.srt";')
    assert "filename*=UTF-8''%EA%B0%95%EC%9D%98%20talk.srt" in disposition
    assert re.match(r"1\n00:00:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n", srt.get_data(as_text=True))
    vtt = client.get(srt_link[:-4] + ".vtt").get_data(as_text=True)
    assert vtt.startswith("WEBVTT\n\n")
    assert client.get(srt_link[:-4] + ".json").get_json()["language"] == "en"

    media_response = client.get(job_url + "/media", headers={"Range": "bytes=0-99"})
    assert media_response.status_code == 206
    assert len(media_response.data) == 100
    assert media_response.headers["Content-Type"] == "audio/mpeg"

    recent = client.get("/jobs").get_data(as_text=True)
    assert "강의 talk.mp3" in recent and job_url in recent


def test_status_json(client, media):
    job_url = upload(client, media["speech.wav"], **FAST).headers["Location"]
    status = client.get(job_url + "/status").get_json()
    assert status["state"] in ("queued", "running", "done")
    assert set(status) == {"state", "label", "progress", "eta_seconds", "position", "error",
                           "cancelling", "wait_seconds"}
    assert wait_until_finished(client, job_url)["progress"] == 1.0


def test_every_page_sends_security_headers(client):
    response = client.get("/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in response.get_data(as_text=True)  # no inline script


def test_post_without_csrf_token_is_refused(client, media):
    with open(media["speech.wav"], "rb") as f:
        response = client.post("/jobs", data={"file": (f, "speech.wav")},
                               content_type="multipart/form-data")
    assert response.status_code == 400
    assert "did not come from this site" in response.get_data(as_text=True)
    response = upload(client, media["speech.wav"], token="forged")
    assert response.status_code == 400


def test_filename_is_escaped_everywhere(client, media):
    name = "<img src=x onerror=alert(1)>.wav"
    job_url = upload(client, media["speech.wav"], name=name, **FAST).headers["Location"]
    wait_until_finished(client, job_url)
    for page in (client.get(job_url), client.get("/jobs")):
        text = page.get_data(as_text=True)
        assert "<img src=x" not in text
        assert "&lt;img src=x onerror=alert(1)&gt;.wav" in text


@pytest.mark.parametrize("name, status, words", [
    ("notes.mp3", 415, "notes.mp3 is not audio or video we can read."),
    ("talk.mp4", 422, "talk.mp4 has no sound to transcribe."),
    ("empty.wav", 422, "empty.wav is empty."),
])
def test_bad_media_is_refused_at_upload(client, media, name, status, words):
    response = upload(client, media[name], **FAST)
    assert response.status_code == status
    assert words in response.get_data(as_text=True)


def test_truncated_file_fails_its_job_with_the_reason(client, media):
    job_url = upload(client, media["truncated.mp3"], **FAST).headers["Location"]
    status = wait_until_finished(client, job_url)
    assert status["state"] == "failed"
    assert "is truncated" in status["error"]
    page = client.get(job_url).get_data(as_text=True)
    assert "This file could not be transcribed: &#39;truncated.mp3&#39; is truncated" in page


@pytest.mark.parametrize("form, words", [
    ({"beam_size": "99"}, "beam_size: must be in [1, 16]; got 99"),
    ({"task": "summarize"}, "task: must be one of transcribe, translate"),
    ({"model": "large-v2"}, "model: &#39;large-v2&#39; is not offered here"),
    ({"max_line_width": "20"}, "word_timestamps: must be on for max_line_width"),
])
def test_bad_option_is_400_naming_the_field(client, media, form, words):
    response = upload(client, media["speech.wav"], **form)
    assert response.status_code == 400
    assert words in response.get_data(as_text=True)


def test_missing_file_is_400(client):
    response = client.post("/jobs", data={"csrf_token": csrf(client)})
    assert response.status_code == 400
    assert "choose an audio or video file" in response.get_data(as_text=True)


def test_too_large_upload_is_413_page(client):
    data = {"file": (io.BytesIO(b"\0" * (3 * 1024 * 1024)), "big.wav"), "csrf_token": csrf(client)}
    response = client.post("/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 413
    assert "larger than this server accepts (2 MB)" in response.get_data(as_text=True)


def test_full_queue_is_503_with_retry_after(busy_client, media):
    token = csrf(busy_client)
    first = upload(busy_client, media["speech.wav"], token=token, **FAST)
    assert first.status_code == 303
    response = upload(busy_client, media["speech.wav"], token=token, **FAST)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert "busy" in response.get_data(as_text=True)


def test_cancel_and_delete(busy_client, media):
    job_url = upload(busy_client, media["speech.wav"], **FAST).headers["Location"]
    page = busy_client.get(job_url).get_data(as_text=True)
    assert "number 1 in the queue" in page
    token = csrf(busy_client)
    assert busy_client.post(job_url + "/cancel", data={"csrf_token": token}).status_code == 303
    assert busy_client.get(job_url + "/status").get_json()["state"] == "cancelled"
    assert "This job was cancelled." in busy_client.get(job_url).get_data(as_text=True)
    assert busy_client.post(job_url + "/delete", data={"csrf_token": token}).status_code == 303
    assert busy_client.get(job_url).status_code == 404


def test_unknown_job_is_404_page(client):
    assert client.get("/jobs/AAAAAAAAAAAAAAAAAAAAAA").status_code == 404
    assert client.get("/jobs/AAAAAAAAAAAAAAAAAAAAAA/media").status_code == 404
    response = client.get("/jobs/..%2F..%2Fetc%2Fpasswd")
    assert response.status_code == 404
    assert "no such page or transcript" in response.get_data(as_text=True)


def test_unknown_download_format_is_400(client, media):
    job_url = upload(client, media["speech.wav"], **FAST).headers["Location"]
    wait_until_finished(client, job_url)
    response = client.get(job_url + "/transcript.docx")
    assert response.status_code == 400
    assert "must be one of txt, srt, vtt, tsv, json" in response.get_data(as_text=True)


def test_works_without_javascript(client, media):
    """Form post -> job page that refreshes itself -> transcript with plain download links."""
    job_url = upload(client, media["speech.wav"], **FAST).headers["Location"]
    waiting = client.get(job_url).get_data(as_text=True)
    if 'id="job-status"' in waiting:
        assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in waiting
    wait_until_finished(client, job_url)
    done = client.get(job_url).get_data(as_text=True)
    assert "http-equiv" not in done
    # the name is in the download's header, never in its URL
    assert re.search(r'href="/jobs/[^"]+/transcript\.txt" download', done)


def test_the_default_model_loads_in_the_background_at_start(checkpoint, tmp_path):
    from conftest import make_app

    app = make_app(checkpoint, tmp_path, WHISPER_PRELOAD="true")
    try:
        app.extensions["whisper_preload"].join(timeout=60)
        assert app.extensions["whisper_service"].models.loaded() == ["tiny-test"]
    finally:
        app.extensions["whisper_jobs"].stop()


def test_health(client):
    assert client.get("/healthz").get_json() == {"status": "ok", "pid": os.getpid()}


def test_bad_setting_stops_start_up(checkpoint, tmp_path):
    from app import create_app
    from whisper_service.errors import ConfigError

    with pytest.raises(ConfigError, match="WHISPER_MAX_DURATION"):
        create_app({"WHISPER_MODEL": checkpoint, "WHISPER_MAX_DURATION": "soon",
                    "WHISPER_DATA_DIR": str(tmp_path)})


def test_a_job_survives_a_restart(checkpoint, tmp_path, long_speech):
    from conftest import make_app

    first = make_app(checkpoint, tmp_path, WHISPER_MAX_UPLOAD_MB="50")
    client = first.test_client()
    job_url = upload(client, long_speech, **FAST).headers["Location"]
    queue = first.extensions["whisper_jobs"]
    job_id = JOB_URL.match(job_url).group(1)
    deadline = time.monotonic() + 30
    while queue.get(job_id).state.value == "queued" and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.stop(timeout=0)  # the server goes away mid-job
    assert queue.get(job_id).state.value == "running"

    second = make_app(checkpoint, tmp_path)  # started again on the same data
    try:
        status = wait_until_finished(second.test_client(), job_url)
        assert status["state"] == "done"
        assert second.extensions["whisper_jobs"].get(job_id).attempts == 2  # it ran again
        assert second.extensions["whisper_jobs"].transcript(job_id).segments
    finally:
        second.extensions["whisper_jobs"].stop()


def test_concurrent_uploads_all_finish_in_order(app, media):
    import threading

    results, lock = [], threading.Lock()

    def post(index):
        client = app.test_client()
        response = upload(client, media["speech.wav"], name=f"clip{index}.wav", **FAST)
        with lock:
            results.append((response.status_code, response.headers.get("Location")))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(code for code, _ in results) == [303] * 5
    queue = app.extensions["whisper_jobs"]
    client = app.test_client()
    jobs = []
    for _, location in results:
        assert wait_until_finished(client, location)["state"] == "done"
        jobs.append(queue.get(JOB_URL.match(location).group(1)))
    by_submission = sorted(jobs, key=lambda job: job.created_at)
    assert [j.id for j in sorted(jobs, key=lambda job: job.started_at)] == [j.id for j in by_submission]
