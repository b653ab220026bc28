"""The pyannote.audio backend (WHISPER_DIARIZATION=pyannote), for hosts that may download it.

pyannote's pipeline (segmentation, overlap-aware, and WeSpeaker embeddings) is more
accurate than the embedded backend on real recordings, but its weights are gated on the
Hugging Face hub: the host needs `pip install pyannote.audio` (left out of requirements.txt:
it brings lightning, torchaudio and more) and a token of an account that accepted the
models' conditions, in HF_TOKEN. The weights are downloaded once into WHISPER_MODEL_DIR and
read from there afterwards; the pipeline runs on the GPU when there is one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from typing import List, Optional

import numpy as np
import torch
from whisper.audio import SAMPLE_RATE

from whisper_service.speakers.base import DiarizationUnavailable, FractionCallback, SpeakerHints, SpeakerTurn, numbered_in_order

log = logging.getLogger(__name__)

NAME = "pyannote"
PIPELINE = "pyannote/speaker-diarization-3.1"
GATED_MODELS = (PIPELINE, "pyannote/segmentation-3.0")  # conditions accepted for both
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
PACKAGE = "pyannote.audio"


def installed() -> bool:
    try:
        return importlib.util.find_spec(PACKAGE) is not None
    except ModuleNotFoundError:  # no `pyannote` namespace at all
        return False


def token() -> Optional[str]:
    return next((os.environ[v] for v in TOKEN_VARIABLES if os.environ.get(v)), None)


class PyannoteDiarizer:
    name = NAME

    def __init__(self, model_dir: str, device: str = "cpu"):
        self.model_dir = model_dir
        self.device = device
        self._pipeline = None
        self._lock = threading.Lock()

    def _downloaded(self) -> bool:
        folder = os.path.join(self.model_dir, "models--" + PIPELINE.replace("/", "--"))
        return os.path.isdir(folder)

    def check(self) -> None:
        if not installed():
            raise DiarizationUnavailable(
                "Speaker labels with WHISPER_DIARIZATION=pyannote need the pyannote.audio "
                "package, which is not installed: run `pip install pyannote.audio` on the "
                "server, or set WHISPER_DIARIZATION=embedded for the built-in model."
            )
        if token() is None and not self._downloaded():
            raise DiarizationUnavailable(
                "Speaker labels with WHISPER_DIARIZATION=pyannote need a Hugging Face token: "
                f"accept the conditions of {' and '.join(GATED_MODELS)} on the hub, then set "
                "HF_TOKEN on the server (or set WHISPER_DIARIZATION=embedded for the built-in "
                "model)."
            )

    def _load(self):
        with self._lock:
            if self._pipeline is None:
                from pyannote.audio import Pipeline

                began = time.perf_counter()
                try:  # pyannote.audio 4 names it `token`, 3.x `use_auth_token`
                    pipeline = Pipeline.from_pretrained(PIPELINE, token=token(), cache_dir=self.model_dir)
                except TypeError:
                    pipeline = Pipeline.from_pretrained(
                        PIPELINE, use_auth_token=token(), cache_dir=self.model_dir)
                if pipeline is None:  # 3.x answers None for a refused download
                    raise DiarizationUnavailable(
                        f"{PIPELINE} could not be downloaded with the HF_TOKEN given: accept the "
                        f"conditions of {' and '.join(GATED_MODELS)} with that account.")
                pipeline.to(torch.device(self.device))
                log.info("pyannote pipeline loaded on %s in %.1f s", self.device,
                         time.perf_counter() - began)
                self._pipeline = pipeline
            return self._pipeline

    def diarize(self, audio: np.ndarray, hints: SpeakerHints = SpeakerHints(),
                progress: Optional[FractionCallback] = None) -> List[SpeakerTurn]:
        self.check()
        pipeline = self._load()
        kwargs = {k: v for k, v in (("num_speakers", hints.num_speakers),
                                    ("min_speakers", hints.min_speakers),
                                    ("max_speakers", hints.max_speakers)) if v is not None}

        def hook(step_name, step_artifact, file=None, total=None, completed=None):
            if progress is not None and total:
                progress(min(1.0, (completed or 0) / total))

        waveform = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        output = pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE}, hook=hook, **kwargs)
        annotation = getattr(output, "speaker_diarization", output)  # 4.x wraps it
        names: dict = {}
        turns = [SpeakerTurn(float(segment.start), float(segment.end),
                             names.setdefault(label, len(names)))
                 for segment, _, label in annotation.itertracks(yield_label=True)]
        return numbered_in_order(turns)
