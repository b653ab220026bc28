"""The live engine without a server or a model: sessions with the real speech gate and a
scripted decoder, the scheduler's batching, the lock that lets live decodes go first, the
audio helpers and the live options."""

from __future__ import annotations

import threading
import time
import wave
from typing import List

import numpy as np
import pytest

from bundled_model import spoken_wav
from conftest import wait_until
from whisper_service.errors import BadOption
from whisper_service.live.audio import BadAudio, Recording, Resampler, pcm16_samples
from whisper_service.live.scheduler import LiveScheduler, TooManySessions
from whisper_service.live.session import (
    MAX_BUFFER_SAMPLES, START_PAD_SECONDS, Committed, DecodeFailed, DecodeResult, LanguageFixed, LiveOptions,
    LiveSession, Partial, SessionTooLong, SpeechStarted, SpeechStopped, UtteranceDone,
)
from whisper_service.models import TurnLock
from whisper_service.transcript import Word

RATE = 16000
FRAME = RATE // 4  # 0.25 s, as the live page sends


def read_pcm(path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == RATE and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768


@pytest.fixture(scope="module")
def sentence(tmp_path_factory) -> np.ndarray:
    """About 4 s of speech at 16 kHz, 1 s of silence before and after."""
    return read_pcm(spoken_wav("The quick brown fox jumps over the lazy dog.",
                               tmp_path_factory.mktemp("live"), before=1.0, after=1.0))


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> np.ndarray:
    """About 40 s of speech without a pause of half a second: no silence ends it."""
    text = " ".join(["one two three four five six seven eight nine ten"] * 12)
    return read_pcm(spoken_wav(text, tmp_path_factory.mktemp("live-long")))


class ScriptedDecoder:
    """Hears WORDS at a steady pace from where the utterance's speech begins: a buffer holds
    the words it holds whole. The last
    word heard is garbled every other call (as a real decoder's last word wavers), so only
    agreement commits it."""

    WORDS = [" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."]
    SECONDS_PER_WORD = 0.3

    def __init__(self):
        self.calls: List[int] = []  # rows per call
        self.requests = []

    def check(self, options):
        if options.model not in (None, "tiny"):
            raise BadOption("model", "'nope' is not offered here; choose one of tiny")

    def decode(self, requests):
        self.calls.append(len(requests))
        self.requests.extend(requests)
        return [self._result(r, len(self.calls)) for r in requests]

    def _result(self, request, call):
        words = []
        for i, text in enumerate(self.WORDS):
            speech = request.utterance.first / RATE + START_PAD_SECONDS
            start = speech + i * self.SECONDS_PER_WORD  # the stream's time of the word
            begin, end = start - request.offset, start + self.SECONDS_PER_WORD - request.offset
            if begin < 0 or end > len(request.audio) / RATE:
                continue
            words.append(Word(text, begin, end, 0.9))
        if words and call % 2 and not request.final:
            words[-1] = Word(words[-1].word + "x", words[-1].start, words[-1].end, 0.3)
        return DecodeResult(tuple(words), "en", 0.95)


def run_session(audio: np.ndarray, decoder=None, options=LiveOptions(), frame=FRAME):
    """Feed the audio frame by frame (each frame's due decode answered at once, as a very
    fast scheduler would), then stop; the session, its events and the decoder."""
    decoder = decoder or ScriptedDecoder()
    events = []
    session = LiveSession(options, events.append)

    def drain():
        while True:
            request = session.next_request()
            if request is None:
                return
            session.apply(request, decoder.decode([request])[0])

    for start in range(0, len(audio), frame):
        session.feed(audio[start:start + frame])
        drain()
    session.stop()
    drain()
    assert session.settled
    return session, events, decoder


def test_a_minute_of_silence_makes_no_event_and_no_decode():
    quiet = np.random.default_rng(0).normal(0, 0.003, 60 * RATE).astype(np.float32)  # -50 dB hiss
    session, events, decoder = run_session(quiet)
    assert events == []
    assert decoder.calls == [] and session.decodes == 0
    assert session.text == "" and session.segments() == []


def test_speech_gives_partials_then_commits_that_never_change(sentence):
    session, events, decoder = run_session(sentence)
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and SpeechStopped in kinds and kinds[-1] is UtteranceDone
    started = events[0]
    assert 0.6 < started.at < 1.3  # the speech begins 1 s in
    partials = [e for e in events if isinstance(e, Partial) and e.text]
    commits = [e for e in events if isinstance(e, Committed)]
    assert partials and commits
    # the first words are shown tentatively before anything is committed
    assert events.index(partials[0]) < events.index(commits[0])
    # committed text only grows: appended pieces, in order, never repeated
    committed = "".join(c.text for c in commits)
    assert committed == "".join(ScriptedDecoder.WORDS)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(commits, commits[1:]))
    # a garbled last word is never committed: it never agreed with the next decode
    assert "x" not in committed.replace("fox", "")
    assert events[-1].text == committed.strip() == session.text
    # the decodes came while speaking, every half second of new speech, not at each frame
    assert 3 <= decoder.calls.__len__() <= 2 * len(sentence) / RATE
    # committed words still in the buffer are never the prompt (the decoder would skip them)
    assert {r.prompt for r in decoder.requests} == {""}


