"""Commit policies: which words of a live decode are final.

A live session decodes its audio buffer again every time a little more audio arrives. Each
decode is a hypothesis of the whole buffer, and its last words are often wrong: the speaker
is mid-word, or the next words change how the last ones read. A policy decides which words
are committed (final: shown as such, never changed, given as the prompt of the next decode,
and the buffer may be trimmed after them) and which stay tentative (shown, marked as such,
replaced by the next decode).

The interface (CommitPolicy) is small, so that another policy (AlignAtt, which reads the
decoder's cross-attention instead of comparing decodes) can replace LocalAgreement without
the session changing:

    update(words, offset) -> Update   a new hypothesis of the buffer that starts `offset`
                                      seconds into the stream: what it commits, what is
                                      left tentative
    finish() -> Update                the utterance or the stream ended: commit the rest
    trim(seconds)                     the buffer now starts there: forget what lies before
    committed_end                     where the committed words end (where to trim)

LocalAgreement-n (Machacek, Dabre and Bojar, "Turning Whisper into Real-Time Transcription
System", 2023; n = 2 there, with about 3.3 s latency): commit the longest prefix of words
that the last n hypotheses agree on. Words are compared by their letters and digits in lower
case, so a word only changing its timestamps, its punctuation or its case still agrees;
committed words are the newest hypothesis' (its spelling and timestamps).

A decode of a buffer that still holds audio already committed says those words again. They
are recognised first by text: the longest run of the hypothesis that repeats the end of
the committed words still in the buffer, ending within REPEAT_WINDOW_SECONDS of the
committed end, and everything before it, are dropped. Only where no such run is found
(the decoder heard the last committed word differently) are they recognised by time: words
that begin before the committed end, less OVERLAP_TOLERANCE_SECONDS, are dropped, and then
a run of up to MAX_REPEATED_WORDS words repeating the committed text. So no word is
committed twice, and a new word is not lost when a committed word's timestamps stretched
over it (whisper's last word before a pause often ends late: "Good morning," ending where
"everyone" begins) or the decodes' timestamps wander.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Protocol, Sequence, Tuple

from whisper_service.transcript import Word

# a new word that begins this much before the committed end may still be a new word (the
# decoder's timestamps wander by a frame or two between decodes)
OVERLAP_TOLERANCE_SECONDS = 0.1
# the repetition of committed words is looked for only when the new words begin this close
# to the committed end: further away, a repeated word is a word said again
REPEAT_WINDOW_SECONDS = 1.0
MAX_REPEATED_WORDS = 5  # the longest run of committed words a new decode is checked to repeat


@dataclass(frozen=True)
class Update:
    """What one decode (or the end of one) changes: words committed now, in order, and the
    tentative words after them (the whole tentative tail; it replaces the previous one)."""

    committed: Tuple[Word, ...]
    tentative: Tuple[Word, ...]

    @property
    def committed_text(self) -> str:
        return "".join(w.word for w in self.committed)

    @property
    def tentative_text(self) -> str:
        return "".join(w.word for w in self.tentative)


class CommitPolicy(Protocol):
    """What a live session asks of a commit policy (see the module's docstring)."""

    def update(self, words: Sequence[Word], offset: float) -> Update: ...

    def finish(self) -> Update: ...

    def trim(self, seconds: float) -> None: ...

    @property
    def committed_end(self) -> float: ...


class LocalAgreement:
    """LocalAgreement-n: commit the longest prefix the last `n` hypotheses agree on."""

    def __init__(self, n: int = 2):
        if n < 2:
            raise ValueError(f"LocalAgreement needs at least 2 hypotheses to agree; got {n}")
        self.n = n
        self._hypotheses: List[List[Word]] = []  # the last n-1 uncommitted tails, oldest first
        self._committed: List[Word] = []  # committed words still inside the audio buffer
        self._committed_end = 0.0

    @property
    def committed_end(self) -> float:
        return self._committed_end

    def update(self, words: Sequence[Word], offset: float) -> Update:
        fresh = self._new_words([_shifted(w, offset) for w in words])
        enough = len(self._hypotheses) >= self.n - 1
        agreed = _agreed_prefix([*self._hypotheses, fresh]) if enough else 0
        committed = fresh[:agreed]
        tentative = fresh[agreed:]
        self._commit(committed)
        # the n-1 newest hypotheses are kept for the next decode to agree with, less what
        # was agreed (committed now, so no longer in any of them)
        kept = self._hypotheses[len(self._hypotheses) - (self.n - 2):] if self.n > 2 else []
        self._hypotheses = [h[agreed:] for h in kept] + [list(tentative)]
        return Update(tuple(committed), tuple(tentative))

    def finish(self) -> Update:
        """Commit the newest hypothesis' tentative words: nothing more will be said."""
        rest = self._hypotheses[-1] if self._hypotheses else []
        self._commit(rest)
        self._hypotheses = []
        return Update(tuple(rest), ())

    def trim(self, seconds: float) -> None:
        self._committed = [w for w in self._committed if w.end > seconds]

    def _commit(self, words: Sequence[Word]) -> None:
        if words:
            self._committed.extend(words)
            self._committed_end = max(self._committed_end, words[-1].end)

    def _new_words(self, words: List[Word]) -> List[Word]:
        """The hypothesis without what it says again of the committed words."""
        if not self._committed:
            return words
        repeated = _repeat_end(self._committed, words, self._committed_end)
        if repeated is not None:
            return words[repeated:]
        words = [w for w in words if w.start > self._committed_end - OVERLAP_TOLERANCE_SECONDS]
        if not words or abs(words[0].start - self._committed_end) >= REPEAT_WINDOW_SECONDS:
            return words
        for length in range(min(MAX_REPEATED_WORDS, len(self._committed), len(words)), 0, -1):
            if _texts(self._committed[-length:]) == _texts(words[:length]):
                return words[length:]
        return words


def _shifted(word: Word, offset: float) -> Word:
    return replace(word, start=word.start + offset, end=word.end + offset)


def _text(word: Word) -> str:
    """What is compared of a word: its letters and digits, lower case. A decode that only
    adds a comma after a word, or capitalises it, still agrees with the one before."""
    return "".join(c for c in word.word.lower() if c.isalnum())


def _texts(words: Sequence[Word]) -> List[str]:
    return [_text(w) for w in words]


def _repeat_end(committed: Sequence[Word], words: Sequence[Word], end: float) -> Optional[int]:
    """Where the hypothesis' repetition of the committed words ends (the index of its first
    new word): the longest run of `words` equal by text to the end of `committed`, whose
    last word ends within REPEAT_WINDOW_SECONDS of `end`; of runs as long, the one ending
    nearest `end`. None when no run ends there."""
    said, heard = _texts(committed), _texts(words)
    for length in range(min(len(said), len(heard)), 0, -1):
        tail = said[-length:]
        found = [stop for stop in range(length, len(heard) + 1)
                 if heard[stop - length:stop] == tail
                 and abs(words[stop - 1].end - end) < REPEAT_WINDOW_SECONDS]
        if found:
            return min(found, key=lambda stop: abs(words[stop - 1].end - end))
    return None


def _agreed_prefix(hypotheses: Sequence[Sequence[Word]]) -> int:
    """How many leading words all hypotheses share, by text."""
    count = 0
    for column in zip(*hypotheses):
        if len({_text(w) for w in column}) != 1:
            break
        count += 1
    return count
