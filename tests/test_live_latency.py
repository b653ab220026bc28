"""How fast live captions follow the speech, and what a session does when the host cannot
keep up: the real speech gate with a scripted decoder on a fake clock (the step that adapts
to the decode's round trip, the `behind` event and the catch-up, the padding at an
utterance's ends), and the bundled tiny.en for the short encoder input of tentative
decodes."""

from __future__ import annotations

from typing import List

import numpy as np
import pytest

from bundled_model import bundled_model, spoken_wav, word_error_rate
from conftest import FakeClock
from test_live_session import FRAME, RATE, ScriptedDecoder, read_pcm
from whisper_service.live import session as session_module
from whisper_service.live.decoder import _decode_rows
from whisper_service.live.encoder import encode, short_positions
from whisper_service.live.session import (
    BEHIND_SECONDS, BEHIND_STEP_SECONDS, END_PAD_SECONDS, MAX_STEP_SECONDS, STEP_PER_DECODE,
    STEP_SECONDS, Behind, DecodeRequest, LiveOptions, LiveSession, UtteranceDone,
)

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def sentence(tmp_path_factory) -> np.ndarray:
    return read_pcm(spoken_wav(SENTENCE, tmp_path_factory.mktemp("latency"), before=1.0, after=1.0))


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(session_module, "time", clock.as_time_module())
    return clock


def stream(audio: np.ndarray, delay_frames: int, clock: FakeClock, options=LiveOptions()):
    """Feed frame by frame at real time on the clock; a decode asked for comes back
    `delay_frames` frames later (a host that slow). The session, its events and every
    request with the stream time it was made at."""
    decoder, events = ScriptedDecoder(), []
    session = LiveSession(options, events.append)
    pending: List[tuple] = []  # (frame index when due back, request)
    made: List[tuple] = []  # (stream seconds, request, the lag the session had said)
    frames = range(0, len(audio), FRAME)
    for index, start in enumerate(frames):
        session.feed(audio[start:start + FRAME])
        clock.advance(FRAME / RATE)
        for due, request in [p for p in pending if p[0] <= index]:
            pending.remove((due, request))
            session.apply(request, decoder.decode([request])[0])
        request = session.next_request()
        if request is not None:
            made.append((session.seconds, request, session.behind))
            pending.append((index + delay_frames, request))
    session.stop()
    while pending or (request := session.next_request()) is not None:
        if pending:
            _, request = pending.pop(0)
        else:
            made.append((session.seconds, request, session.behind))
        session.apply(request, decoder.decode([request])[0])
        clock.advance(delay_frames * FRAME / RATE)
    assert session.settled
    return session, events, made


def test_a_fast_host_decodes_every_half_second_of_new_speech(sentence, clock):
    session, events, made = stream(sentence, delay_frames=0, clock=clock)
    assert session.step == STEP_SECONDS
    tentative = [at for at, r, _ in made if not r.final]
    assert all(b - a >= STEP_SECONDS - 1e-6 for a, b in zip(tentative, tentative[1:]))
    assert not any(isinstance(e, Behind) for e in events)
    assert all(r.fast for _, r, _ in made if not r.final)  # greedy, short input
    assert [r.fast for _, r, _ in made if r.final] == [False]  # the beam, the full window


def test_the_step_grows_with_the_decodes_round_trip(sentence, clock):
    session, events, made = stream(sentence, delay_frames=4, clock=clock)  # 1 s a decode
    assert session.step == pytest.approx(min(MAX_STEP_SECONDS, STEP_PER_DECODE * 1.0))
    tentative = [at for at, r, _ in made if not r.final]
    gaps = [b - a for a, b in zip(tentative, tentative[1:])]
    assert gaps and min(gaps) >= 1.0 - 1e-6  # never a decode asked for while one is out
    assert session.text == SENTENCE


def test_a_session_that_falls_behind_says_so_catches_up_and_keeps_every_word(sentence, clock):
    audio = np.concatenate([sentence] * 3)  # three utterances
    session, events, made = stream(audio, delay_frames=16, clock=clock)  # 4 s a decode
    behind = [e.seconds for e in events if isinstance(e, Behind)]
    assert behind and behind[0] >= BEHIND_SECONDS, behind
    # said again only as it grows by a second or more, and 0 once caught up
    said = [s for s in behind if s]
    assert all(b >= a + 1.0 for a, b in zip(said, said[1:]))
    assert behind[-1] == 0.0
    # while behind: tentative decodes only every BEHIND_STEP_SECONDS, the last ones fast
    assert any(r.final and r.fast and lag for _, r, lag in made)
    assert all(r.fast == (not r.final or bool(lag)) for _, r, lag in made)
    previous = {}
    for _, r, lag in made:
        number = r.utterance.number
        if lag and not r.final and number in previous:
            assert len(r.audio) - previous[number] >= BEHIND_STEP_SECONDS * RATE
        previous[number] = len(r.audio)
    # nothing heard was dropped: every utterance's text is whole
    done = [e.text for e in events if isinstance(e, UtteranceDone)]
    assert done == [SENTENCE] * 3, done
    assert session.text == " ".join([SENTENCE] * 3)


def test_an_utterance_keeps_the_quiet_end_of_its_last_word(sentence, clock):
    session, events, made = stream(sentence, delay_frames=0, clock=clock)
    final = next(r for _, r, _ in made if r.final)
    stopped = next(e for e in events if type(e).__name__ == "SpeechStopped")
    assert final.end == pytest.approx(stopped.at + END_PAD_SECONDS, abs=1e-6)


def test_the_next_utterance_does_not_reach_back_into_the_last(sentence, clock):
    # a 0.1 s silence ends an utterance: the pads at both sides of a short pause would overlap
    gap = np.zeros(int(0.35 * RATE), dtype=np.float32)
    audio = np.concatenate([sentence[:-RATE], gap, sentence[RATE:]])
    session, events, made = stream(audio, 0, clock, LiveOptions(end_silence_ms=100))
    finals = [r for _, r, _ in made if r.final]
    assert len(finals) >= 2
    for earlier, later in zip(finals, finals[1:]):
        assert later.offset >= earlier.end - 1e-6


def test_the_short_encoder_input_hears_what_the_full_window_hears(sentence):
    loaded = bundled_model()
    if loaded.windows is None:
        pytest.fail("the bundled model has no CTranslate2 twin: install ctranslate2")
    speech = sentence[int(0.8 * RATE):-int(0.8 * RATE)]
    assert short_positions(1500, len(speech)) == 500  # 10 s of 30: a third of the encoder
    assert encode(loaded, [speech], short=True).shape[1:] == (500, 384)
    assert encode(loaded, [speech], short=False).shape[1:] == (1500, 384)

    class Session:
        options = LiveOptions(language="en")

    def text(tentative: bool) -> str:
        request = DecodeRequest(session=Session(), utterance=None, audio=speech, offset=0.0,
                                prompt="", language="en", final=not tentative, fast=tentative)
        (result,) = _decode_rows(loaded, [request], tentative)
        return "".join(w.word for w in result.words)

    # tentative (greedy, 10 s of input) against final (beam 5, the 30 s window): tiny.en
    # hears espeak-ng's "brown" as "round" both ways; measured: the same words
    short, full = text(True), text(False)
    assert word_error_rate(full, short) == 0.0, (short, full)
    assert word_error_rate(SENTENCE, short) <= 0.25, short
