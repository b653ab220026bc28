"""Live speaker labels off the decoding thread (issue 25.4): while one session's utterance is
embedded, every other session's decodes go on; labels come in each session's order, after
the utterance's text, before the session is settled; a closed session leaves nothing
running. Ordering is read from one shared log of what happened, not from wall-clock bounds."""

from __future__ import annotations

import threading
from typing import List

import numpy as np
import pytest

from bundled_model import spoken_wav
from conftest import wait_until
from test_live_session import read_pcm, sentence  # noqa: F401  (a fixture: 4 s of speech)
from whisper_service.live.labels import LabelTask, SpeakerLabeler
from whisper_service.live.scheduler import LiveScheduler
from whisper_service.live.session import (
    Committed, DecodeResult, LiveOptions, SpeakerFound, UtteranceDone,
)
from whisper_service.speakers.online import OnlineSpeakers
from whisper_service.transcript import Word

RATE = 16000
FRAME = RATE // 4
EMBED_SECONDS = 1.0  # the fake embedder's longest wait


@pytest.fixture(scope="module")
def talking(tmp_path_factory) -> np.ndarray:
    """About 15 s of speech without a pause: one long utterance, decoded again and again."""
    text = " ".join(["one two three four five six seven eight nine ten"] * 4)
    return read_pcm(spoken_wav(text, tmp_path_factory.mktemp("labels-long"), before=1.0))


class LoggingDecoder:
    """Hears one word as long as each request's audio; logs which session each decode served."""

    def __init__(self, log: List[tuple], names: dict):
        self.log, self.names = log, names

    def check(self, options):
        pass

    def decode(self, requests):
        results = []
        for request in requests:
            self.log.append(("decode", self.names.get(id(request.session))))
            results.append(DecodeResult((Word(" word.", 0.0, len(request.audio) / RATE, 0.9),), "en", 0.95))
        return results


def test_other_sessions_decode_while_an_utterance_is_embedded(sentence, talking, monkeypatch):
    log: List[tuple] = []
    names: dict = {}
    plain_decoded = threading.Event()
    embedding = threading.Event()

    def slow_label(self, audio):  # a voice that takes a second to embed, or until 2 decodes
        log.append(("embed start",))
        embedding.set()
        plain_decoded.wait(EMBED_SECONDS)
        log.append(("embed end",))
        return 0

    monkeypatch.setattr(OnlineSpeakers, "label", slow_label)
    scheduler = LiveScheduler(LoggingDecoder(log, names), max_sessions=2)
    events: List[object] = []
    diarized = scheduler.open(LiveOptions(diarize=True), events.append)
    plain = scheduler.open(LiveOptions(), lambda event: None)
    names.update({id(diarized): "diarized", id(plain): "plain"})
    try:
        watching = threading.Thread(target=_watch, args=(log, embedding, plain_decoded), daemon=True)
        watching.start()
        for start in range(0, len(talking), FRAME):
            if start < len(sentence):
                diarized.feed(sentence[start:start + FRAME])
            plain.feed(talking[start:start + FRAME])
            if start > len(sentence) and ("embed end",) in log:
                break
            threading.Event().wait(0.02)
        assert embedding.is_set(), "the diarized utterance never ended"
        wait_until(lambda: ("embed end",) in log, 10, 0.01, "the embedding to end")
        begin, end = log.index(("embed start",)), log.index(("embed end",))
        assert ("decode", "plain") in log[begin:end], log[begin - 3:end + 3]
        diarized.stop()
        plain.stop()
        wait_until(lambda: diarized.settled and plain.settled, 20, 0.01, "the sessions to settle")
    finally:
        scheduler.stop()
    # the label comes after the utterance's text (and its end), and the transcript keeps it
    found = [i for i, e in enumerate(events) if isinstance(e, SpeakerFound)]
    committed = [i for i, e in enumerate(events) if isinstance(e, Committed)]
    done = [i for i, e in enumerate(events) if isinstance(e, UtteranceDone)]
    assert len(found) == 1 and committed and max(committed) < found[0] and done[0] < found[0]
    assert [s.speaker for s in diarized.transcript().segments] == ["S1"]


