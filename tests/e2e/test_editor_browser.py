"""Correcting a transcript and the picture of the audio in a real browser (Chromium driven
by Playwright, as in test_browser.py): every edit with the keyboard alone, an edit the
server refuses, downloads that follow, the model's transcript restored; the waveform drawn
from the server's envelope, seeking by click and by keys. Screenshots (light, dark, phone)
go to test-output/."""

from __future__ import annotations

import shutil

import pytest
import requests
from playwright.sync_api import expect

from conftest import make_app, serving
from test_browser import DESKTOP, PHONE, TIME_ZONE, browser, shoot  # noqa: F401
from whisper_service.options import TranscribeOptions
from whisper_service.transcript import Segment, Speaker, Transcript, Word

FAST = TranscribeOptions.from_mapping({"temperature": "0", "beam_size": "greedy"})
LINES = (
    (0.2, 2.6, "S1", [(" The", 0.9), (" quick", 0.95), (" brown", 0.3), (" fox", 0.9),
                      (" jumps", 0.9), (" over", 0.9), (" the", 0.9), (" lazy", 0.4), (" dog.", 0.9)]),
    (2.9, 5.2, "S2", [(" Whisper", 0.9), (" turns", 0.9), (" speech", 0.9), (" into", 0.9),
                      (" text,", 0.9)]),
    (5.4, 7.6, "S1", [(" and", 0.9), (" this", 0.9), (" sentence", 0.2), (" checks", 0.9),
                      (" that", 0.9), (" it", 0.9), (" does.", 0.9)]),
)


def spoken() -> Transcript:
    segments = []
    for i, (start, end, speaker, words) in enumerate(LINES):
        step = (end - start) / len(words)
        segments.append(Segment(
            id=i, seek=0, start=start, end=end, text="".join(w for w, _ in words), tokens=(),
            temperature=0.0, avg_logprob=-0.2, compression_ratio=1.2, no_speech_prob=0.0,
            speaker=speaker, words=tuple(Word(w, round(start + n * step, 3), round(start + (n + 1) * step, 3),
                                              p, speaker) for n, (w, p) in enumerate(words))))
    return Transcript(task="transcribe", language="en", language_probability=1.0, duration=8.0,
                      model="tiny", text="".join(s.text for s in segments), segments=tuple(segments),
                      speakers=(Speaker("S1", "Ana"), Speaker("S2", "Bo")))


@pytest.fixture
def job_url(checkpoint, tmp_path, media):
    """A server with one finished job: the espeak recording, a transcript by two speakers."""
    app = make_app(checkpoint, tmp_path)
    queue = app.extensions["whisper_jobs"]
    queue.stop()
    job_id, path = queue.new_recording()
    shutil.copyfile(media["speech.wav"], path)
    queue.add_recorded(job_id, "fox.wav", FAST, spoken())
    with serving(app) as base:
        yield f"{base}/jobs/{job_id}"


def open_page(browser, url, **device):
    context = browser.new_context(timezone_id=TIME_ZONE, locale="en-US", **(device or DESKTOP))
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#waveform")).to_be_visible()  # the envelope came and was drawn
    return context, page


def texts(page):
    return [t.strip() for t in page.locator(".segment .text").all_text_contents()]


