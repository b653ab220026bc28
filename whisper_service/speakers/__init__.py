"""Who said what: speaker diarization behind one interface, and the step that puts its
speakers on a transcript's segments and words.

    base.py       SpeakerHints, SpeakerTurn, the Diarizer protocol, DiarizationUnavailable
    encoder.py    Resemblyzer's GE2E voice encoder, read from its wheel, without librosa
    pitch.py      the median F0 of a stretch of voiced speech
    clustering.py voice embeddings + pitch -> speakers (threshold measured, or the count given)
    embedded.py   the default backend: Silero VAD + the encoder + pitch + clustering, no download
    pyannote.py   pyannote.audio's pipeline (WHISPER_DIARIZATION=pyannote), not installed
                  by default
    assign.py     turns + transcript -> speaker per segment and word, split at changes
"""

from __future__ import annotations

import threading
from typing import Dict, Tuple

from whisper_service.speakers.assign import assign_speakers
from whisper_service.speakers.base import DiarizationUnavailable, Diarizer, SpeakerHints, SpeakerTurn
from whisper_service.speakers.embedded import EmbeddedDiarizer
from whisper_service.speakers.pyannote import PyannoteDiarizer

BACKENDS = ("embedded", "pyannote")

_loaded: Dict[Tuple[str, str, str], Diarizer] = {}
_lock = threading.Lock()


def get_diarizer(backend: str, model_dir: str, device: str) -> Diarizer:
    """The backend's diarizer for this device, one per process (it holds its model)."""
    key = (backend, model_dir, device)
    with _lock:
        if key not in _loaded:
            if backend == "pyannote":
                _loaded[key] = PyannoteDiarizer(model_dir, device)
            elif backend == "embedded":
                _loaded[key] = EmbeddedDiarizer(device)
            else:
                raise ValueError(f"unknown diarization backend {backend!r}; use {', '.join(BACKENDS)}")
        return _loaded[key]


__all__ = [
    "BACKENDS", "DiarizationUnavailable", "Diarizer", "SpeakerHints", "SpeakerTurn",
    "assign_speakers", "get_diarizer",
]
