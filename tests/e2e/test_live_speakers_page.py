"""Live speaker labels in a real browser: Chromium's fake microphone plays a two-voice
espeak-ng dialogue (an en-us man and an en-gb woman, a pause between turns) to the live page
with "Label speakers" ticked, against the production server running the bundled tiny.en;
each turn's text takes its speaker's colour under a name where the voice changes, and the
saved job's transcript carries the same two speakers."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from playwright.sync_api import expect

from whisper_service.config import bundled_ffmpeg
from conftest import wait_until
from conversations import dialogue
from test_browser import DESKTOP, shoot
from test_live_page import browser  # noqa: F401  (a fixture: Chromium playing `spoken`)
from whisper.audio import SAMPLE_RATE

PAUSE_SECONDS = 1.2  # between turns: longer than the 0.5 s of silence that ends an utterance
JOB_LINK = re.compile(r"/jobs/([A-Za-z0-9_-]+)\?mine=1$")


@pytest.fixture(scope="module")
def talk():
    return dialogue(2, 4, seed=1)


@pytest.fixture(scope="module")
def spoken(talk, tmp_path_factory):
    """The dialogue's turns with PAUSE_SECONDS between them, 2 s of silence after, as the
    48 kHz WAV the fake microphone plays."""
    gap = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), np.float32)
    pieces = [gap]
    for start, end, _ in talk.turns:
        pieces += [talk.audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)], gap]
    pieces.append(np.zeros(2 * SAMPLE_RATE, np.float32))
    folder = tmp_path_factory.mktemp("live-dialogue")
    source = folder / "dialogue-16k.raw"
    source.write_bytes((np.clip(np.concatenate(pieces), -1, 1) * 32767).astype("<i2").tobytes())
    target = folder / "dialogue-48k.wav"
    subprocess.run([bundled_ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-f", "s16le",
                    "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", str(source), "-ar", "48000",
                    "-c:a", "pcm_s16le", str(target)], check=True)
    return target


def test_each_voice_gets_its_colour_and_the_job_keeps_the_speakers(browser, live_server, talk):
    context = browser.new_context(locale="en-US", **DESKTOP)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(live_server.base + "/live")
    page.select_option("#source", "microphone")
    page.select_option("#language", "en")
    page.check("#diarize")
    page.click("#live-start")
    expect(page.locator("#live-stop")).to_be_enabled()

    names = page.locator("#live-committed .live-speaker")
    turns = len(talk.turns)
    wait_until(lambda: names.count() >= turns, 120, interval=0.5,
               what=f"{turns} speaker names on the page: {page.locator('#live-committed').inner_html()}")
    page.click("#live-stop")
    link = page.locator("#live-job-link")
    wait_until(link.is_visible, 60, interval=0.2, what="done and the link to the job")
    assert not page.locator("#live-error").is_visible(), page.locator("#live-error").inner_text()

    # the voices alternate, so every turn opens with a name, in the dialogue's order
    assert [name.strip() for name in names.all_inner_texts()] == \
        [f"Speaker {who + 1}:" for _, _, who in talk.turns]
    colours = page.locator("#live-committed .piece[data-speaker]").evaluate_all(
        "pieces => pieces.map(p => [p.dataset.speaker, getComputedStyle(p).color])")
    by_speaker = {speaker: {colour for s, colour in colours if s == speaker} for speaker, _ in colours}
    assert set(by_speaker) == {"S1", "S2"} and all(len(c) == 1 for c in by_speaker.values())
    assert by_speaker["S1"] != by_speaker["S2"]
    shoot(page, "desktop-live-speakers")

    job = JOB_LINK.search(link.get_attribute("href")).group(1)
    transcript = page.request.get(f"{live_server.base}/jobs/{job}/transcript.json")
    assert transcript.ok, transcript.status
    data = transcript.json()
    assert [s["id"] for s in data["speakers"]] == ["S1", "S2"]
    assert [s["speaker"] for s in data["segments"]][:1] == ["S1"]
    assert {s["speaker"] for s in data["segments"]} == {"S1", "S2"}
    assert not problems, problems
    context.close()
