"""Issue 23's pages in a real browser (Chromium driven by Playwright, as in
test_browser.py): a failed job in the user's words with "Try again" and "Try with another
model", which works; on a phone the downloads come before the transcript. Screenshots
(light, dark, phone) go to test-output/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from conftest import make_app, serving
from test_browser import DESKTOP, JOB_PAGE, PHONE, TIME_ZONE, browser, choose_preset, shoot  # noqa: F401


@pytest.fixture
def broken_default(checkpoint, tmp_path):
    """A server whose default model is a CTranslate2 folder with its weights cut short (at a
    server path), and a second model that works."""
    folder = tmp_path / "server-models" / "meetings"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"\x01\x00")
    app = make_app(f"meetings={folder}", tmp_path / "app",
                   WHISPER_MODELS=f"meetings={folder},good={checkpoint}")
    with serving(app) as base:
        yield base, str(folder)


@pytest.fixture
def desktop(browser):  # noqa: F811
    context = browser.new_context(timezone_id=TIME_ZONE, locale="en-US", **DESKTOP)
    yield context.new_page()
    context.close()


@pytest.fixture
def phone(browser):  # noqa: F811
    context = browser.new_context(timezone_id=TIME_ZONE, locale="en-US", **PHONE)
    yield context.new_page()
    context.close()


def test_a_failed_job_in_the_users_words_then_another_model(desktop, phone, broken_default, media):
    base, folder = broken_default
    page = desktop
    page.goto(base + "/")
    page.set_input_files("#file", str(media["speech.wav"]))
    choose_preset(page, "Fast")
    page.click("#submit")
    page.wait_for_url(JOB_PAGE, timeout=30_000)
    failed_url = page.url
    sentence = "The model meetings cannot be loaded on this server; choose another model."
    expect(page.locator("#failure")).to_have_text(sentence, timeout=60_000)
    body = page.locator("main").inner_text()
    assert folder not in body and "Errno" not in body and "ModelUnavailable" not in body
    expect(page.get_by_role("button", name="Try again")).to_be_visible()
    expect(page.get_by_role("button", name="Try with another model")).to_be_visible()
    expect(page.locator("#other-model option")).to_have_text(["good"])
    expect(page.get_by_text("Details")).to_have_count(0)  # an open server: nobody signed in
    shoot(page, "desktop-job-failed")
    phone.goto(failed_url)
    expect(phone.locator("#failure")).to_have_text(sentence)
    shoot(phone, "phone-job-failed")

    page.get_by_role("button", name="Try with another model").click()
    page.wait_for_url(JOB_PAGE, timeout=30_000)
    assert page.url != failed_url
    expect(page.locator(".segment").first).to_be_visible(timeout=60_000)
    expect(page.locator("#model-fact")).to_have_text("good")


def test_on_a_phone_the_downloads_come_before_the_transcript(phone, desktop, broken_default, media):
    base, _ = broken_default
    desktop.goto(base + "/")
    desktop.set_input_files("#file", str(media["speech.wav"]))
    desktop.select_option("#model", "good")
    choose_preset(desktop, "Fast")
    desktop.click("#submit")
    desktop.wait_for_url(JOB_PAGE, timeout=30_000)
    expect(desktop.locator(".segment").first).to_be_visible(timeout=60_000)
    # a desktop: the downloads in the side column, once
    expect(desktop.locator(".downloads-near")).to_be_hidden()
    expect(desktop.locator(".downloads-side")).to_be_visible()

    phone.goto(desktop.url)
    near = phone.locator(".downloads-near")
    expect(near).to_be_visible()
    expect(phone.locator(".downloads-side")).to_be_hidden()
    expect(near.get_by_role("link", name="SRT")).to_be_visible()
    first_line = phone.locator(".segment").first.bounding_box()
    assert near.bounding_box()["y"] < first_line["y"]
    # within the first screen, and the transcript still starts there too
    assert near.bounding_box()["y"] < PHONE["viewport"]["height"] * 0.6
    assert first_line["y"] < PHONE["viewport"]["height"] * 0.75
    shoot(phone, "phone-transcript-downloads")
    with phone.expect_download() as download:
        near.get_by_role("link", name="TXT").click()
    assert download.value.suggested_filename == "speech.txt"


def test_an_estimate_that_ran_out_is_not_almost_done(desktop, media, checkpoint, tmp_path):
    """The page counts the time left down between reports; when it runs out before the job
    is done, "Almost done…" only where the bar is nearly full, and the percentage is shown
    once (beside the bar, not in the state)."""
    from test_browser import pause_page_clock, reported

    app = make_app(checkpoint, tmp_path / "idle")
    app.extensions["whisper_jobs"].stop()
    page = desktop
    with serving(app) as base:
        answers = [reported({"state": "running", "label": "Transcribing…", "progress": 0.5,
                             "eta_seconds": 3})]
        page.route(re.compile(r"/status$"), lambda route: route.fulfill(json=answers[-1]))
        page.clock.install()
        page.goto(base + "/")
        page.set_input_files("#file", str(media["speech.wav"]))
        page.click("#submit")
        page.wait_for_url(JOB_PAGE, timeout=30_000)
        eta = page.locator("#job-eta")
        expect(eta).to_have_text(re.compile(r"^About \d s left\.$"))
        expect(page.locator("#job-percent")).to_have_text("50 %")
        expect(page.locator("#job-state")).to_have_text("Transcribing…")
        pause_page_clock(page)
        page.clock.run_for(5_000)  # past the estimate, the bar at half
        expect(eta).to_have_text("Taking longer than estimated…")
        shoot(page, "desktop-job-longer-than-estimated")
        answers.append(reported({"state": "running", "label": "Transcribing…", "progress": 0.97,
                                 "eta_seconds": 1}))
        # the page's clock moves only when the test moves it; the answers come in real time
        for _ in range(200):
            page.clock.run_for(250)
            if page.locator("#job-percent").inner_text() == "97 %":
                break
        expect(page.locator("#job-percent")).to_have_text("97 %")  # its estimate runs out too
        page.clock.run_for(2_000)
        expect(eta).to_have_text("Almost done…")
        page.clock.resume()
        page.unroute(re.compile(r"/status$"))
