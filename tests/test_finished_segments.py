"""Segments while a transcription runs: both engines hand every segment that is final to the
progress callback (Progress.segments) as soon as its window is decoded for good, so that
text can be shown or streamed before the end. The bundled tiny.en (real timestamps)
decodes espeak-ng's speech, twice with a pause: a file of two windows."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest
from whisper.audio import SAMPLE_RATE

from bundled_model import bundled_model
from whisper_service.engines import batched, dispatch
from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.engines.batched import FileRequest
from whisper_service.config import bundled_ffmpeg
from whisper_service.options import TranscribeOptions
from whisper_service.progress import FinishedSegment, Progress, finished_segments
from whisper_service.transcript import Transcript

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

PAUSE_SECONDS = 15  # between two copies of the speech: a file of two windows
GREEDY = dict(temperature=(0.0,), language="en", beam_size=1)  # one decode per window


@pytest.fixture(scope="module")
def speech(media) -> np.ndarray:
    return decode_file(str(media["speech.wav"]), DecodeLimits(max_duration=600, timeout=60,
                                                              ffmpeg=bundled_ffmpeg()))


@pytest.fixture(scope="module")
def two_windows(speech) -> np.ndarray:
    return np.concatenate([speech, np.zeros(PAUSE_SECONDS * SAMPLE_RATE, np.float32), speech])


def assert_grows_into(reports: List[Progress], transcript: Transcript) -> None:
    """Each report's segments begin the next one's, and their text the transcript's; the
    last report has them all."""
    for before, after in zip(reports, reports[1:]):
        if after.segments:
            assert after.segments[:len(before.segments)] == before.segments
    for report in reports:
        assert transcript.text.startswith(report.text_so_far), (report.text_so_far, transcript.text)
    assert reports[-1].segments == finished_segments(transcript.segments)
    assert reports[-1].text_so_far == transcript.text


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_the_first_window_s_segments_come_before_the_end(two_windows, mode):
    reports: List[Progress] = []
    # batched: a window a batch, so the first is done while the second decodes
    transcript = dispatch.transcribe(bundled_model(), two_windows,
                                   TranscribeOptions(mode=mode, **GREEDY),
                                   progress=reports.append, batch_windows=1)
    assert transcript.text.lower().count("this sentence") == 2
    assert_grows_into(reports, transcript)
    duration = len(two_windows) / SAMPLE_RATE
    early = [r for r in reports if r.segments and r.done_seconds < duration]
    assert early, [(r.done_seconds, r.text_so_far) for r in reports]
    # what came early is the first copy's text, not yet the second's
    assert early[0].text_so_far.lower().count("this sentence") == 1
    assert all(s.end <= early[0].done_seconds + 0.5 for s in early[0].segments)


def test_a_window_waits_for_the_one_before_it_that_falls_back(speech, two_windows, monkeypatch):
    """Batched, one batch: file A's two windows, then file B's one. A's first window falls
    back to a higher temperature, so B's window and A's second are final first: B's
    segments are reported at once, A's second waits until A's first is final, and then
    both come in order."""
    calls = []

    def needs_fallback(result, options):  # the first window looked at (A's first) only
        calls.append(result)
        return len(calls) == 1

    monkeypatch.setattr(batched, "_needs_fallback", needs_fallback)
    seen: List[Tuple[str, Progress]] = []
    options = TranscribeOptions(mode="batched", language="en", beam_size=1,
                                temperature=(0.0, 0.2))
    requests = [FileRequest(audio, options, lambda report, name=name: seen.append((name, report)))
                for name, audio in (("A", two_windows), ("B", speech))]
    a, b = dispatch.transcribe_together(bundled_model(), requests, batch_windows=8)
    assert isinstance(a, Transcript) and isinstance(b, Transcript)
    order = [name for name, report in seen if report.segments]
    assert order[0] == "B", order  # while A's first window decodes again
    a_reports = [report for name, report in seen if name == "A"]
    first = next(report for report in a_reports if report.segments)
    assert first.segments == finished_segments(a.segments)  # both windows, in order
    assert len({s.start // PAUSE_SECONDS for s in first.segments}) >= 2
    assert_grows_into(a_reports, a)
    assert_grows_into([report for name, report in seen if name == "B"], b)


def test_settled_windows_are_told_once_each_in_order(monkeypatch):
    """_decode_with_fallback tells `settled` each window once, when no later temperature
    will decode it again, and gives the same results as without it."""
    decoded = []

    class Result:
        def __init__(self, index, temperature):
            self.index, self.temperature = index, temperature
            self.compression_ratio, self.avg_logprob, self.no_speech_prob = 1.0, 0.0, 0.0

    def fake_decode(model, mels, decoding, prompts):
        decoded.append(decoding.temperature)
        return [Result(int(m), decoding.temperature) for m in mels]

    monkeypatch.setattr(batched, "decode_batch", fake_decode)
    # windows 1 and 3 fail the thresholds at 0.0, window 3 at 0.5 too
    monkeypatch.setattr(batched, "_needs_fallback",
                        lambda r, o: (r.index, r.temperature) in {(1, 0.0), (3, 0.0), (3, 0.5)})
    told = []
    options = TranscribeOptions(temperature=(0.0, 0.5, 1.0))
    import torch

    from types import SimpleNamespace

    loaded = SimpleNamespace(model=None, windows=None, fp16=False)  # decoded by decode_batch
    results = batched._decode_with_fallback(
        loaded, torch.arange(4), options, "en", [None] * 4, lambda reached: None,
        lambda indexes, so_far: told.append([(i, so_far[i].temperature) for i in indexes]))
    assert decoded == [0.0, 0.5, 1.0]
    assert told == [[(0, 0.0), (2, 0.0)], [(1, 0.5)], [(3, 1.0)]]
    assert [r.temperature for r in results] == [0.0, 0.5, 0.0, 1.0]


def test_finished_segments_of_dicts_and_segments_leave_out_empty_text():
    found = finished_segments([dict(start=0, end=1.5, text=" Hi"), dict(start=1.5, end=2, text=""),
                               FinishedSegment(2.0, 3.0, " there")])
    assert found == (FinishedSegment(0.0, 1.5, " Hi"), FinishedSegment(2.0, 3.0, " there"))
    assert Progress(1, 2, found).text_so_far == " Hi there"
    assert Progress(1, 2).segments == () and Progress(1, 2).text_so_far == ""
