"""A live session: audio in as it is spoken, caption events out.

The web layer (or any caller) feeds 16 kHz samples as they arrive; the scheduler asks each
session for its next decode and hands back the words found. What happens between:

- A SpeechGate (gate.py) finds where speech starts and stops. Silence opens no utterance:
  it is recorded, never decoded, never answered.
- While someone speaks, the utterance's buffer (from START_PAD_SECONDS before the speech,
  never reaching back into the previous utterance) is decoded again each time a step more
  of it has come: tentative decodes (greedy, a short encoder input: decoder.py). The step
  adapts to the host: STEP_PER_DECODE times as long as the last decode took to come back,
  between STEP_SECONDS and MAX_STEP_SECONDS. A commit policy (LocalAgreement-2 unless told
  otherwise) says which words are final.
- Committed text is final: sent once, kept for the transcript; the last PROMPT_CHARS
  characters of what was committed before the buffer begins are the prompt of its decodes
  (committed words still in the buffer are not: the decoder would skip them as said). Past TRIM_SECONDS the buffer is cut
  after the committed words, and past SENTENCE_TRIM_SECONDS once the committed words end a
  sentence (not with diarize, whose speaker is told from the buffer's audio); it never holds more than one Whisper window (30 s): a full buffer ends the
  utterance there and the next one goes on.
- END_SILENCE_MS of silence (the gate's) ends an utterance, END_PAD_SECONDS after the
  silence began (so a word's quiet end is kept): one last decode (the session's beam, the
  full window), and all its words are committed.
- A session whose text lags its audio by BEHIND_SECONDS or more (the host cannot decode as
  fast as it is spoken) says so (Behind, with the lag) and catches up: tentative decodes
  only every BEHIND_STEP_SECONDS of new audio, and its utterances' last decodes greedy on a
  short input, until the lag is under CAUGHT_UP_SECONDS again (Behind with 0). Nothing
  heard is dropped: every utterance still gets its last decode.
- language None ("auto"): each decode detects it, until one is LANGUAGE_CONFIDENCE sure
  on at least LANGUAGE_MIN_SECONDS of audio; from then on it is fixed.
- diarize: each utterance's voice, once it ends, gets a speaker (speakers/online.py: the
  same number for the same voice all session long), told in a SpeakerFound event and kept
  on the transcript's segments. Given a SpeakerLabeler (labels.py; the scheduler gives its
  own), the voice is told on the labeler's thread, never on the decoding one: SpeakerFound
  then comes after the utterance's UtteranceDone (and maybe after later utterances' text),
  one session's in the order of its utterances, and the session is not settled until its
  labels are in. Without one, it is told at once, before UtteranceDone.

Events go to `on_event` from whichever thread caused them (feeding or decoding); a caller
that needs them on one thread queues them. One decode per session is in flight at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from whisper.audio import N_SAMPLES, SAMPLE_RATE

from whisper_service.errors import BadOption, ServiceError
from whisper_service.failures import explain
from whisper_service.options import TranscribeOptions
from whisper_service.transcript import Segment, Transcript, Word
from whisper_service.live.gate import END_SILENCE_MS, SpeechGate, Transition
from whisper_service.live.labels import LabelTask, SpeakerLabeler
from whisper_service.live.policy import CommitPolicy, LocalAgreement, Update
from whisper_service.speakers import SpeakerHints, SpeakerTurn, assign_speakers
from whisper_service.speakers.online import OnlineSpeakers

log = logging.getLogger(__name__)

STEP_SECONDS = 0.5  # a speaking utterance is decoded again once this much more has come ...
STEP_PER_DECODE = 1.5  # ... or this many times the last decode's round trip ...
MAX_STEP_SECONDS = 2.0  # ... up to this much
START_PAD_SECONDS = 0.3  # kept before the gate's start of speech, so no onset is clipped
END_PAD_SECONDS = 0.2  # kept after the silence that ends an utterance began
BEHIND_SECONDS = 3.0  # text this far behind the audio: the session says so and catches up
CAUGHT_UP_SECONDS = 1.5  # ... until it is this close again
BEHIND_STEP_SECONDS = 3.0  # the step while behind
SENTENCE_TRIM_SECONDS = 5.0  # a buffer this long is cut after committed words ending a sentence
MIN_UTTERANCE_SECONDS = 0.5  # shorter ones, padding included (a cough, a click), are not decoded
TRIM_SECONDS = 15.0  # a longer buffer is cut after its committed words
MAX_BUFFER_SAMPLES = N_SAMPLES  # one Whisper window: 30 s
PROMPT_CHARS = 200  # of committed text given as the prompt of the next decode
LANGUAGE_CONFIDENCE = 0.8  # "auto" fixes a language detected at least this likely ...
LANGUAGE_MIN_SECONDS = 1.0  # ... on at least this much audio
SENTENCE_ENDS = (".", "?", "!", "。", "？", "！")  # a transcript segment ends after these
MAX_SEGMENT_SECONDS = 10.0  # ... or once it is this long


@dataclass(frozen=True)
class LiveOptions:
    model: Optional[str] = None  # None: the default model
    language: Optional[str] = None  # a code; None: detect and fix once sure
    task: str = "transcribe"  # or translate
    beam_size: Optional[int] = TranscribeOptions.beam_size  # as for files; None: greedy, the fastest
    initial_prompt: Optional[str] = None  # the prompt until committed text replaces it
    max_seconds: float = 4 * 3600.0  # the longest stream a session takes
    end_silence_ms: int = END_SILENCE_MS  # silence that ends an utterance
    diarize: bool = False  # label each utterance's speaker (SpeakerFound events)
    max_speakers: Optional[int] = None  # with diarize: tell at most this many voices apart

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **limits: Any) -> "LiveOptions":
        """Options from strings (a query string, a JSON message), checked as the upload's
        are; names that do not apply to live decoding are refused, naming those that do.
        limits: max_seconds and the like, from the server's settings."""
        unknown = sorted(set(values) - set(LIVE_OPTION_NAMES))
        if unknown:
            raise BadOption(unknown[0], "is not a live option; the live options are "
                            + ", ".join(LIVE_OPTION_NAMES))
        checked = TranscribeOptions.from_mapping(values)
        return cls(model=checked.model, language=checked.language, task=checked.task,
                   beam_size=checked.beam_size, initial_prompt=checked.initial_prompt,
                   diarize=checked.diarize, max_speakers=checked.max_speakers, **limits)

    def as_transcribe_options(self) -> TranscribeOptions:
        """What the finished job says it was made with."""
        return TranscribeOptions(task=self.task, language=self.language, model=self.model,
                                 beam_size=self.beam_size, initial_prompt=self.initial_prompt,
                                 word_timestamps=True, diarize=self.diarize,
                                 max_speakers=self.max_speakers)


