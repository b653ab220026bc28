"""The Models page through Flask's test client: the served models with "Try it", the form
that starts a fine-tune (a bad archive answered on the page with its sentence), running
fine-tunes with their curve, finished ones with their before/after table."""

from __future__ import annotations

import io
import re

import pytest

from conftest import make_app
from finetune_states import write_states
from whisper_service.checkpoints import BUNDLED


@pytest.fixture
def app(tmp_path):
    write_states(tmp_path / "jobs")
    # HTTP only: no fine-tune runs here, so the running one stays as written
    yield make_app(BUNDLED, tmp_path, WHISPER_ROLE="web")


def test_the_page_shows_served_running_and_finished_models(app):
    html = app.test_client().get("/models").get_data(as_text=True)
    assert 'href="/models" aria-current="page">Models</a>' in html
    assert "tiny.en (bundled, English only)" in html and "names-en" in html  # done: offered
    running = html[html.index('id="running-title"'):html.index('id="finished-title"')]
    assert "names-more" in running and "step 7 of 20" in running and "held-out WER 50.0 %" in running
    assert running.count("<polyline") == 2 and 'points=""' not in running
    finished = html[html.index('id="finished-title"'):]
    cells = re.findall(r"<td>([^<]*)</td>", finished)
    assert cells == ["bundled", "97.0 %", "45.7 %", "6", "names-en", "3.0 %", "0.9 %", "6"]
    assert 'href="/?model=names-en">Try it</a>' in finished


def test_try_it_opens_the_upload_page_with_the_model_chosen(app):
    def chosen(url: str) -> list:
        html = app.test_client().get(url).get_data(as_text=True)
        return re.findall(r'<option value="([^"]+)" selected[ >]', html)

    assert chosen("/?model=names-en") == ["names-en"]
    assert chosen("/?model=not-here") == chosen("/") != ["names-en"]  # the page's default


def test_a_bad_archive_is_answered_on_the_page_with_its_sentence(tmp_path):
    app = make_app(BUNDLED, tmp_path)
    try:
        response = app.test_client().post("/models", data={
            "dataset": (io.BytesIO(b"just text"), "clips.zip"), "model": BUNDLED, "name": "mine"})
        assert response.status_code == 400
        html = response.get_data(as_text=True)
        assert "the dataset is not a zip archive" in html
        assert 'value="mine"' in html  # what was typed stays
    finally:
        app.extensions["whisper_finetunes"].stop()
        app.extensions["whisper_jobs"].stop()


def test_a_host_that_serves_http_only_refuses_to_fine_tune(app):
    response = app.test_client().post("/api/v1/fine-tunes", data={
        "dataset": (io.BytesIO(b"PK"), "clips.zip"), "model": BUNDLED, "name": "mine"})
    assert response.status_code == 400
    assert "WHISPER_ROLE=web" in response.get_json()["error"]["message"]


def test_the_form_offers_each_training_method_and_keeps_the_one_chosen(tmp_path):
    from web.pages.models import METHODS
    from whisper_service.training.lora import METHODS as TRAINING_METHODS

    assert [value for value, _ in METHODS] == list(TRAINING_METHODS)
    app = make_app(BUNDLED, tmp_path)
    try:
        client = app.test_client()
        offered = re.findall(r'<option value="(\w+)"( selected)?>', client.get("/models").get_data(
            as_text=True).split('id="method"', 1)[1].split("</select>", 1)[0])
        assert offered == [("auto", " selected"), ("full", ""), ("lora", "")]
        response = client.post("/models", data={
            "dataset": (io.BytesIO(b"just text"), "clips.zip"), "model": BUNDLED, "name": "mine",
            "method": "qlora"})
        assert response.status_code == 400
        html = response.get_data(as_text=True)
        assert "method must be one of auto, full, lora; got &#39;qlora&#39;" in html
        response = client.post("/models", data={
            "dataset": (io.BytesIO(b"just text"), "clips.zip"), "model": BUNDLED, "name": "mine",
            "method": "lora"})
        assert "the dataset is not a zip archive" in response.get_data(as_text=True)
        assert '<option value="lora" selected>' in response.get_data(as_text=True)
    finally:
        app.extensions["whisper_finetunes"].stop()
        app.extensions["whisper_jobs"].stop()