def test_the_next_utterance_is_prompted_with_what_was_committed(sentence):
    session, events, decoder = run_session(np.concatenate([sentence, sentence]))
    done = [e for e in events if isinstance(e, UtteranceDone)]
    assert [e.text for e in done] == ["The quick brown fox jumps over the lazy dog."] * 2
    second = [r for r in decoder.requests if r.utterance.number == done[1].utterance]
    assert second and {r.prompt for r in second} == {" The quick brown fox jumps over the lazy dog."}
    assert session.text == "The quick brown fox jumps over the lazy dog. " * 1 + \
        "The quick brown fox jumps over the lazy dog."


def test_committed_words_become_sentence_segments(sentence):
    session, _, _ = run_session(sentence)
    segments = session.segments()
    assert len(segments) == 1 and segments[0].text.strip() == "The quick brown fox jumps over the lazy dog."
    assert segments[0].words and segments[0].start == segments[0].words[0].start


def test_the_buffer_never_holds_more_than_one_window(long_speech):
    class NeverAgrees(ScriptedDecoder):
        def _result(self, request, call):
            return DecodeResult((Word(f" w{call}", 0.0, 0.5, 0.5),), "en", 0.9)

    session, events, decoder = run_session(long_speech, NeverAgrees(), frame=RATE)
    assert len(long_speech) > MAX_BUFFER_SAMPLES
    assert max(len(r.audio) for r in decoder.requests) <= MAX_BUFFER_SAMPLES
    # a full window ended its utterance, and the speech went on in the next
    assert sum(isinstance(e, UtteranceDone) for e in events) >= 2


def test_trimming_after_commits_keeps_the_buffer_short(long_speech):
    class Steady(ScriptedDecoder):
        """One word every 0.4 s of the stream, always the same: everything agrees."""

        def _result(self, request, call):
            first = int(np.ceil(request.offset / 0.4))
            last = int((request.offset + len(request.audio) / RATE) / 0.4) - 1
            return DecodeResult(tuple(
                Word(f" w{i}", i * 0.4 - request.offset, (i + 1) * 0.4 - request.offset, 0.9)
                for i in range(first, last)), "en", 0.9)

    session, events, decoder = run_session(long_speech, Steady())
    assert max(len(r.audio) for r in decoder.requests) < 20 * RATE  # trimmed past 15 s
    words = session.text.split()
    assert len(words) == len(set(words)) and len(words) > 60  # nothing committed twice


def test_auto_language_is_fixed_once_sure(sentence):
    _, events, _ = run_session(sentence)
    fixed = [e for e in events if isinstance(e, LanguageFixed)]
    assert [(e.language, e.probability) for e in fixed] == [("en", 0.95)]


def test_a_session_past_its_length_ends_keeping_what_it_heard(sentence):
    session = LiveSession(LiveOptions(max_seconds=2.0), lambda event: None)
    session.feed(sentence[:RATE])
    with pytest.raises(SessionTooLong, match="at most 0.0333333 minutes"):
        session.feed(sentence[RATE:3 * RATE])
    assert session.samples == 2 * RATE and session.stopped
    with pytest.raises(SessionTooLong):
        session.feed(sentence[:FRAME])


def test_a_failed_decode_is_said_once_and_the_utterance_ends(sentence):
    class Broken(ScriptedDecoder):
        def decode(self, requests):
            raise AssertionError("unused")

    events = []
    session = LiveSession(LiveOptions(), events.append)
    for start in range(0, len(sentence), FRAME):
        session.feed(sentence[start:start + FRAME])
        request = session.next_request()
        if request is not None:
            session.abandon(request, RuntimeError("GPU fell off"))
    session.stop()
    while (request := session.next_request()) is not None:
        session.abandon(request, RuntimeError("GPU fell off"))
    failures = [e for e in events if isinstance(e, DecodeFailed)]
    assert len(failures) == 1 and "server's log" in failures[0].message
    assert session.settled and isinstance(events[-1], UtteranceDone)


class RoundDecoder(ScriptedDecoder):
    """Decodes only between rounds of frames: a decode the first frame of a round made due
    waits until every session has its frame, so sessions share calls however fast or slow
    the scheduler's thread runs."""

    def __init__(self):
        super().__init__()
        self.feeding = threading.Lock()

    def decode(self, requests):
        with self.feeding:
            return super().decode(requests)


