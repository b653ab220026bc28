"""Where speech starts and stops in a live stream, as it arrives: Silero VAD, frame by frame.

Every live session has a gate. It keeps the streaming model's small recurrent state; the
model itself (one onnxruntime session, which may be called from many threads) is loaded
once per process and shared. A frame of 32 ms costs well under a millisecond of CPU.

Hysteresis, as Silero's own VADIterator does it: speech starts at a frame at least
SPEECH_PROBABILITY likely, and ends once frames below SILENCE_PROBABILITY have lasted
`end_silence_ms` (a live utterance is finalised then); a frame of speech in between resets
that count. What comes out are transitions, with the sample where they happened.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from whisper.audio import SAMPLE_RATE

FRAME = 512  # samples per frame at 16 kHz: what the streaming model takes
CONTEXT = 64  # samples of the previous frame the model sees again before each frame
STATE_SHAPE = (2, 1, 128)  # the model's recurrent state for one stream
SPEECH_PROBABILITY = 0.5  # a frame this likely to be speech starts speech (or keeps it going)
SILENCE_PROBABILITY = 0.35  # a frame below this counts toward the silence that ends speech
END_SILENCE_MS = 500  # this much silence ends an utterance

_session = None
_session_lock = threading.Lock()


def _model():
    """Silero's streaming model as one onnxruntime session for the whole process."""
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime
            from importlib import resources

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # a frame is tiny: threads would only contend
            options.inter_op_num_threads = 1
            path = resources.files("silero_vad.data").joinpath("silero_vad.onnx")
            _session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return _session


@dataclass(frozen=True)
class Transition:
    speech: bool  # True: speech started; False: it stopped
    sample: int  # where, in samples from the start of the stream


class SpeechGate:
    """Speech transitions of one stream; push() audio in any sizes, in order."""

    def __init__(self, end_silence_ms: int = END_SILENCE_MS):
        self.set_end_silence(end_silence_ms)
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros((1, CONTEXT), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)  # less than a frame, not yet judged
        self._position = 0  # samples judged so far
        self._speech_start: Optional[int] = None  # while speaking: where it started
        self._silence_start: Optional[int] = None  # while speaking: where quiet began

    def set_end_silence(self, end_silence_ms: int) -> None:
        if end_silence_ms <= 0:
            raise ValueError(f"end_silence_ms must be positive; got {end_silence_ms}")
        self._end_silence = end_silence_ms * SAMPLE_RATE // 1000

    @property
    def speaking(self) -> bool:
        return self._speech_start is not None

    def push(self, audio: np.ndarray) -> List[Transition]:
        """Judge every whole frame now available; the transitions they make, in order."""
        audio = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        whole = len(audio) - len(audio) % FRAME
        self._pending = audio[whole:]
        transitions: List[Transition] = []
        for start in range(0, whole, FRAME):
            transition = self._judge(audio[start:start + FRAME])
            if transition is not None:
                transitions.append(transition)
        return transitions

    def flush(self) -> List[Transition]:
        """The stream ended: speech still going stops where the audio ends."""
        end = self._position + len(self._pending)
        self._pending = np.zeros(0, dtype=np.float32)
        if self._speech_start is None:
            return []
        stop = self._silence_start if self._silence_start is not None else end
        self._speech_start = self._silence_start = None
        return [Transition(False, stop)]

    def _judge(self, frame: np.ndarray) -> Optional[Transition]:
        probability = self._probability(frame)
        at = self._position
        self._position += FRAME
        if probability >= SPEECH_PROBABILITY:
            self._silence_start = None
            if self._speech_start is None:
                self._speech_start = at
                return Transition(True, at)
            return None
        if self._speech_start is None or probability >= SILENCE_PROBABILITY:
            return None
        if self._silence_start is None:
            self._silence_start = at
        if self._position - self._silence_start < self._end_silence:
            return None
        stop = self._silence_start
        self._speech_start = self._silence_start = None
        return Transition(False, stop)  # too short to be speech? the session judges that

    def _probability(self, frame: np.ndarray) -> float:
        x = np.concatenate([self._context, frame[None, :]], axis=1)
        out, self._state = _model().run(None, {
            "input": x, "state": self._state, "sr": np.array(SAMPLE_RATE, dtype=np.int64)})
        self._context = x[:, -CONTEXT:]
        return float(out[0][0])
