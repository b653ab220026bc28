"""The web pages through Flask's test client: upload, transcript, downloads, every error page."""

from __future__ import annotations

import io
import re

import pytest

FAST = {"beam_size": "2", "patience": "2", "language": "en"}


def upload(client, path, name=None, **form):
    with open(path, "rb") as f:
        data = {"file": (io.BytesIO(f.read()), name or path.name), **form}
    return client.post("/transcribe", data=data, content_type="multipart/form-data")


def test_upload_page_offers_the_options(client, app):
    page = client.get("/").get_data(as_text=True)
    for field in ('name="file"', 'name="task"', 'name="language"', 'name="model"',
                  'name="beam_size"', 'name="patience"'):
        assert field in page
    assert 'value="5"' in page and 'value="1.0"' in page  # beam size and patience defaults
    assert "up to 2 MB" in page
    assert app.extensions["whisper_settings"].model in page


def test_upload_to_transcript_and_downloads(client, media):
    response = upload(client, media["speech.mp3"], name="강의 talk.mp3", **FAST)
    assert response.status_code == 303
    page_url = response.headers["Location"]
    assert re.fullmatch(r"/t/[A-Za-z0-9_-]{22}", page_url)

    page = client.get(page_url).get_data(as_text=True)
    assert "강의 talk.mp3" in page
    assert "English" in page
    assert page.count("<li data-start=") >= 1

    srt = client.get(page_url + "/download.srt")
    assert srt.status_code == 200
    assert srt.headers["Content-Type"] == "application/x-subrip; charset=utf-8"
    disposition = srt.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''%EA%B0%95%EC%9D%98%20talk.srt" in disposition
    assert re.match(r"1\n00:00:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n", srt.get_data(as_text=True))
    vtt = client.get(page_url + "/download.vtt").get_data(as_text=True)
    assert vtt.startswith("WEBVTT\n\n")
    assert client.get(page_url + "/download.json").get_json()["language"] == "en"


def test_filename_is_escaped(client, media):
    response = upload(client, media["speech.wav"], name="<img src=x onerror=alert(1)>.wav",
                      **FAST)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.wav" in page


@pytest.mark.parametrize("name, status, words", [
    ("notes.mp3", 415, "is not an audio or video file"),
    ("talk.mp4", 422, "no audio stream found in &#39;talk.mp4&#39;"),
    ("empty.wav", 422, "is empty"),
    ("truncated.mp3", 422, "is truncated"),
])
def test_bad_media_pages(client, media, name, status, words):
    response = upload(client, media[name], **FAST)
    assert response.status_code == status
    assert words in response.get_data(as_text=True)


def test_bad_option_is_400_naming_the_field(client, media):
    response = upload(client, media["speech.wav"], beam_size="99")
    assert response.status_code == 400
    assert "beam_size: must be in [1, 16]; got 99" in response.get_data(as_text=True)


def test_missing_file_is_400(client):
    response = client.post("/transcribe", data={"task": "transcribe"})
    assert response.status_code == 400
    assert "choose an audio or video file" in response.get_data(as_text=True)


def test_unlisted_model_is_400(client, media):
    response = upload(client, media["speech.wav"], model="large-v2", **FAST)
    assert response.status_code == 400
    assert "model: &#39;large-v2&#39; is not offered here" in response.get_data(as_text=True)


def test_too_large_upload_is_413_page(client):
    data = {"file": (io.BytesIO(b"\0" * (3 * 1024 * 1024)), "big.wav")}
    response = client.post("/transcribe", data=data, content_type="multipart/form-data")
    assert response.status_code == 413
    assert "larger than this server accepts (2 MB)" in response.get_data(as_text=True)


def test_unknown_transcript_is_404_page(client):
    assert client.get("/t/AAAAAAAAAAAAAAAAAAAAAA").status_code == 404
    response = client.get("/t/../../etc/passwd")
    assert response.status_code == 404
    assert "no such page or transcript" in response.get_data(as_text=True)


def test_unknown_download_format_is_400(client, media):
    location = upload(client, media["speech.wav"], **FAST).headers["Location"]
    response = client.get(location + "/download.docx")
    assert response.status_code == 400
    assert "must be one of txt, srt, vtt, tsv, json" in response.get_data(as_text=True)


def test_health(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_bad_setting_stops_start_up(checkpoint):
    from app import create_app
    from whisper_service.errors import ConfigError

    with pytest.raises(ConfigError, match="WHISPER_MAX_DURATION"):
        create_app({"WHISPER_MODEL": checkpoint, "WHISPER_MAX_DURATION": "soon"})