def test_the_scheduler_decodes_sessions_together_and_bounds_them(sentence):
    decoder = RoundDecoder()
    scheduler = LiveScheduler(decoder, max_sessions=3)
    sessions = [scheduler.open(LiveOptions(), lambda event: None) for _ in range(3)]
    with pytest.raises(TooManySessions, match="3 live session"):
        scheduler.open(LiveOptions(), lambda event: None)
    with pytest.raises(BadOption, match="not offered"):
        scheduler.open(LiveOptions(model="nope"), lambda event: None)
    for start in range(0, len(sentence), FRAME):
        with decoder.feeding:
            for session in sessions:
                session.feed(sentence[start:start + FRAME])
        time.sleep(0.005)
    for session in sessions:
        session.stop()
    wait_until(lambda: all(s.settled for s in sessions), 60, 0.01, "the sessions to settle")
    assert all(s.text == "The quick brown fox jumps over the lazy dog." for s in sessions)
    assert max(decoder.calls) > 1  # sessions shared decoder calls
    scheduler.close(sessions[0])
    assert scheduler.active == 2
    scheduler.open(LiveOptions(), lambda event: None)  # a freed place is taken again
    scheduler.stop()


def test_live_decodes_go_before_file_batches_waiting_for_the_model():
    lock, order = TurnLock(), []
    lock.acquire()  # a file job's batch is running

    def take(name, urgent):
        if urgent:
            with lock.urgent():
                order.append(name)
        else:
            with lock:
                order.append(name)

    def waiting() -> int:  # threads waiting for their turn (the lock's condition's waiters)
        return len(lock._changed._waiters)

    batch = threading.Thread(target=take, args=("next batch", False))
    batch.start()
    wait_until(lambda: waiting() == 1, what="the next batch to wait")
    live = threading.Thread(target=take, args=("live", True))
    live.start()
    wait_until(lambda: waiting() == 2, what="the live decode to wait too")
    lock.release()
    batch.join(5)
    live.join(5)
    assert order == ["live", "next batch"]
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()


def test_pcm_frames_and_resampling():
    with pytest.raises(BadAudio, match="even number of bytes; this one has 3"):
        pcm16_samples(b"\x00\x01\x02")
    assert pcm16_samples(b"\x00\x80\xff\x7f").tolist() == [-1.0, 32767 / 32768]
    with pytest.raises(BadAudio, match="8000 to 96000 Hz"):
        Resampler(4000)
    tone = np.sin(2 * np.pi * 440 * np.arange(24000) / 24000).astype(np.float32)
    resample = Resampler(24000)
    out = np.concatenate([resample(tone[i:i + 2400]) for i in range(0, len(tone), 2400)])
    assert len(out) == RATE
    # the same tone at 16 kHz, frame edges leaving no mark (the filter's delay aside)
    delay = np.argmax(np.correlate(out[:2000], np.sin(2 * np.pi * 440 * np.arange(400) / RATE)))
    expected = np.sin(2 * np.pi * 440 * (np.arange(RATE) - delay) / RATE)
    assert np.abs(out[1000:15000] - expected[1000:15000]).max() < 0.02


def test_the_recording_is_a_wav_of_what_came(tmp_path, sentence):
    recording = Recording(str(tmp_path / "media"))
    recording.write(sentence[:RATE])
    recording.write(sentence[RATE:2 * RATE])
    recording.close()
    assert np.abs(read_pcm(tmp_path / "media") - sentence[:2 * RATE]).max() <= 1 / 32768


def test_live_options_are_checked_and_name_the_valid_ones():
    options = LiveOptions.from_mapping({"language": "English", "task": "translate"}, max_seconds=60)
    assert (options.language, options.task, options.beam_size, options.max_seconds) == \
        ("en", "translate", 5, 60)  # the beam of the upload page
    assert LiveOptions.from_mapping({"beam_size": "greedy"}).beam_size is None
    assert LiveOptions.from_mapping({"language": "auto"}).language is None
    with pytest.raises(BadOption, match="is not a live option; the live options are model, "
                                        "language, task, beam_size, initial_prompt, diarize, "
                                        "max_speakers"):
        LiveOptions.from_mapping({"num_speakers": "2"})
    assert LiveOptions.from_mapping({"diarize": "true", "max_speakers": "3"}).max_speakers == 3
    with pytest.raises(BadOption, match="max_speakers"):
        LiveOptions.from_mapping({"max_speakers": "3"})  # needs diarize on
    with pytest.raises(BadOption, match="language"):
        LiveOptions.from_mapping({"language": "klingon"})