# the options a live session takes (as the upload page names them)
LIVE_OPTION_NAMES = ("model", "language", "task", "beam_size", "initial_prompt", "diarize",
                     "max_speakers")


# --- events -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpeechStarted:
    utterance: int
    at: float  # seconds into the stream


@dataclass(frozen=True)
class SpeechStopped:
    utterance: int
    at: float


@dataclass(frozen=True)
class Partial:
    utterance: int
    text: str  # the tentative text after everything committed; replaces the last one


@dataclass(frozen=True)
class Committed:
    utterance: int
    text: str  # final; begins with its own space
    start: float
    end: float


@dataclass(frozen=True)
class UtteranceDone:
    utterance: int
    text: str  # all the utterance's committed text
    start: float
    end: float


@dataclass(frozen=True)
class SpeakerFound:
    utterance: int
    speaker: int  # 0, 1, ... in order of first appearance; the same voice keeps its number


@dataclass(frozen=True)
class LanguageFixed:
    language: str
    probability: float


@dataclass(frozen=True)
class Behind:
    seconds: float  # how far the text lags the audio; 0: caught up again


@dataclass(frozen=True)
class DecodeFailed:
    message: str  # why, for people (a model that could not load, ...)


Event = Union[SpeechStarted, SpeechStopped, Partial, Committed, UtteranceDone, SpeakerFound,
              LanguageFixed, Behind, DecodeFailed]


