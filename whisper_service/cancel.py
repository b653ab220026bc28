"""Stopping a transcription between two steps of the model, wherever it is.

A job consumer runs a transcription inside `stop_when(check)`; the engines, ffmpeg's read
loop and voice activity detection call `checkpoint()` between steps (every decoder step,
every encoder call, every chunk of audio), which raises `Cancelled` once `check()` is true.
`check` is called often, so it must be cheap (an Event's is_set, not a database query).
The scope is per thread: language detection in a request thread, or a prefetch in another,
is never stopped by a job's cancel.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch

_scope = threading.local()


class Cancelled(Exception):
    """The transcription was stopped on request (cancel, delete, shutdown)."""


@contextmanager
def stop_when(check: Callable[[], bool]) -> Iterator[None]:
    """Within this block, in this thread, `checkpoint()` raises Cancelled once check()."""
    previous: Optional[Callable[[], bool]] = getattr(_scope, "check", None)
    _scope.check = check
    try:
        yield
    finally:
        _scope.check = previous


def checkpoint() -> None:
    """Raise Cancelled if this thread's transcription was asked to stop; else nothing."""
    check = getattr(_scope, "check", None)
    if check is not None and check():
        raise Cancelled("stopped on request")


def _before_forward(module: torch.nn.Module, args) -> None:
    checkpoint()


def install(model: torch.nn.Module) -> None:
    """Check before every encoder and decoder call of this Whisper model, so openai-whisper's
    own loops (whisper.transcribe, whisper.decode) stop within one step too."""
    for part in (model.encoder, model.decoder):
        part.register_forward_pre_hook(_before_forward)