def test_every_correction_with_the_keyboard_alone(browser, job_url):
    context, page = open_page(browser, job_url)
    try:
        lines = page.locator(".segment")
        lines.first.focus()
        # E edits in place; Esc leaves the line as it was
        page.keyboard.press("e")
        editor = page.locator("textarea.line-editor")
        expect(editor).to_be_focused()
        page.keyboard.type(" (not kept)")
        page.keyboard.press("Escape")
        expect(editor).to_have_count(0)
        expect(lines.first).to_be_focused()
        assert texts(page)[0] == "The quick brown fox jumps over the lazy dog."
        # Enter saves: the line, the downloads and the API show it
        page.keyboard.press("ArrowDown")
        page.keyboard.press("e")
        editor.fill("Whisper turns speech into written text,")
        page.keyboard.press("Enter")
        expect(page.locator("#edit-status")).to_have_text("Saved.")
        assert texts(page)[1] == "Whisper turns speech into written text,"
        expect(lines.nth(1)).to_be_focused()
        assert "written text" in requests.get(job_url + "/transcript.srt", timeout=10).text
        expect(page.locator("#edited")).to_be_visible()
        # Shift+Enter splits at the cursor
        page.keyboard.press("e")
        page.keyboard.press("Home")
        for _ in range(len("Whisper turns speech")):
            page.keyboard.press("ArrowRight")
        page.keyboard.press("Shift+Enter")
        expect(lines).to_have_count(4)
        expect(page.locator("#split-line")).to_be_hidden()  # only while a line is edited
        assert texts(page)[1:3] == ["Whisper turns speech", "into written text,"]
        expect(lines.nth(2)).to_be_focused()
        # M merges a line with the next
        page.keyboard.press("ArrowUp")
        page.keyboard.press("m")
        expect(lines).to_have_count(3)
        assert texts(page)[1] == "Whisper turns speech into written text,"
        # ] moves the start later, } the end later
        start = float(lines.nth(1).get_attribute("data-start"))
        page.keyboard.press("]")
        expect(lines.nth(1)).to_have_attribute("data-start", str(round(start + 0.1, 3)))
        page.keyboard.press("Shift+BracketRight")  # "}"
        expect(page.locator("#edit-status")).to_contain_text("end at")
        # S picks the speaker
        page.keyboard.press("s")
        expect(page.locator("#line-speaker")).to_be_focused()
        page.locator("#line-speaker").select_option("S1")
        expect(page.locator("#segments > li").nth(1)).to_have_attribute("data-speaker", "S1")
        # the server refuses what cannot be, in words; nothing changes
        lines.first.focus()
        for start in ("0.1", "0.0"):
            page.keyboard.press("[")
            expect(lines.first).to_have_attribute("data-start", start)
        page.keyboard.press("[")
        expect(page.locator("#edit-status")).to_have_text("-0.100 s is before the audio begins")
        expect(page.locator("#edit-status")).to_have_class("muted error")
        assert float(lines.first.get_attribute("data-start")) >= 0
        # unsure words, marked on request
        page.get_by_label("Mark unsure words").check()
        expect(page.locator("#segments.mark-unsure .word.unsure")).to_have_count(3)  # brown, lazy, sentence
        shoot(page, "desktop-transcript-corrected")
        lines.nth(2).focus()
        page.keyboard.press("e")
        shoot(page, "desktop-transcript-editing")
        page.keyboard.press("Escape")
        # the model's transcript is kept and comes back
        assert "written" not in requests.get(job_url + "/original.txt", timeout=10).text
        page.get_by_role("button", name="Restore the model's transcript").click()
        expect(page.locator("#edited")).to_be_hidden()
        assert texts(page)[1] == "Whisper turns speech into text,"
        assert "written" not in requests.get(job_url + "/transcript.txt", timeout=10).text
    finally:
        context.close()


def test_the_waveform_shows_the_audio_and_seeks(browser, job_url):
    context, page = open_page(browser, job_url)
    try:
        canvas = page.locator("#waveform-canvas")
        assert int(page.locator("#waveform").get_attribute("data-bins")) >= 400
        page.wait_for_function("document.getElementById('player').readyState >= 1")
        # something was drawn: speech bars and the lines' bands, not one flat colour
        colours = page.evaluate("""() => {
            const c = document.getElementById('waveform-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4 * 7) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
            return seen.size;
        }""")
        assert colours > 5
        box = canvas.bounding_box()
        canvas.click(position={"x": box["width"] * 0.5, "y": box["height"] / 2})
        time = page.evaluate("document.getElementById('player').currentTime")
        duration = page.evaluate("document.getElementById('player').duration")
        assert abs(time - duration / 2) < 0.5
        # the line playing there is the current one, in the text as in the picture
        page.evaluate("document.getElementById('player').dispatchEvent(new Event('timeupdate'))")
        expect(page.locator(".segment.current")).to_have_count(1)
        expect(canvas).to_have_attribute("aria-valuetext", "0:0" + str(int(time)) + " of 0:08")
        canvas.focus()
        page.keyboard.press("Home")
        assert page.evaluate("document.getElementById('player').currentTime") == 0
        page.keyboard.press("ArrowRight")
        assert page.evaluate("document.getElementById('player').currentTime") == pytest.approx(5, abs=0.01)
        page.evaluate("document.getElementById('player').dispatchEvent(new Event('timeupdate'))")
        shoot(page, "desktop-waveform")
    finally:
        context.close()
    context, page = open_page(browser, job_url, **PHONE)
    try:
        page.get_by_label("Mark unsure words").check()
        shoot(page, "phone-transcript-editor")
    finally:
        context.close()