class SessionTooLong(ServiceError):
    def __init__(self, limit_seconds: float):
        super().__init__(f"a live session lasts at most {limit_seconds / 60:g} minutes; "
                         "this one has ended there (what was said is kept)")


# --- what the scheduler sees --------------------------------------------------------------

@dataclass(frozen=True)
class DecodeRequest:
    session: "LiveSession"
    utterance: "_Utterance" = field(repr=False)
    audio: np.ndarray = field(repr=False)  # 16 kHz float32, at most 30 s
    offset: float  # where the audio begins, in seconds into the stream
    prompt: str  # committed text before it ("" for none)
    language: Optional[str]  # None: detect it
    final: bool  # the utterance has ended: everything found is committed
    fast: bool = True  # greedy on a short encoder input (tentative, or a session behind)
    made: float = 0.0  # time.monotonic() when it was asked for

    @property
    def options(self) -> LiveOptions:
        return self.session.options

    @property
    def end(self) -> float:
        """Where the audio ends, in seconds into the stream."""
        return self.offset + len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class DecodeResult:
    words: Tuple[Word, ...]  # times from the start of the request's audio
    language: str
    language_probability: float
    model: str = ""  # the model that decoded it


class _Utterance:
    def __init__(self, number: int, start: int, policy: CommitPolicy):
        self.number = number
        self.start = start  # the stream's sample where the buffer begins
        self.first = start  # ... where the utterance began
        self.buffer = np.zeros(MAX_BUFFER_SAMPLES, dtype=np.float32)  # allocated once
        self.length = 0  # samples in the buffer
        self.decoded = 0  # samples the last decode request saw
        self.policy = policy
        self.words: List[Word] = []  # committed, on the stream's timeline

    def append(self, samples: np.ndarray) -> int:
        """Add what fits; how many samples were taken."""
        taken = min(len(samples), MAX_BUFFER_SAMPLES - self.length)
        self.buffer[self.length:self.length + taken] = samples[:taken]
        self.length += taken
        return taken

    def trim_to(self, sample: int) -> None:
        cut = min(max(0, sample - self.start), self.length)
        if cut:
            self.buffer[:self.length - cut] = self.buffer[cut:self.length].copy()
            self.length -= cut
            self.decoded = max(0, self.decoded - cut)
            self.start += cut

    @property
    def seconds(self) -> float:
        return self.length / SAMPLE_RATE


