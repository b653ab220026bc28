"""How far into its 30-second window the decoder has come, told while it decodes.

The engines report progress when a window is done, and one window can take many seconds
(a large model on a CPU, a wide beam search), so inside it the decoders tell how far the
timestamps they have sampled reach. Whoever runs a decode watches it:

    with window_progress.watching(report, timestamp_begin):
        ...decode...

and `report(seconds)` is then called at most every REPORT_EVERY_SECONDS with, for each
window of the decode, the audio seconds into that window the decoder has reached
(math.inf for a window that has finished): the latest timestamp it sampled, plus
SECONDS_PER_TEXT_TOKEN for each text token since (timestamps come only at the ends of
segments, which may be many seconds apart). Two decoders feed it:
- the batched decoder's loop (decoding/steps.py) reads its rows' tokens (search.py);
- openai-whisper's own decoder (whisper.transcribe, whisper.decode: one window at a time)
  through a forward hook on the decoder module (install): the tokens it is fed after the
  initial pass update a running state kept on the device, read on the host only when a
  report is due, so watching costs no synchronisation per step.
The scope is the thread, as with cancel: a decode in another thread is not reported here.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

import torch

REPORT_EVERY_SECONDS = 0.5  # at most this often; the job queue writes no more often either
TIME_PRECISION = 0.02  # seconds per timestamp token
# speech at 150 words a minute, about 1.3 tokens a word: some 3 tokens a second
SECONDS_PER_TEXT_TOKEN = 0.3
# the most of a window that is reported before its decoder has finished it
UNFINISHED_SHARE = 0.9

Report = Callable[[Sequence[float]], None]
_scope = threading.local()


class Watch:
    """One watched decode: when to report next, and openai-whisper's running maximum."""

    def __init__(self, report: Report, timestamp_begin: Optional[int]):
        self.report = report
        self.timestamp_begin = timestamp_begin  # None: openai-whisper's decoder not watched
        self.next_report = time.monotonic() + REPORT_EVERY_SECONDS
        # since restart(), on the decoder's device: the highest timestamp token fed (one
        # below timestamp_begin before the first), and the steps since it rose
        self.stamp: Optional[torch.Tensor] = None
        self.steps_after: Optional[torch.Tensor] = None

    def due(self) -> bool:
        """Whether a report is wanted now; if so, the next one is wanted a period later."""
        now = time.monotonic()
        if now < self.next_report:
            return False
        self.next_report = now + REPORT_EVERY_SECONDS
        return True

    def restart(self) -> None:
        """A new window begins (openai-whisper's decoder): forget the tokens seen so far."""
        self.stamp = self.steps_after = None

    def seen(self, tokens: torch.Tensor) -> None:
        """Tokens fed to openai-whisper's decoder at one step (one per beam); reports when
        one is due."""
        highest = tokens.max()  # a timestamp if any row was fed one
        if self.stamp is None:
            self.stamp = torch.full_like(highest, self.timestamp_begin - 1)
            self.steps_after = torch.zeros_like(highest)
        rose = highest > self.stamp
        self.stamp = torch.maximum(self.stamp, highest)
        self.steps_after = torch.where(rose, 0, self.steps_after + 1)
        if self.due():
            self.report([seconds_reached(int(self.stamp), int(self.steps_after),
                                         self.timestamp_begin)])


def within(seconds: float, length: float) -> float:
    """Seconds reached in a window of `length` seconds: all of it once it has finished
    (math.inf), else at most UNFINISHED_SHARE of it. The reach is a guess (text tokens
    counted as seconds, a decode that may start over at a higher temperature), so a window
    still decoding never looks nearly done: the last one of a file never shows 99 %."""
    return length if seconds == math.inf else min(seconds, UNFINISHED_SHARE * length)


def seconds_reached(stamp: int, text_tokens: int, timestamp_begin: int) -> float:
    """Seconds into a window: those of its latest timestamp token `stamp` (none yet: below
    timestamp_begin), then SECONDS_PER_TEXT_TOKEN per text token sampled since."""
    return max(0, stamp - timestamp_begin) * TIME_PRECISION + text_tokens * SECONDS_PER_TEXT_TOKEN


@contextmanager
def watching(report: Report, timestamp_begin: Optional[int] = None) -> Iterator[Watch]:
    """Within this block, in this thread, decoders report how far into their windows they
    are. timestamp_begin (the tokenizer's): openai-whisper's own decoder is watched too."""
    previous = getattr(_scope, "watch", None)
    _scope.watch = watch = Watch(report, timestamp_begin)
    try:
        yield watch
    finally:
        _scope.watch = previous


def current() -> Optional[Watch]:
    """The watch of this thread's decode, if any."""
    return getattr(_scope, "watch", None)


def _before_decoder(module: torch.nn.Module, args) -> None:
    watch = current()
    if watch is None or watch.timestamp_begin is None or not args:
        return
    tokens = args[0]
    # one new token per row after the initial pass (which may hold an earlier window's
    # timestamps in its prompt); language detection feeds <|startoftranscript|> alone
    if isinstance(tokens, torch.Tensor) and tokens.ndim == 2 and tokens.shape[-1] == 1:
        watch.seen(tokens)


def install(model: torch.nn.Module) -> None:
    """Watch every call of this Whisper model's decoder (see the module's docstring)."""
    model.decoder.register_forward_pre_hook(_before_decoder)

