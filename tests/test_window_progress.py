"""Progress inside a window: while a window decodes, both engines tell how far the timestamps
their decoder has sampled reach, not only that the window is done. The bundled tiny.en
(real timestamps) decodes espeak-ng's speech, one window of about 9 s, on the torch decoder,
whose steps are watched (CTranslate2's decodes are not: with it progress moves as windows
end, tests/test_window_decoders.py)."""

from __future__ import annotations

import numpy as np
import pytest
from whisper.audio import SAMPLE_RATE

from bundled_model import bundled_model
from conftest import FakeClock
from whisper_service.engines import dispatch, window_progress
from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.config import bundled_ffmpeg
from whisper_service.options import TranscribeOptions
from whisper_service.progress import Progress

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


PAUSE_SECONDS = 15  # between two copies of the speech: a file of two windows


@pytest.fixture
def every_step(monkeypatch):
    """A report at every decoder step, so what each step reached is seen."""
    monkeypatch.setattr(window_progress, "REPORT_EVERY_SECONDS", 0.0)


def decode(path) -> np.ndarray:
    return decode_file(str(path), DecodeLimits(max_duration=600, timeout=60,
                                               ffmpeg=bundled_ffmpeg()))


@pytest.fixture(scope="module")
def speech(media) -> np.ndarray:
    return decode(media["speech.wav"])


def transcribe_watched(audio: np.ndarray, **options):
    reports = []
    options = TranscribeOptions(temperature=(0.0,), language="en", **options)  # no sampling
    transcript = dispatch.transcribe(bundled_model("torch"), audio, options,
                                     progress=reports.append)
    return transcript, [report.done_seconds for report in reports]


@pytest.mark.parametrize("mode, beam_size", [("sequential", 1), ("batched", 1), ("batched", 5)])
def test_progress_moves_inside_the_only_window(speech, every_step, mode, beam_size):
    duration = len(speech) / SAMPLE_RATE
    assert duration < 30  # one window: every report before the last is from inside it
    transcript, seen = transcribe_watched(speech, mode=mode, beam_size=beam_size)
    assert "this sentence" in transcript.text.lower()
    assert seen[-1] == pytest.approx(duration)
    inside = [s for s in seen[:-1] if 0 < s < duration]
    assert len(set(inside)) >= 3, seen  # several timestamps reached before the window ended
    assert seen == sorted(seen), seen  # never backwards
    assert max(inside) >= duration / 2, seen  # it went on moving, not only at the start
    # before the first segment's end was sampled, the estimate moved with the text tokens
    first_end = transcript.segments[0].end
    assert len({s for s in inside if s < first_end}) >= 3, (first_end, seen)


def test_every_window_of_a_file_moves_on_its_own(speech, every_step):
    """Sequential: each window's progress starts where whisper.transcribe put the window,
    and moves inside it; batched: the file moves as its windows in a batch advance."""
    audio = np.concatenate([speech, np.zeros(PAUSE_SECONDS * SAMPLE_RATE, np.float32), speech])
    duration = len(audio) / SAMPLE_RATE
    for mode in ("sequential", "batched"):
        transcript, seen = transcribe_watched(audio, mode=mode, beam_size=1)
        assert transcript.text.lower().count("this sentence") == 2
        assert seen == sorted(seen) and seen[-1] == pytest.approx(duration), (mode, seen)
        # more distinct positions than window ends (two or three): inside every window
        assert len(set(seen)) > 10, (mode, seen)
    # batched: both windows in one batch, the file's progress moves through the pause
    # between them with the speech decoded, not in one jump at the batch's end
    second_half = [s for s in seen[:-1] if duration / 2 < s < duration]
    assert len(set(second_half)) >= 3, seen


def test_reports_come_at_most_twice_a_second(speech, monkeypatch):
    """Without the test's override a report waits REPORT_EVERY_SECONDS after the last one:
    a slow decoder (each step 40 ms here, on a fake clock, so a loaded machine changes
    nothing) reports a few times per window, not every step."""
    clock = FakeClock()
    monkeypatch.setattr(window_progress, "time", clock.as_time_module())
    steps, reported_at = [], []

    def slow_step(module, args):
        steps.append(clock())
        clock.advance(0.04)

    handle = bundled_model().model.decoder.register_forward_pre_hook(slow_step)
    try:
        options = TranscribeOptions(temperature=(0.0,), language="en", mode="sequential",
                                    beam_size=1)
        dispatch.transcribe(bundled_model(), speech, options,
                            progress=lambda report: reported_at.append(clock()))
    finally:
        handle.remove()
    took = steps[-1] - steps[0]
    inside = reported_at[:-1]
    # the reports a period apart, and the one at the window's end
    assert 1 <= len(inside) <= took / window_progress.REPORT_EVERY_SECONDS + 2, (len(inside), took)
    assert len(inside) < len(steps) / 4  # far fewer reports than decoder steps
    # and they keep coming while the window decodes: none missing for a whole period more
    assert len(inside) >= took // window_progress.REPORT_EVERY_SECONDS - 1, (len(inside), took)


def test_a_report_that_raises_stops_the_window(speech, every_step):
    """The job queue stops a cancelled job from its progress callback: raised inside a window,
    it ends the transcription there."""
    class Stop(Exception):
        pass

    def progress(report: Progress) -> None:
        if 0 < report.done_seconds < report.total_seconds:
            raise Stop

    with pytest.raises(Stop):
        dispatch.transcribe(bundled_model(), speech, TranscribeOptions(mode="sequential"),
                          progress=progress)
