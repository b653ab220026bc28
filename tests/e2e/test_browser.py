"""A real browser (headless Debian Chromium driven by Playwright) against the app on loopback."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from conftest import make_app, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
PERCENT_WATCHER = """
document.addEventListener("DOMContentLoaded", () => {
  const label = document.getElementById("job-percent");
  if (!label) return;
  window.reportPercent(label.textContent);
  new MutationObserver(() => window.reportPercent(label.textContent))
    .observe(label, { childList: true, characterData: true, subtree: true });
});
"""
SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n.+", re.S)


@pytest.fixture
def live_server(checkpoint, tmp_path):
    app = make_app(checkpoint, tmp_path, WHISPER_MAX_UPLOAD_MB="50")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    app.extensions["whisper_jobs"].stop()


@pytest.fixture
def page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 900})
        yield context.new_page()
        browser.close()


def test_upload_watch_progress_play_and_download(page, live_server, long_speech, tmp_path):
    OUTPUT.mkdir(exist_ok=True)
    percents = []  # every text the job page's progress label shows, as it changes
    page.expose_function("reportPercent", lambda text: percents.append(text))
    page.add_init_script(PERCENT_WATCHER)
    page.goto(live_server + "/")
    expect(page.get_by_role("heading", name="Transcribe audio or video")).to_be_visible()
    page.set_input_files("#file", str(long_speech))
    page.fill("#beam_size", "3")
    page.fill("#patience", "2")
    page.screenshot(path=str(OUTPUT / "upload-page.png"), full_page=True)
    page.click("button[type=submit]")

    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{22}$"), timeout=30_000)
    segments = page.locator(".segment")
    expect(segments.first).to_be_visible(timeout=120_000)
    # the bar filled up to 100 % before the page turned into the transcript
    shown = [int(text.split()[0]) for text in percents]
    assert shown[-1] == 100, shown
    assert shown == sorted(shown)
    assert segments.count() >= 2
    expect(page.locator(".facts")).to_contain_text("beam size 3, patience 2.0")

    player = page.locator("#player")
    wait_until(lambda: player.evaluate("p => p.readyState") >= 1, 10)
    second = segments.nth(1)
    start = float(second.get_attribute("data-start"))
    assert start > 0
    second.click()
    wait_until(lambda: abs(player.evaluate("p => p.currentTime") - start) < 0.5, 10)
    expect(second).to_have_class(re.compile(r"\bcurrent\b"))
    page.screenshot(path=str(OUTPUT / "transcript-page.png"), full_page=True)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="SRT").click()
    download = download_info.value
    assert download.suggested_filename == "lecture.srt"
    srt = Path(download.path()).read_text(encoding="utf-8")
    cues = srt.strip().split("\n\n")
    assert len(cues) >= 2
    assert all(SRT_CUE.match(cue) for cue in cues)
    assert [int(cue.split("\n", 1)[0]) for cue in cues] == list(range(1, len(cues) + 1))


def test_an_upload_that_is_also_a_page_runs_no_script_here(page, live_server, media, tmp_path):
    """A WAV with an HTML document inside, uploaded as x.html: opened in the browser at its
    media URL it is audio, sandboxed; its script never runs on this site's origin."""
    from test_hardening import polyglot_wav

    polyglot = tmp_path / "x.html"
    polyglot.write_bytes(polyglot_wav(media["speech.wav"]))
    page.goto(live_server + "/")
    page.set_input_files("#file", str(polyglot))
    page.fill("#beam_size", "1")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{22}$"), timeout=30_000)
    expect(page.locator("#player")).to_be_attached(timeout=120_000)
    media_url = page.url + "/media"
    response = page.goto(media_url)
    assert response.headers["content-type"] == "audio/wav"
    page.wait_for_timeout(500)  # what a script would need to run
    assert "pwned" not in page.title()
    assert page.evaluate("document.contentType") != "text/html"
