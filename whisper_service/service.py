"""The facade the command line, the web app and the job workers share:
a file and options in, a Transcript out."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, Optional

import numpy as np

from . import engine, vad
from .audio import DecodeLimits, check_file, decode_file
from .config import Settings
from .progress import ProgressCallback
from .errors import ModelUnavailable
from .models import ModelRegistry
from .options import TranscribeOptions
from .transcript import Transcript


log = logging.getLogger(__name__)

PREFETCHED_FILES = 2  # decoded ahead at most; an hour of audio holds 230 MB


class WhisperService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.models = ModelRegistry(settings)
        self.limits = DecodeLimits(
            max_duration=settings.max_duration,
            timeout=settings.decode_timeout,
            ffmpeg=settings.ffmpeg,
        )
        self._prefetched: "OrderedDict[str, Future]" = OrderedDict()
        self._prefetch_lock = threading.Lock()
        self._prefetcher: Optional[ThreadPoolExecutor] = None

    def preload_in_background(self) -> threading.Thread:
        """Load the default model and the voice activity detector without holding up
        start-up (health answers meanwhile)."""

        def load() -> None:
            try:
                self.models.get(self.models.default)
            except ModelUnavailable as error:
                log.error("%s; it will be tried again on the first job", error)
            vad.load_model()

        thread = threading.Thread(target=load, name="preload", daemon=True)
        thread.start()
        return thread

    def decode(self, path: str, display_name: Optional[str] = None) -> np.ndarray:
        """16 kHz mono samples of the file: those prefetched for it, else decoded now."""
        with self._prefetch_lock:
            ahead = self._prefetched.pop(path, None)
        if ahead is not None:
            return ahead.result()  # a MediaError raised ahead is raised here, as it would be
        return decode_file(path, self.limits, display_name)

    def prefetch(self, path: str, display_name: Optional[str] = None) -> None:
        """Start decoding a file that is to be transcribed next, so that ffmpeg works while
        the model is busy with the one before; decode() of that path then takes the result."""
        with self._prefetch_lock:
            if path in self._prefetched:
                return
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
            while len(self._prefetched) >= PREFETCHED_FILES:  # left behind: a deleted job
                _, stale = self._prefetched.popitem(last=False)
                stale.cancel()
            self._prefetched[path] = self._prefetcher.submit(
                decode_file, path, self.limits, display_name
            )

    def check_upload(
        self, path: str, options: TranscribeOptions, display_name: Optional[str] = None
    ) -> None:
        """Raise what transcribing this file with these options would (a model outside the
        allow-list, a MediaError), reading only the file's start."""
        self.models.check_allowed(options.model)
        check_file(path, self.limits, display_name)

    def transcribe_file(
        self,
        path: str,
        options: TranscribeOptions,
        *,
        display_name: Optional[str] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> Transcript:
        # cheap checks first: a refused model or a bad file fails before any model loads
        self.models.check_allowed(options.model)
        audio = self.decode(path, display_name)
        loaded = self.models.for_task(options.model, options.task)
        return engine.transcribe(loaded, audio, options, progress,
                                 batch_windows=self.settings.batch_windows or None)

    def detect_language_file(
        self, path: str, model: Optional[str] = None, display_name: Optional[str] = None
    ) -> Dict[str, float]:
        name = self.models.check_allowed(model)
        audio = self.decode(path, display_name)
        return engine.detect_language(self.models.get(name), audio)