class LiveSession:
    def __init__(self, options: LiveOptions, on_event: Callable[[Event], None],
                 policy: Callable[[], CommitPolicy] = LocalAgreement,
                 wake: Callable[[], None] = lambda: None,
                 record: Callable[[np.ndarray], None] = lambda samples: None,
                 labeler: Optional[SpeakerLabeler] = None):
        """on_event: told every event. policy: makes a commit policy per utterance. wake:
        called when a decode may be due (the scheduler's doorbell). record: given every
        sample the session takes, in order (the recording). labeler: where diarize's
        speaker labels are told (None: at once, on the thread that ends the utterance)."""
        self.options = options
        self._on_event = on_event
        self._record = record
        self._policy = policy
        self._wake = wake
        self._lock = threading.RLock()
        self._gate = SpeechGate(options.end_silence_ms)
        self._samples = 0  # received so far
        self._recent = np.zeros(int(START_PAD_SECONDS * SAMPLE_RATE), dtype=np.float32)
        self._current: Optional[_Utterance] = None
        self._ending: Deque[_Utterance] = deque()  # ended, their last decode still to come
        self._in_flight = False
        self._count = 0  # utterances opened
        self._done: List[_Utterance] = []  # finished, with their committed words
        self.language = options.language  # fixed: given, or detected with confidence
        self.language_probability = 1.0 if options.language else 0.0
        self.decodes = 0  # decode requests made (silence makes none)
        self.step = STEP_SECONDS  # new audio that makes a tentative decode due
        self.behind = 0.0  # the lag last said (Behind); 0: not behind
        self._heard = 0.0  # seconds into the stream up to which the text is found
        self._kept_end = 0  # the stream's sample where the last ended utterance's audio ends
        self._failed = False  # a decode failed (said once)
        self.stopped = False
        self.model_name = ""  # the model of the latest decode
        self._speakers = (OnlineSpeakers(SpeakerHints(max_speakers=options.max_speakers))
                          if options.diarize else None)
        self._speaker_of: dict = {}  # utterance number -> speaker, once it ended with words
        self._labeler = labeler
        self._labelling = 0  # utterances handed to the labeler, their speaker not yet told

    def reconfigure(self, options: LiveOptions) -> None:
        """New options for the decodes to come (a protocol's session update)."""
        with self._lock:
            self.options = options
            self._gate.set_end_silence(options.end_silence_ms)
            if options.language:
                self.language, self.language_probability = options.language, 1.0

    @property
    def speaking(self) -> bool:
        """An utterance is open (audio since its start not yet ended)."""
        with self._lock:
            return self._current is not None

    # --- fed by the connection's thread ---------------------------------------------------

    @property
    def samples(self) -> int:
        """Samples taken so far."""
        return self._samples

    @property
    def seconds(self) -> float:
        return self._samples / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> None:
        """Take the next samples of the stream (float32, 16 kHz). Raises SessionTooLong
        past options.max_seconds (nothing of the excess is taken)."""
        samples = np.asarray(samples, dtype=np.float32)
        with self._lock:
            room = int(self.options.max_seconds * SAMPLE_RATE) - self._samples
            if room <= 0 or self.stopped:
                raise SessionTooLong(self.options.max_seconds)
            taken = samples[:room]
            self._record(taken)
            self._take(taken, self._gate.push(taken))
            self._samples += len(taken)
            self._recent = np.concatenate([self._recent, taken])[-len(self._recent):]
            if self._current is None and not self._ending and not self._in_flight:
                self._heard = self.seconds  # silence: nothing is waiting for its text
            self._check_lag()
            if len(samples) > room:
                self.stop()
                self._wake()
                raise SessionTooLong(self.options.max_seconds)
        self._wake()

    def commit(self) -> None:
        """End the current utterance now, as silence would."""
        with self._lock:
            if self._current is not None:
                self._end(self._current, self._samples)
                if self._gate.speaking:  # speech goes on: a new utterance from here
                    self._open(self._samples, pad=False)
        self._wake()

    def clear(self) -> None:
        """Drop the current utterance's audio not yet committed."""
        with self._lock:
            if self._current is not None:
                dropped = self._current
                self._current = None
                if dropped.words:
                    self._done.append(dropped)
                self._emit(Partial(dropped.number, ""))
                if self._gate.speaking:
                    self._open(self._samples, pad=False)

    def stop(self) -> None:
        """The stream ended: what is still being said is committed after its last decode."""
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
            for transition in self._gate.flush():
                self._transition(transition)
            if self._current is not None:
                self._end(self._current, self._samples)
        self._wake()

    @property
    def backlog_seconds(self) -> float:
        """Audio waiting for the decoder: the ended utterances still to be decoded, and what
        the current one took since its last decode request (what an overloaded decoder lets
        pile up; the connection's Intake bounds it)."""
        with self._lock:
            waiting = sum(u.length for u in self._ending)
            if self._current is not None:
                waiting += max(0, self._current.length - self._current.decoded)
            return waiting / SAMPLE_RATE

    @property
    def labelling(self) -> int:
        """Ended utterances whose speaker the labeler has still to tell."""
        with self._lock:
            return self._labelling

    @property
    def settled(self) -> bool:
        """Stopped, every utterance's last decode applied and its speaker told."""
        with self._lock:
            return (self.stopped and not self._in_flight and not self._ending
                    and not self._labelling)

    # --- asked by the scheduler -----------------------------------------------------------

    def next_request(self) -> Optional[DecodeRequest]:
        """The decode due now, if any (one at a time: None while one is in flight)."""
        with self._lock:
            if self._in_flight:
                return None
            if self._ending:
                return self._request(self._ending[0], final=True)
            current = self._current
            step = BEHIND_STEP_SECONDS if self.behind else self.step
            if current is None or current.length - current.decoded < step * SAMPLE_RATE:
                return None
            return self._request(current, final=False)

    def apply(self, request: DecodeRequest, result: DecodeResult) -> None:
        """The words a decode found (times from the request's audio start)."""
        with self._lock:
            self._in_flight = False
            self.model_name = result.model or self.model_name
            self._heard = max(self._heard, request.end)
            if request.made:
                took = time.monotonic() - request.made
                self.step = min(MAX_STEP_SECONDS, max(STEP_SECONDS, STEP_PER_DECODE * took))
            self._check_lag()
            self._settle_language(request, result)
            utterance = request.utterance
            update = utterance.policy.update(result.words, request.offset)
            self._commit(utterance, update)
            if request.final:
                self._commit(utterance, utterance.policy.finish())
                self._finish(utterance)
            else:
                self._emit(Partial(utterance.number, update.tentative_text))
                if utterance.policy.committed_end > 0 and (
                        utterance.seconds > TRIM_SECONDS
                        or (utterance.seconds > SENTENCE_TRIM_SECONDS and utterance.words
                            and utterance.words[-1].word.strip().endswith(SENTENCE_ENDS)
                            and self._speakers is None)):  # diarize: its voice needs the audio
                    end = int(utterance.policy.committed_end * SAMPLE_RATE)
                    utterance.trim_to(end)
                    utterance.policy.trim(end / SAMPLE_RATE)
        self._wake()

    def abandon(self, request: DecodeRequest, error: BaseException) -> None:
        """A decode failed. The session is told once (DecodeFailed, with the reason); an
        ended utterance ends with what it had committed, a running one is tried again."""
        with self._lock:
            self._in_flight = False
            self._heard = max(self._heard, request.end)
            if not self._failed:
                self._failed = True
                # people's sentence (failures.py): a model that cannot load names no path
                self._emit(DecodeFailed(explain(error).message if isinstance(error, ServiceError)
                                        else "the live decoder failed; see the server's log"))
            if request.final:
                self._finish(request.utterance)
        self._wake()

    # --- what the session said --------------------------------------------------------------

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(w.word for u in self._utterances() for w in u.words).strip()

    def transcript(self) -> Transcript:
        """What was committed, as the transcript of the whole stream (with diarize, each
        utterance's speaker on its segments and words)."""
        transcript = Transcript(
            task=self.options.task, language=self.language or "en",
            language_probability=self.language_probability, duration=self.seconds,
            model=self.model_name, text=self.text, segments=tuple(self.segments()))
        return assign_speakers(transcript, self._speaker_turns()) if self._speakers else transcript

    def _speaker_turns(self) -> List[SpeakerTurn]:
        with self._lock:
            return [SpeakerTurn(u.words[0].start, u.words[-1].end, self._speaker_of[u.number])
                    for u in self._utterances() if u.number in self._speaker_of]

    def segments(self) -> List[Segment]:
        """The committed words as transcript segments: cut after a sentence, or once
        MAX_SEGMENT_SECONDS long, and always at an utterance's end."""
        with self._lock:
            groups: List[List[Word]] = []
            for utterance in self._utterances():
                group: List[Word] = []
                for word in utterance.words:
                    group.append(word)
                    if (word.word.strip().endswith(SENTENCE_ENDS)
                            or word.end - group[0].start >= MAX_SEGMENT_SECONDS):
                        groups.append(group)
                        group = []
                if group:
                    groups.append(group)
        return [
            Segment(id=i, seek=0, start=words[0].start, end=words[-1].end,
                    text="".join(w.word for w in words), tokens=(), temperature=0.0,
                    avg_logprob=0.0, compression_ratio=0.0, no_speech_prob=0.0,
                    words=tuple(words))
            for i, words in enumerate(groups)
        ]

    # --- inside --------------------------------------------------------------------------

    def _utterances(self) -> List[_Utterance]:
        rest = [u for u in [*self._ending, self._current] if u is not None and u.words]
        return sorted([*self._done, *rest], key=lambda u: u.number)

    def _take(self, samples: np.ndarray, transitions: Sequence[Transition]) -> None:
        """Route the new samples: into the current utterance, opening and ending utterances
        where the gate's transitions fall."""
        cursor = 0
        for transition in transitions:
            upto = transition.sample - self._samples
            if self._current is not None:
                self._fill(samples[cursor:max(cursor, upto)], self._samples + cursor)
            cursor = max(cursor, upto)
            self._transition(transition, samples[:cursor])
        if self._current is not None:
            self._fill(samples[cursor:], self._samples + cursor)

    def _transition(self, transition: Transition, before: np.ndarray = np.zeros(0)) -> None:
        if transition.speech:
            if self._current is None:
                self._open(transition.sample, pad=True, before=before)
        elif self._current is not None:
            self._end(self._current, transition.sample, pad=True)

    def _fill(self, samples: np.ndarray, at: int) -> None:
        while len(samples):
            current = self._current
            taken = current.append(samples)
            samples, at = samples[taken:], at + taken
            if len(samples):  # a full window: it ends here, and the speech goes on
                self._end(current, at)
                self._open(at, pad=False)

    def _open(self, sample: int, pad: bool, before: np.ndarray = np.zeros(0)) -> None:
        self._count += 1
        if pad:
            history = np.concatenate([self._recent, before])
            wanted = min(len(history), max(0, sample - self._kept_end),
                         int(START_PAD_SECONDS * SAMPLE_RATE))
            padding = history[len(history) - wanted:]
        else:
            padding = np.zeros(0, dtype=np.float32)
        utterance = _Utterance(self._count, sample - len(padding), self._policy())
        utterance.append(padding)
        self._current = utterance
        self._emit(SpeechStarted(utterance.number, sample / SAMPLE_RATE))

    def _end(self, utterance: _Utterance, sample: int, pad: bool = False) -> None:
        """End the utterance at `sample` (the gate's: with END_PAD_SECONDS more, as far as
        heard; a commit's, the stream's end or a full window's: there)."""
        if utterance is self._current:
            self._current = None
        kept = sample + (int(END_PAD_SECONDS * SAMPLE_RATE) if pad else 0)
        utterance.length = min(utterance.length, max(0, kept - utterance.start))
        self._kept_end = max(self._kept_end, utterance.start + utterance.length)
        self._emit(SpeechStopped(utterance.number, sample / SAMPLE_RATE))
        if (sample - utterance.first) / SAMPLE_RATE < MIN_UTTERANCE_SECONDS \
                and not utterance.words and utterance.decoded == 0:
            self._emit(Partial(utterance.number, ""))
            return  # too short to be speech: nothing to decode
        self._ending.append(utterance)

    def _request(self, utterance: _Utterance, final: bool) -> DecodeRequest:
        utterance.decoded = utterance.length
        self._in_flight = True
        self.decodes += 1
        return DecodeRequest(
            session=self, utterance=utterance, audio=utterance.buffer[:utterance.length].copy(),
            offset=utterance.start / SAMPLE_RATE, prompt=self._prompt(utterance),
            language=self.language,
            final=final, fast=not final or bool(self.behind), made=time.monotonic())

    def _check_lag(self) -> None:
        """Say when the text falls BEHIND_SECONDS behind the audio (again each time it
        falls a second further), and when it has caught up."""
        lag = max(0.0, self.seconds - self._heard)
        if lag >= BEHIND_SECONDS and lag >= self.behind + 1.0:
            self.behind = lag
            self._emit(Behind(round(lag, 1)))
        elif self.behind and lag < CAUGHT_UP_SECONDS:
            self.behind = 0.0
            self._emit(Behind(0.0))

    def _prompt(self, utterance: _Utterance) -> str:
        """Committed text said before the buffer begins (earlier utterances, words trimmed
        off this one): never words the buffer still holds, which the decoder would take
        as already said and skip."""
        before = utterance.start / SAMPLE_RATE
        text = "".join(w.word for u in self._utterances() for w in u.words if w.end <= before)
        if not text:
            return self.options.initial_prompt or ""
        if len(text) <= PROMPT_CHARS:
            return text
        cut = text[-PROMPT_CHARS:]
        return cut[cut.find(" "):] if " " in cut else cut  # from a word's beginning

    def _commit(self, utterance: _Utterance, update: Update) -> None:
        if update.committed:
            utterance.words.extend(update.committed)
            self._emit(Committed(utterance.number, update.committed_text,
                                 update.committed[0].start, update.committed[-1].end))

    def _finish(self, utterance: _Utterance) -> None:
        if self._ending and self._ending[0] is utterance:
            self._ending.popleft()
        self._done.append(utterance)
        self._emit(Partial(utterance.number, ""))
        self._label_speaker(utterance)
        words = utterance.words
        self._emit(UtteranceDone(
            utterance.number, "".join(w.word for w in words).strip(),
            words[0].start if words else utterance.first / SAMPLE_RATE,
            words[-1].end if words else (utterance.start + utterance.length) / SAMPLE_RATE))

    def _label_speaker(self, utterance: _Utterance) -> None:
        """With diarize: the ended utterance's speaker, from the audio its buffer still holds
        (its last 30 s at most)."""
        if self._speakers is None or not utterance.words:
            return
        audio = utterance.buffer[:utterance.length]
        if self._labeler is None:
            self._labelled(utterance.number, self._speakers.label(audio))
            return
        number = utterance.number  # (an ended utterance's buffer is never written again)
        task = LabelTask(self, self._speakers, audio, lambda speaker: self._told(number, speaker))
        if self._labeler.submit(task):
            self._labelling += 1
        else:  # the labeler is far behind: this utterance goes without a speaker
            log.warning("live utterance %d gets no speaker: the labeler has %d waiting",
                        number, self._labeler.max_pending)

    def _told(self, number: int, speaker: Optional[int]) -> None:
        """The labeler's answer (on its thread)."""
        with self._lock:
            self._labelling -= 1
            self._labelled(number, speaker)

    def _labelled(self, number: int, speaker: Optional[int]) -> None:
        if speaker is not None:
            self._speaker_of[number] = speaker
            self._emit(SpeakerFound(number, speaker))

    def _settle_language(self, request: DecodeRequest, result: DecodeResult) -> None:
        if self.language is not None:
            return
        if (result.language_probability >= LANGUAGE_CONFIDENCE
                and len(request.audio) >= LANGUAGE_MIN_SECONDS * SAMPLE_RATE):
            self.language = result.language
            self.language_probability = result.language_probability
            self._emit(LanguageFixed(result.language, result.language_probability))

    def _emit(self, event: Event) -> None:
        self._on_event(event)
