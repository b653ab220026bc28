"""Speakers of a live stream (issue 25.4): each utterance labelled when it ends, the same
label for the same voice all session long, on espeak-ng dialogues in short turns."""

from __future__ import annotations

import numpy as np
import pytest
from whisper.audio import SAMPLE_RATE

from conversations import Conversation, dialogue, wrong_lines
from whisper_service.live.session import (
    Committed, DecodeRequest, DecodeResult, LiveOptions, LiveSession, SpeakerFound, UtteranceDone,
)
from whisper_service.speakers import SpeakerHints
from whisper_service.speakers.online import OnlineSpeakers, utterance_voice
from whisper_service.transcript import Word

PAD = 0.2  # seconds kept before a turn, as the live session's START_PAD_SECONDS


def turn_by_turn(talk: Conversation, speakers: OnlineSpeakers):
    """Each turn's label, its audio given as a live session hands over an utterance."""
    return [speakers.label(talk.audio[int((start - PAD) * SAMPLE_RATE):int((end + PAD) * SAMPLE_RATE)])
            for start, end, _ in talk.turns]


def as_found(talk: Conversation, labels):
    return [(start, end, label) for (start, end, _), label in zip(talk.turns, labels)]


@pytest.mark.parametrize("speakers, turns, seed", [(2, 6, 0), (2, 6, 1), (3, 10, 0), (4, 10, 1)])
def test_every_turn_keeps_its_voices_label(speakers, turns, seed):
    talk = dialogue(speakers, turns, seed=seed)
    online = OnlineSpeakers()
    labels = turn_by_turn(talk, online)
    assert online.count == speakers
    assert labels[0] == 0 and wrong_lines(talk, as_found(talk, labels)) == 0, labels


def test_max_speakers_caps_the_count():
    talk = dialogue(3, 10, seed=2)
    online = OnlineSpeakers(SpeakerHints(max_speakers=2))
    labels = turn_by_turn(talk, online)
    assert online.count == 2 and set(labels) == {0, 1}


def test_silence_and_clicks_have_no_voice():
    assert utterance_voice(np.zeros(SAMPLE_RATE, np.float32)) is None
    assert utterance_voice(np.full(SAMPLE_RATE // 10, 0.5, np.float32)) is None  # 0.1 s
    assert OnlineSpeakers().label(np.zeros(SAMPLE_RATE, np.float32)) is None


# --- in a live session ------------------------------------------------------------------------

class WholeDecoder:
    """Hears one word per utterance, as long as the audio it is given: every decode agrees."""

    def decode(self, request: DecodeRequest) -> DecodeResult:
        return DecodeResult((Word(" word.", 0.0, len(request.audio) / SAMPLE_RATE, 0.9),), "en", 0.95)


def spaced_turns(talk: Conversation, pause: float = 1.2) -> np.ndarray:
    """The dialogue's turns with `pause` seconds of silence between them: each turn one
    utterance of the live session (its gate ends one after 0.5 s of silence)."""
    gap = np.zeros(int(pause * SAMPLE_RATE), np.float32)
    pieces = [gap]
    for start, end, _ in talk.turns:
        pieces += [talk.audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)], gap]
    return np.concatenate(pieces)


def test_a_live_session_labels_each_utterance_and_keeps_the_labels_in_its_transcript():
    talk = dialogue(2, 6, seed=1)
    events = []
    session = LiveSession(LiveOptions.from_mapping({"diarize": "true"}), events.append)
    decoder, audio = WholeDecoder(), spaced_turns(talk)
    for first in range(0, len(audio), SAMPLE_RATE // 4):
        session.feed(audio[first:first + SAMPLE_RATE // 4])
        while (request := session.next_request()) is not None:
            session.apply(request, decoder.decode(request))
    session.stop()
    while (request := session.next_request()) is not None:
        session.apply(request, decoder.decode(request))
    found = [e for e in events if isinstance(e, SpeakerFound)]
    done = [e for e in events if isinstance(e, UtteranceDone)]
    assert len(done) == len(talk.turns) and [e.utterance for e in found] == [e.utterance for e in done]
    truth = [who for _, _, who in talk.turns]
    assert [e.speaker for e in found] == truth  # 0, 1, 0, 1, ...: the first voice is 0
    # each SpeakerFound comes after its utterance's committed text, before its UtteranceDone
    for event in found:
        committed = [i for i, e in enumerate(events) if isinstance(e, Committed) and e.utterance == event.utterance]
        assert committed and max(committed) < events.index(event)
    transcript = session.transcript()
    assert [s.id for s in transcript.speakers] == ["S1", "S2"]
    assert [segment.speaker for segment in transcript.segments] == [f"S{who + 1}" for who in truth]


def test_without_diarize_a_live_session_names_no_speaker():
    events = []
    session = LiveSession(LiveOptions(), events.append)
    session.feed(spaced_turns(dialogue(2, 2, seed=0)))
    session.stop()
    while (request := session.next_request()) is not None:
        session.apply(request, WholeDecoder().decode(request))
    assert any(isinstance(e, UtteranceDone) for e in events)
    assert not any(isinstance(e, SpeakerFound) for e in events)
    assert session.transcript().speakers == ()
