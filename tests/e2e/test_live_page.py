"""The live page in a real browser: headless Debian Chromium, whose fake microphone plays
espeak-ng's speech, streams it through the page's AudioWorklet and WebSocket to the production
server (gunicorn, nginx in front) running the bundled tiny.en; tentative text shows, committed
text grows with the spoken words, Stop ends in `done` and a link to the job, whose page and SRT
download hold the same words."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect, sync_playwright

from bundled_model import spoken_wav
from conftest import wait_until
from test_browser import CHROMIUM, DESKTOP, microphone_flags, shoot
from whisper_service.checkpoints import BUNDLED

SPEECH = ("Please remember to bring your umbrella tomorrow morning. "
          "The library opens at nine o'clock on Saturday.")
DISTINCT_WORDS = ("remember", "umbrella", "tomorrow", "morning", "library", "saturday")
SILENCE_AFTER_SECONDS = 2
JOB_LINK = re.compile(r"/jobs/([A-Za-z0-9_-]+)\?mine=1$")
SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+?)(?:\n\n|\n?$)", re.S)
# every text the tentative and the committed lines show, as they change (a partial may last
# a moment only), kept in the page for the test to read
WATCHER = """
window.seen = { partial: [], committed: [] };
document.addEventListener("DOMContentLoaded", () => {
  for (const name of ["partial", "committed"]) {
    const line = document.getElementById("live-" + name);
    if (!line) continue;
    new MutationObserver(() => { if (line.textContent) window.seen[name].push(line.textContent); })
      .observe(line, { childList: true, characterData: true, subtree: true });
  }
});
"""


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """The speech (about 6.5 s) and then 2 s of silence, 48 kHz mono PCM: the fake microphone."""
    return spoken_wav(SPEECH, tmp_path_factory.mktemp("live-speech"), rate=48000,
                      after=SILENCE_AFTER_SECONDS)


@pytest.fixture(scope="module")
def server(live_server):
    """conftest's live server (gunicorn, nginx, tiny.en), shared by every live test."""
    return live_server


@pytest.fixture(scope="module")
def browser(spoken):
    """Chromium whose fake microphone plays `spoken` (the using module's fixture of that name:
    test_live_speakers_page uses this one with its dialogue)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=microphone_flags(spoken))
        yield browser
        browser.close()


def words_heard(text: str) -> set:
    return {word for word in DISTINCT_WORDS if word in text.lower()}


def what_the_page_shows(page) -> str:
    shown = [f"{name}: {page.locator(selector).inner_text()!r}" for name, selector in (
        ("state", "#live-state"), ("committed", "#live-committed"), ("partial", "#live-partial"),
        ("error", "#live-error"), ("result", "#live-result"))]
    return "\n".join([*shown, f"seen: {page.evaluate('window.seen')}"])


def wait_for(page, server, condition, seconds, what):
    """wait_until, failing with what the page shows and the server's log."""
    try:
        wait_until(condition, seconds, interval=0.2, what=what)
    except AssertionError as error:
        log = server.log.read_text()
        lines = [line for line in log.splitlines() if "/readyz" not in line and "/healthz" not in line]
        raise AssertionError(f"{error}\n{what_the_page_shows(page)}\n" + "\n".join(lines[-30:])) from None


