"""Speaker labels of ended live utterances, told on a thread of their own.

With diarize, each ended utterance's voice is embedded and placed against the voices heard
so far (speakers/online.py): 0.05 to 0.4 s an utterance on a busy 2-core host. Done on
the scheduler's thread, every other session's decode would wait for it. A SpeakerLabeler
(one per process: the scheduler's) runs those labels on its own thread instead:

- tasks run one at a time in the order they came, so one session's utterances are labelled
  in their order (and its speakers numbered in order of first appearance, as before);
- at most MAX_PENDING wait; past that a task is refused (submit says False) and its
  utterance gets no speaker: the queue stays bounded however far behind the host falls (a
  task refers to its utterance's audio, 30 s at most, which its session keeps anyway);
- cancel(owner) drops what an owner (a closed session) still waits for and waits, bounded,
  for its task already running, so a closed session leaves nothing running behind it;
- the thread runs NICE_INCREMENT lower in CPU priority than the process (Linux: a thread's
  nice value is its own, and the threads it starts, torch's, inherit it): a label may come a
  moment later, the decodes people wait for get the cores first.

A task's `done` is called on the labeler's thread with the speaker (None: no voice to tell),
never for a cancelled owner.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Optional

import numpy as np

from whisper_service.speakers.online import OnlineSpeakers

log = logging.getLogger(__name__)

MAX_PENDING = 32  # tasks waiting at most (each refers to its utterance's audio, 30 s at most)
CANCEL_WAIT_SECONDS = 5.0  # cancel() waits at most this long for the owner's running task
IDLE_SECONDS = 30.0  # an idle thread ends after this; the next task starts another
NICE_INCREMENT = 5  # the labeler thread's CPU priority below the process's


@dataclass(frozen=True)
class LabelTask:
    """One ended utterance to label."""
    owner: object = field(repr=False)  # who asked (a live session): cancel(owner) drops it
    speakers: OnlineSpeakers = field(repr=False)  # that session's voices so far
    audio: np.ndarray = field(repr=False)  # the utterance's audio: (n,) float32 at 16 kHz
    done: Callable[[Optional[int]], None] = field(repr=False)  # told the speaker (or None)


class SpeakerLabeler:
    """A thread that labels utterances in the order they are submitted."""

    def __init__(self, max_pending: int = MAX_PENDING):
        self.max_pending = max_pending
        self._waiting: Deque[LabelTask] = deque()
        self._running: Optional[LabelTask] = None
        self._cancelled: set = set()  # ids of owners whose running task must not report
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    @property
    def pending(self) -> int:
        """Tasks waiting or running."""
        with self._changed:
            return len(self._waiting) + (self._running is not None)

    def submit(self, task: LabelTask) -> bool:
        """Queue the task; False (nothing queued) when MAX_PENDING wait or it has stopped."""
        with self._changed:
            if self._stopping or len(self._waiting) >= self.max_pending:
                return False
            self._waiting.append(task)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="live-speakers",
                                                daemon=True)
                self._thread.start()
            self._changed.notify_all()
            return True

    def cancel(self, owner: object, wait: float = CANCEL_WAIT_SECONDS) -> None:
        """Drop the owner's waiting tasks; its running task, if any, is waited for (`wait`
        seconds at most) and its result dropped. Never call it holding a lock that a task's
        `done` takes."""
        with self._changed:
            self._waiting = deque(t for t in self._waiting if t.owner is not owner)
            if self._running is None or self._running.owner is not owner:
                return
            self._cancelled.add(id(owner))
            deadline = time.monotonic() + wait
            while self._running is not None and self._running.owner is owner:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("a live speaker label still runs %g s after its session closed", wait)
                    return
                self._changed.wait(left)

    def stop(self, wait: float = CANCEL_WAIT_SECONDS) -> None:
        """Drop what waits, let the running task end (`wait` seconds at most)."""
        with self._changed:
            self._stopping = True
            self._waiting.clear()
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=wait)

    def _run(self) -> None:
        _lower_priority()
        while True:
            with self._changed:
                if not self._waiting and not self._stopping:
                    self._changed.wait(IDLE_SECONDS)
                if self._stopping or not self._waiting:
                    self._thread = None if self._thread is threading.current_thread() else self._thread
                    return
                task = self._running = self._waiting.popleft()
            try:
                speaker = task.speakers.label(task.audio)
            except Exception:  # one bad utterance must not end every session's labels
                log.exception("a live utterance's speaker could not be told")
                speaker = None
            with self._changed:
                report = id(task.owner) not in self._cancelled
            try:
                if report:
                    task.done(speaker)
            except Exception:
                log.exception("a live session failed to take its speaker label")
            finally:
                with self._changed:
                    self._running = None
                    self._cancelled.discard(id(task.owner))
                    self._changed.notify_all()


def _lower_priority() -> None:
    """This thread (and those it starts) NICE_INCREMENT lower in CPU priority, where the
    system lets a thread have its own (Linux); elsewhere nothing changes."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread,
                       min(19, os.getpriority(os.PRIO_PROCESS, thread) + NICE_INCREMENT))
    except (AttributeError, OSError):
        pass