def _watch(log: List[tuple], embedding: threading.Event, plain_decoded: threading.Event) -> None:
    """Set plain_decoded once the plain session was decoded twice during the embedding."""
    embedding.wait(30)
    begin = log.index(("embed start",))
    wait_until(lambda: log[begin:].count(("decode", "plain")) >= 2 or ("embed end",) in log,
               30, 0.005, "decodes")
    plain_decoded.set()


class Blocking:
    """A voice embedder that holds each label until released; logs what it labelled."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()
        self.labelled: List[int] = []

    def label(self, audio):
        self.started.set()
        self.release.wait(10)
        self.labelled.append(len(audio))
        return len(audio)


def task(owner, speakers, size: int, told: list) -> LabelTask:
    return LabelTask(owner, speakers, np.zeros(size, np.float32),
                     lambda speaker: told.append((owner, speaker)))


def test_labels_come_in_order_and_the_queue_is_bounded():
    labeler, speakers, told = SpeakerLabeler(max_pending=3), Blocking(), []
    a, b = object(), object()
    assert labeler.submit(task(a, speakers, 1, told))
    speakers.started.wait(5)  # the first runs; three more wait, a fourth is refused
    assert all(labeler.submit(task(owner, speakers, n, told)) for owner, n in ((b, 2), (a, 3), (b, 4)))
    assert not labeler.submit(task(a, speakers, 5, told))
    assert labeler.pending == 4
    speakers.release.set()
    wait_until(lambda: labeler.pending == 0, 10, 0.01, "the labels")
    assert told == [(a, 1), (b, 2), (a, 3), (b, 4)]
    labeler.stop()


def test_a_cancelled_owner_leaves_nothing_running_and_is_told_nothing():
    labeler, speakers, told = SpeakerLabeler(), Blocking(), []
    gone, stays = object(), object()
    for owner, size in ((gone, 1), (gone, 2), (stays, 3), (gone, 4)):
        labeler.submit(task(owner, speakers, size, told))
    speakers.started.wait(5)  # gone's first label is running
    threading.Timer(0.2, speakers.release.set).start()
    labeler.cancel(gone)  # returns once the running label has ended
    assert speakers.labelled[:1] == [1] and labeler.pending <= 1  # stays' label may run now
    wait_until(lambda: labeler.pending == 0, 10, 0.01, "the other owner's label")
    assert speakers.labelled == [1, 3] and told == [(stays, 3)]
    labeler.stop()


@pytest.fixture
def mid_label(sentence, monkeypatch):
    """A diarizing session of a scheduler, stopped after one utterance whose label is being
    told by a Blocking embedder: (scheduler, session, its events, the embedder)."""
    speakers = Blocking()
    monkeypatch.setattr(OnlineSpeakers, "label", lambda self, audio: speakers.label(audio) and 0)
    scheduler = LiveScheduler(LoggingDecoder([], {}), max_sessions=1)
    events: List[object] = []
    session = scheduler.open(LiveOptions(diarize=True), events.append)
    try:
        for start in range(0, len(sentence), FRAME):
            session.feed(sentence[start:start + FRAME])
        session.stop()
        assert speakers.started.wait(10)
        yield scheduler, session, events, speakers
    finally:
        speakers.release.set()
        scheduler.stop()


def test_a_stopped_session_settles_only_once_its_labels_are_in(mid_label):
    scheduler, session, events, speakers = mid_label
    assert not session.settled and session.labelling == 1
    assert not any(isinstance(e, SpeakerFound) for e in events)
    speakers.release.set()
    wait_until(lambda: session.settled, 10, 0.01, "the label")
    assert [e.speaker for e in events if isinstance(e, SpeakerFound)] == [0]


def test_closing_a_session_mid_label_drops_its_labels(mid_label):
    scheduler, session, events, speakers = mid_label
    threading.Timer(0.2, speakers.release.set).start()
    scheduler.close(session)  # the client left: its label is waited for, its result dropped
    assert scheduler.labeler.pending == 0
    assert not any(isinstance(e, SpeakerFound) for e in events)
