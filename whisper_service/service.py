"""The facade the command line, the web app and the job workers share:
a file and options in, a Transcript out."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from whisper_service import speakers
from whisper_service.engines import batched, dispatch, vad
from whisper_service.audio import DecodeLimits, MediaInfo, check_file, decode_file
from whisper_service.config import Settings
from whisper_service.progress import Progress, ProgressCallback
from whisper_service.errors import ModelUnavailable, ServiceError
from whisper_service.models import ModelRegistry, pick_device
from whisper_service.options import TranscribeOptions
from whisper_service.transcript import Transcript


log = logging.getLogger(__name__)

PREFETCHED_FILES = 2  # decoded ahead at most; an hour of audio holds 230 MB
DECODING_THREADS = 4  # files of a shared run decoded by ffmpeg at once
# the share of a diarized job's progress bar that diarization fills, after the words: on
# the CPU the embedded backend takes about a tenth of tiny's time (bench/diarize.py)
DIARIZATION_SHARE = 0.1

# what transcribe_together takes for each file: path, options, display name, progress
FileJob = Tuple[str, TranscribeOptions, Optional[str], Optional[ProgressCallback]]


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
                self.models.preload()
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
    ) -> MediaInfo:
        """Raise what transcribing this file with these options would (a model outside the
        allow-list, a MediaError), reading only the file's start; else say what it is."""
        self.models.check_allowed(options.model)
        if options.diarize:
            self.diarizer().check()  # no token, no package: refused now, with what to set
        return check_file(path, self.limits, display_name)

    def diarizer(self) -> speakers.Diarizer:
        """The configured diarization backend (WHISPER_DIARIZATION), on this process's device."""
        device = str(pick_device(self.settings.device))
        return speakers.get_diarizer(self.settings.diarization, self.settings.model_dir, device)

    def with_speakers(self, transcript: Transcript, audio: np.ndarray, options: TranscribeOptions,
                      progress: Optional[ProgressCallback] = None) -> Transcript:
        """The transcript with speakers, when the options ask for them; diarization runs on
        the audio the words came from, and fills the last DIARIZATION_SHARE of the progress."""
        if not options.diarize:
            return transcript
        total = transcript.duration

        def fraction(done: float) -> None:
            if progress is not None:
                share = 1.0 - DIARIZATION_SHARE + DIARIZATION_SHARE * min(done, 0.999)
                progress(Progress(share * total, total))

        began = time.perf_counter()
        hints = speakers.SpeakerHints(options.num_speakers, options.min_speakers, options.max_speakers)
        turns = self.diarizer().diarize(audio, hints, fraction)
        log.info("diarized %.1f s of audio in %.2f s", total, time.perf_counter() - began)
        labelled = speakers.assign_speakers(transcript, turns)
        if progress is not None:
            progress(Progress(total, total))
        return labelled

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
        loaded = self.models.for_task(options.model, options.task, options.language)
        transcript = dispatch.transcribe(loaded, audio, options, _words_part(progress, options),
                                       batch_windows=self.settings.batch_windows or None)
        return self.with_speakers(transcript, audio, options, progress)

    def share_key(self, options: TranscribeOptions) -> Optional[Hashable]:
        """Files whose keys are equal (and not None) can be transcribed together, their
        windows in the same batches: the batched engine, the same model, the same decoding
        options. None for what runs alone (the sequential engine, a model not offered)."""
        try:
            name = self.models.check_allowed(options.model)
            device = pick_device(self.settings.device)
        except ServiceError:
            return None
        if dispatch.resolved_mode(options, device) != "batched":
            return None
        return name, batched.shared_options(options)

    def transcribe_together(
        self, files: Sequence[FileJob]
    ) -> List[Union[Transcript, ServiceError, Exception]]:
        """Files with equal share_key, transcribed in shared batches: for each, its
        Transcript or the error that stopped it alone (bad media, a cancel). An error that
        stops them all (the model cannot load, the GPU fails) is raised."""
        outcomes: List[Union[Transcript, Exception, None]] = [None] * len(files)

        def decode(file: FileJob):
            path, options, name, _ = file
            try:
                self.models.check_allowed(options.model)
                return self.decode(path, name)
            except ServiceError as error:
                return error

        with ThreadPoolExecutor(min(DECODING_THREADS, len(files)) or 1) as pool:
            decoded = list(pool.map(decode, files))
        requests, where = [], []
        for index, (file, audio) in enumerate(zip(files, decoded)):
            if isinstance(audio, Exception):
                outcomes[index] = audio
            else:
                requests.append(dispatch.FileRequest(audio, file[1], _words_part(file[3], file[1])))
                where.append(index)
        if requests:
            first = requests[0].options
            loaded = self.models.for_task(first.model, first.task, first.language)
            results = dispatch.transcribe_together(
                loaded, requests, batch_windows=self.settings.batch_windows or None)
            for index, request, result in zip(where, requests, results):
                if isinstance(result, Transcript):
                    try:
                        result = self.with_speakers(result, request.audio, request.options, files[index][3])
                    except Exception as error:  # this file's diarization failed, not the others
                        result = error
                outcomes[index] = result
        return outcomes

    def detect_language_file(
        self, path: str, model: Optional[str] = None, display_name: Optional[str] = None
    ) -> Dict[str, float]:
        name = self.models.check_allowed(model)
        audio = self.decode(path, display_name)
        # a detection on a model found missing here runs on the multilingual stand-in
        loaded = self.models.for_task(name, "transcribe")
        # a caller waits for the model as long as for any synchronous answer
        return dispatch.detect_language(loaded, audio, wait=self.settings.sync_timeout)


def _words_part(progress: Optional[ProgressCallback],
                options: TranscribeOptions) -> Optional[ProgressCallback]:
    """The progress callback for the transcription itself: the whole bar, or with diarize
    the part before DIARIZATION_SHARE, so that the bar never reaches the end early. The
    finished segments pass through as they are: speaker labels split segments but change
    no text."""
    if progress is None or not options.diarize:
        return progress
    scale = 1.0 - DIARIZATION_SHARE

    def report(done: Progress) -> None:
        progress(dataclasses.replace(done, done_seconds=done.done_seconds * scale))

    return report
