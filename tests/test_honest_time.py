"""Honest time: the time left comes from this host's measured pace for the model and
options (pace.py), corrected as windows finish; a window still decoding never looks nearly
done (no 99 % for a step that is not); the job page shows the percentage once."""

from __future__ import annotations

import math

import pytest

from conftest import FakeClock
from test_window_progress import every_step, speech, transcribe_watched  # noqa: F401 (fixtures)
from whisper_service.engines import window_progress
from whisper_service.options import TranscribeOptions
from whisper_service.pace import Pace, TimeLeft, pace_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPTIONS = TranscribeOptions()
KEY = pace_key("small", OPTIONS)


def test_no_guess_before_anything_was_measured_and_loading_counts_for_nothing():
    clock = FakeClock()
    left = TimeLeft(Pace(), KEY, clock=clock)
    clock.advance(60)  # the model loads, the file decodes: no report comes meanwhile
    assert left.update(0.0, 300.0) is None  # the first report opens the first stretch
    clock.advance(10)
    # 30 s of audio in 10 s: a third of a second per second; 270 s of audio left
    assert left.update(30.0, 300.0) == pytest.approx(90.0)


def test_the_estimate_follows_the_windows_as_they_finish():
    """The issue's job: estimates of 15 min and 17 min 52 s for one that took 4 min 47 s.
    Here windows of 30 s that take 10 s, then a slower stretch: the estimate stays near
    the truth and moves with it."""
    clock = FakeClock()
    left = TimeLeft(Pace(), KEY, clock=clock)
    left.update(0.0, 300.0)
    estimates = []
    for window in range(1, 10):
        clock.advance(10 if window < 6 else 20)
        estimates.append(left.update(30.0 * window, 300.0))
    assert estimates[0] == pytest.approx(90.0)  # 9 windows left at 10 s
    assert estimates[4] == pytest.approx(50.0)  # 5 left, the pace unchanged
    # slower windows raise the factor: (5 x 10 + 20) / 180 s of audio per second
    assert estimates[5] == pytest.approx(120.0 * 70.0 / 180.0)
    assert estimates[-1] > 30.0 * 10.0 / 30.0  # the last window: more than the first pace said


def test_a_new_job_starts_from_what_this_host_measured_for_the_same_model_and_options():
    pace, clock = Pace(), FakeClock()
    first = TimeLeft(pace, KEY, clock=clock)
    first.update(0.0, 60.0)
    clock.advance(20)
    first.update(60.0, 60.0)  # a third of real time
    second = TimeLeft(pace, KEY, clock=clock)
    assert second.update(0.0, 600.0) == pytest.approx(200.0)  # at its first report already
    other_model = TimeLeft(pace, pace_key("large-v3", OPTIONS), clock=clock)
    assert other_model.update(0.0, 600.0) is None  # nothing measured for it here
    fast = TimeLeft(pace, pace_key("small", OPTIONS.with_changes(beam_size=None,
                                                                 temperature=(0.0,))), clock=clock)
    assert fast.update(0.0, 600.0) is None  # nor for other decoding options


def test_a_stretch_that_takes_longer_than_the_pace_says_raises_the_estimate():
    """A window decoded again at a higher temperature: no audio moves for a while; the
    estimate grows instead of running out ("Almost done…" with most of the work ahead)."""
    clock = FakeClock()
    left = TimeLeft(Pace(), KEY, clock=clock)
    left.update(0.0, 120.0)
    clock.advance(10)
    before = left.update(30.0, 120.0)
    assert before == pytest.approx(30.0)
    clock.advance(5)
    assert left.update(30.0, 120.0) == pytest.approx(before)  # within the pace: unchanged
    clock.advance(25)  # 30 s on a stretch the pace gave 10
    assert left.update(30.0, 120.0) > before * 1.5


def test_an_unfinished_window_never_reports_nearly_all_of_it():
    assert window_progress.within(29.9, 30.0) == pytest.approx(27.0)
    assert window_progress.within(12.0, 30.0) == 12.0
    assert window_progress.within(math.inf, 30.0) == 30.0  # done: all of it


def test_the_only_window_of_a_file_stays_short_of_99_percent_until_it_is_done(speech, every_step):  # noqa: F811
    """The CPU's engine, one window: every report from inside it is at most 90 % (the
    batched engine's inside reports go through the same within(); its windows end where
    the speech ends, which is reported as done)."""
    duration = len(speech) / 16000
    _, seen = transcribe_watched(speech, mode="sequential", beam_size=1)
    assert seen[-1] == pytest.approx(duration)
    # (the sequential engine's last report counts whole mel frames: 8.01 of 8.0104 s)
    before_the_end = [s for s in seen if s < duration - 0.01]
    assert before_the_end, seen
    assert max(before_the_end) <= window_progress.UNFINISHED_SHARE * duration + 1e-6, (duration, seen[-8:])


def test_the_job_page_shows_the_percentage_once(busy_client, media):
    import dataclasses
    from test_pages import job_of, queued_job
    from web.pages.views import state_words
    from whisper_service.queue.jobs import JobState

    job = job_of(busy_client.application, queued_job(busy_client, media))
    running = dataclasses.replace(job, state=JobState.RUNNING, progress=0.42)
    assert "%" not in state_words(running)
