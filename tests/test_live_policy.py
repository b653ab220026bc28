"""The LocalAgreement commit policy with scripted decodes: words and timestamps in, committed
and tentative words out. No model: a decode is a list of timed words."""

from __future__ import annotations

import random
from typing import List

import pytest

from whisper_service.live.policy import LocalAgreement, Update
from whisper_service.transcript import Word


def said(text: str, start: float = 0.0, step: float = 0.5) -> List[Word]:
    """Timed words, one every `step` seconds from `start`: 'a b c' -> a@0.0, b@0.5, c@1.0.
    A word may carry its own start: 'a b@2.0 c'."""
    words, at = [], start
    for token in text.split():
        text_part, _, time_part = token.partition("@")
        at = float(time_part) if time_part else at
        words.append(Word(word=" " + text_part, start=at, end=at + step * 0.8, probability=0.9))
        at += step
    return words


def texts(words) -> List[str]:
    return [w.word.strip() for w in words]


def test_a_first_decode_commits_nothing_and_the_next_commits_what_both_say():
    policy = LocalAgreement()
    first = policy.update(said("the quick brown"), 0.0)
    assert first.committed == () and texts(first.tentative) == ["the", "quick", "brown"]
    second = policy.update(said("the quick brown fax jumps"), 0.0)
    assert texts(second.committed) == ["the", "quick", "brown"]
    assert texts(second.tentative) == ["fax", "jumps"]
    third = policy.update(said("the quick brown fox jumps over"), 0.0)
    assert third.committed == ()  # 'fax' became 'fox': the tail does not agree yet
    assert texts(third.tentative) == ["fox", "jumps", "over"]
    fourth = policy.update(said("the quick brown fox jumps over the"), 0.0)
    assert fourth.committed_text == " fox jumps over" and fourth.tentative_text == " the"


def test_a_disagreement_at_the_first_word_commits_nothing():
    policy = LocalAgreement()
    policy.update(said("hello world"), 0.0)
    assert policy.update(said("yellow world"), 0.0) == Update((), tuple(said("yellow world")))


def test_timestamps_are_the_newest_decodes_shifted_by_the_buffers_offset():
    policy = LocalAgreement()
    policy.update(said("one two", start=0.0), 12.0)
    update = policy.update(said("one two three", start=0.2), 12.0)
    assert [(w.start, w.end) for w in update.committed] == [
        pytest.approx((12.2, 12.6)), pytest.approx((12.7, 13.1))]
    assert policy.committed_end == pytest.approx(13.1)
    assert update.tentative[0].start == pytest.approx(13.2)


@pytest.mark.parametrize("again", [
    "on@0.05 monday and talked",  # found by time: they begin before the committed end
    "monday@0.85 and talked",  # found by text: 'monday' begins after it, but repeats it
])
def test_words_said_again_of_a_buffer_not_yet_trimmed_are_not_committed_twice(again):
    policy = LocalAgreement()
    policy.update(said("we met on monday"), 0.0)
    policy.update(said("we met on monday and"), 0.0)  # commits 'we met on monday', ends 1.9
    # the buffer was trimmed at 1.0: the decode of [1.0, ...) says committed words again,
    # with timestamps a little off, then new words
    policy.trim(1.0)
    update = policy.update(said(again), 1.0)
    assert update.committed_text == " and"  # not 'on monday' a second time
    assert texts(update.tentative) == ["talked"]
    finished = policy.finish()
    assert texts(finished.committed) == ["talked"] and finished.tentative == ()


def test_a_word_said_again_later_is_a_new_word():
    policy = LocalAgreement()
    policy.update(said("no"), 0.0)
    assert texts(policy.update(said("no no@3.0"), 0.0).committed) == ["no"]  # ends at 0.4
    # 'no' again 2.6 s after the committed end: spoken again, not the decoder repeating
    update = policy.update(said("no no@3.0 yes@3.5"), 0.0)
    assert [(w.word, w.start) for w in update.committed] == [(" no", 3.0)]
    assert texts(update.tentative) == ["yes"]


def test_finish_commits_the_tentative_rest_once():
    policy = LocalAgreement()
    policy.update(said("good morning everyone"), 0.0)
    assert texts(policy.finish().committed) == ["good", "morning", "everyone"]
    assert policy.finish() == Update((), ())


def test_three_hypotheses_must_agree_with_n_3():
    policy = LocalAgreement(n=3)
    policy.update(said("a b"), 0.0)
    assert policy.update(said("a b c"), 0.0).committed == ()
    assert texts(policy.update(said("a b c d"), 0.0).committed) == ["a", "b"]
    assert texts(policy.update(said("a b c d e"), 0.0).committed) == ["c"]


def test_fewer_than_two_hypotheses_cannot_agree():
    with pytest.raises(ValueError, match="at least 2"):
        LocalAgreement(n=1)


@pytest.mark.parametrize("seed", range(20))
def test_committed_text_never_retracts_and_is_what_was_said(seed):
    """A scripted decoder: each decode of the growing buffer gets its last one or two words
    wrong, differently every time. What is committed is always a prefix of what was said,
    grows only, and with finish() is all of it."""
    rng = random.Random(seed)
    truth = said(" ".join(f"w{i}" for i in range(40)))
    policy, committed, heard = LocalAgreement(), [], 0
    while heard < len(truth):
        heard = min(len(truth), heard + rng.randint(1, 3))
        hypothesis = list(truth[:heard])
        for index in range(max(0, heard - rng.randint(0, 2)), heard):  # an unsure tail
            hypothesis[index] = Word(f" guess{rng.random()}", truth[index].start,
                                     truth[index].end, 0.1)
        committed.extend(policy.update(hypothesis, 0.0).committed)
        assert texts(committed) == texts(truth[:len(committed)])
    committed.extend(policy.update(truth, 0.0).committed)  # the last decode is right
    committed.extend(policy.finish().committed)
    assert texts(committed) == texts(truth)


def test_a_new_word_under_a_committed_words_stretched_end_is_kept():
    """Whisper's last word before a pause often ends late: 'morning,' committed as ending
    at 1.6 s, where 'everyone' begins at 1.2 s in the next decode. The new word is kept: the
    repetition is found by its text, not by the stretched time."""
    policy = LocalAgreement()
    stretched = said("good morning")
    stretched[-1] = Word(" morning,", 0.5, 1.6, 0.9)
    policy.update(stretched, 0.0)
    assert texts(policy.update(stretched, 0.0).committed) == ["good", "morning,"]
    update = policy.update(said("good morning, everyone@1.2 and"), 0.0)
    assert texts(update.tentative) == ["everyone", "and"]
    assert texts(policy.update(said("good morning, everyone@1.2 and thank"), 0.0).committed) == \
        ["everyone", "and"]