def test_speak_see_captions_stop_and_open_the_job(browser, server):
    context = browser.new_context(locale="en-US", **DESKTOP)
    page = context.new_page()
    page.add_init_script(WATCHER)
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    page.goto(server.base + "/live")
    expect(page.get_by_role("link", name="Live", exact=True)).to_have_attribute("aria-current", "page")
    page.select_option("#source", "microphone")
    page.select_option("#language", "en")
    page.click("#live-start")
    expect(page.locator("#live-stop")).to_be_enabled()

    # tentative text first (grey, italic), then committed text with the spoken words
    # (a fresh server's first decodes also compile whisper's word timing: seconds on a CPU)
    wait_for(page, server, lambda: page.evaluate("window.seen.partial.length"), 60,
             "tentative text")
    assert page.locator("#live-partial").evaluate("e => getComputedStyle(e).fontStyle") == "italic"
    committed = page.locator("#live-committed")
    wait_for(page, server, lambda: len(words_heard(committed.inner_text())) >= 2, 60,
             "committed text with the spoken words")
    assert not page.locator("#live-error").is_visible(), page.locator("#live-error").inner_text()

    page.click("#live-stop")
    link = page.locator("#live-job-link")
    wait_for(page, server, link.is_visible, 60, "done and the link to the job")
    expect(link).to_have_text("Open transcript")
    expect(page.locator("#live-start")).to_be_enabled()
    final = committed.inner_text()
    assert len(words_heard(final)) >= 3, final
    # committed text only ever grew: each version begins with the one before
    versions = page.evaluate("window.seen.committed")
    assert all(later.startswith(earlier) for earlier, later in zip(versions, versions[1:])), versions
    assert versions[-1] == final
    href = link.get_attribute("href")
    assert JOB_LINK.search(href), href
    shoot(page, "desktop-live")

    link.click()
    page.wait_for_url(re.compile(JOB_LINK.pattern))
    expect(page.locator(".segment").first).to_be_visible(timeout=10_000)
    job_url = page.url.split("?")[0]
    srt = page.request.get(job_url + "/transcript.srt")
    assert srt.ok, srt.status
    cues = SRT_CUE.findall(srt.text().replace("\r\n", "\n"))
    assert cues, srt.text()
    assert [int(index) for index, *_ in cues] == list(range(1, len(cues) + 1))
    assert all(start <= end for _, start, end, _ in cues)
    assert len(words_heard(" ".join(text for *_, text in cues)) & words_heard(final)) >= 2, srt.text()
    # opened from the live page, the job is among this browser's recent jobs
    page.goto(server.base + "/jobs")
    expect(page.locator(f'a[href="/jobs/{JOB_LINK.search(href).group(1)}"]').first).to_be_visible()
    assert not problems, problems
    context.close()


SESSION = "Dr0pped-Sess1on-Id_abcd"
HOSTILE = '<img src=x onerror="window.pwned = true">'


def test_a_dropped_connection_links_to_the_saved_session_and_server_text_stays_text(browser, server):
    """The socket is Playwright's stand-in for the server: it answers ready, hostile text in
    every event, then drops the connection (1011) after a second of sound without `done`.
    The sound is both sources mixed, so the screen-sharing path runs too."""
    context = browser.new_context(locale="en-US", **DESKTOP)
    page = context.new_page()
    frames, texts, urls = [], [], []

    def stand_in(ws):
        urls.append(ws.url)
        # frames of at most 6000 bytes, so the page's 0.25 s (8000 bytes) go in two pieces
        for event in ({"type": "ready", "session": SESSION, "sample_rate": 16000,
                       "max_frame_bytes": 6000, "max_seconds": 600, "model": BUNDLED},
                      {"type": "speech_started", "at": 0.1},
                      {"type": "committed", "text": " " + HOSTILE, "start": 0.1, "end": 0.5},
                      {"type": "partial", "text": HOSTILE},
                      {"type": "language", "language": HOSTILE},
                      {"type": "error", "code": "bad_frame", "message": HOSTILE}):
            ws.send(json.dumps(event))

        def heard(message):
            (frames if isinstance(message, bytes) else texts).append(message)
            if len(frames) == 8:
                ws.close(code=1011, reason="the worker went away")
        ws.on_message(heard)

    page.route_web_socket(re.compile(r"/api/live\b"), stand_in)
    page.goto(server.base + "/live")
    page.select_option("#source", "both")  # the microphone and the (fake) screen's sound, mixed
    page.select_option("#language", "en")
    page.check("#task-translate")
    page.click("#live-start")
    link = page.locator("#live-job-link")
    expect(link).to_be_visible(timeout=15_000)
    assert link.get_attribute("href") == f"/jobs/{SESSION}?mine=1"
    expect(page.locator("#live-result")).to_contain_text("The connection ended before the session finished")
    expect(page.locator("#live-start")).to_be_enabled()
    expect(page.locator("#live-state")).to_contain_text("Disconnected")
    # the query names the options; the sound came as 0.25 s of 16 kHz PCM16 (8000 bytes),
    # each cut to the server's max_frame_bytes; nothing else came
    assert re.search(r"^ws://127\.0\.0\.1:\d+/api/live\?model=bundled&language=en&task=translate$",
                     urls[0]), urls
    assert [len(frame) for frame in frames] == [6000, 2000] * 4 and texts == []
    # server text is shown as text: no element made of it, no script run
    assert page.locator("#live-committed").inner_text() == HOSTILE
    expect(page.locator("#live-error")).to_have_text(f"{HOSTILE} (bad_frame)")
    expect(page.locator("#live-language")).to_have_text(f"Language: {HOSTILE}")
    assert page.locator("#live-text img, #live-error img, #live-language img").count() == 0
    assert page.evaluate("window.pwned") is None
    context.close()
