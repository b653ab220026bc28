"""The one owner of loaded Whisper models.

Models load lazily, once, on the configured device (CUDA with fp16 when there is a GPU, the
layers' weights stored in float16; CPU float32 otherwise). checkpoints.py reads every format
(official names, downloaded into the model directory on first use by openai-whisper's own
loader; openai .pt files; Hugging Face and CTranslate2 folders; hub ids; the bundled tiny.en).
When the default model or the translation model cannot be downloaded (a host without
internet), a bundled model stands in for it, chosen by each request's task and language
(stand_ins.py), and `stand_in_notice` says so.
openai-whisper installs hooks on the model for every decode, so each model carries a lock
and calls on one model never overlap; live sessions take it before file jobs (TurnLock).
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import pickle
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional

import torch
import whisper

from whisper_service.checkpoints import (
    BUNDLED_MODELS, DownloadFailed, ctranslate2_folder, describe, load_checkpoint,
)
from whisper_service import cancel, stand_ins
from whisper_service.engines import window_progress
from whisper_service.config import Settings, split_alias
from whisper_service.errors import BadOption, ModelUnavailable

if TYPE_CHECKING:
    from whisper_service.engines.decoding.ct2 import CTranslate2Windows

log = logging.getLogger(__name__)

# Distilled for transcription only: their decoders were not trained on the translate task.
TRANSCRIBE_ONLY_MODELS = ("turbo", "large-v3-turbo")
# what the first use of an official model downloads, in GB (its .pt file, rounded)
OFFICIAL_DOWNLOAD_GB = {
    "tiny": 0.08, "tiny.en": 0.08, "base": 0.15, "base.en": 0.15, "small": 0.48,
    "small.en": 0.48, "medium": 1.5, "medium.en": 1.5, "large-v1": 3.1, "large-v2": 3.1,
    "large-v3": 3.1, "large": 3.1, "large-v3-turbo": 1.6, "turbo": 1.6,
}


class TurnLock:
    """A model's lock, with two kinds of waiters: urgent ones (live sessions, whose listeners
    wait for every decode) take the next turn before ordinary ones (a file job's next batch).
    File jobs hold it a batch at a time, so a live decode waits for one batch at most. Used
    like threading.Lock; `with lock.urgent():` is an urgent turn."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._held = False
        self._urgent_waiting = 0

    def acquire(self, blocking: bool = True, timeout: float = -1, urgent: bool = False) -> bool:
        with self._changed:
            if urgent:
                self._urgent_waiting += 1
            try:
                def free() -> bool:
                    return not self._held and (urgent or self._urgent_waiting == 0)

                if not blocking:
                    got = free()
                else:
                    got = self._changed.wait_for(free, None if timeout < 0 else timeout)
                if got:
                    self._held = True
                return got
            finally:
                if urgent:
                    self._urgent_waiting -= 1

    def release(self) -> None:
        with self._changed:
            if not self._held:
                raise RuntimeError("release of a TurnLock that is not held")
            self._held = False
            self._changed.notify_all()

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> "TurnLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @contextmanager
    def urgent(self) -> Iterator[None]:
        self.acquire(urgent=True)
        try:
            yield
        finally:
            self.release()


@dataclass
class LoadedModel:
    name: str  # as configured and asked for: an official name, a checkpoint path or an alias
    model: whisper.Whisper
    device: torch.device
    fp16: bool  # half precision on CUDA; float32 on CPU
    load_seconds: float
    lock: TurnLock = field(default_factory=TurnLock, repr=False)
    source: str = ""  # what was loaded (an official name or a path); "" = the name
    # loads the batched engine's CTranslate2 twin of the model (engines/decoding/ct2.py);
    # None: its window decodes run on the torch model (the GPU, WHISPER_CPU_DECODER=torch,
    # or a format CTranslate2 cannot load as it is)
    windows_loader: Optional[Callable[[], Optional["CTranslate2Windows"]]] = field(
        default=None, repr=False)
    _windows: Optional["CTranslate2Windows"] = field(default=None, repr=False)
    _windows_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def windows(self) -> Optional["CTranslate2Windows"]:
        """The CTranslate2 twin, loaded on the batched engine's first use (a sequential
        run never needs it, nor its memory); None where there is none."""
        with self._windows_lock:
            if self.windows_loader is not None:
                self._windows, self.windows_loader = self.windows_loader(), None
            return self._windows

    @property
    def is_multilingual(self) -> bool:
        return self.model.is_multilingual

    @property
    def can_translate(self) -> bool:
        return self.is_multilingual and (self.source or self.name) not in TRANSCRIBE_ONLY_MODELS


def pick_device(setting: str) -> torch.device:
    """'auto' -> cuda when a GPU is visible, else cpu; anything else as given."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {setting!r} was asked for, but no CUDA GPU is visible")
    return device


def half_precision_weights(model: whisper.Whisper) -> whisper.Whisper:
    """Store the weights of every Linear and Conv1d layer in float16, in place.

    openai-whisper decoding in fp16 casts those weights to float16 at every call anyway, so
    what it computes is unchanged, bit for bit, while the model takes half the GPU memory
    and no call spends time casting. LayerNorms and the embeddings stay float32: whisper
    computes them in float32 and casts their results."""
    for module in model.modules():
        if isinstance(module, (whisper.model.Linear, whisper.model.Conv1d)):
            module.half()
    return model


class ModelRegistry:
    """Loads each allowed model at most once and hands it out by name."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: Dict[str, LoadedModel] = {}
        self._loading_locks: Dict[str, threading.Lock] = {}
        self._registry_lock = threading.Lock()
        self._uses = itertools.count()
        self._last_use: Dict[str, int] = {}  # name -> when it was last handed out
        self._load_errors: Dict[str, str] = {}  # name -> why its last load failed
        # configured model whose weights cannot be had here -> why (the log's sentence);
        # requests for it go to a bundled stand-in (stand_ins.py)
        self._missing: Dict[str, str] = {}
        self._undownloadable: set = set()  # names whose last load failed for want of a download
        # name -> what load_checkpoint takes ('meetings' -> '/models/ft.pt')
        self._sources: Dict[str, str] = dict(split_alias(entry) for entry in settings.models)
        # what each loadable name loads: the allowed models and the translation model
        self._loadable: Dict[str, str] = {
            **dict([split_alias(settings.translate_model)]), **self._sources}
        # name -> what puts its files in place before its first load (a fine-tune made on
        # another host: fetched from the shared store to this host's folder)
        self._fetch: Dict[str, Callable[[], None]] = {}
        self._follow: Callable[[], None] = lambda: None  # adds models made elsewhere since

    @property
    def default(self) -> str:
        return split_alias(self.settings.model)[0]

    @property
    def allowed(self) -> List[str]:
        self._follow()
        return list(self._sources)

    @property
    def translate_model(self) -> str:
        return split_alias(self.settings.translate_model)[0]

    def source(self, name: str) -> str:
        """What an allowed name loads ('meetings' -> '/models/ft.pt')."""
        return self._sources[self.check_allowed(name)]

    def add(self, name: str, source: str, fetch: Optional[Callable[[], None]] = None) -> None:
        """Offer one more model from now on (a finished fine-tune), without a restart;
        fetch(), when given, puts its files at `source` before its first load."""
        with self._registry_lock:
            self._sources[name] = source
            self._loadable[name] = source
            if fetch is not None:
                self._fetch[name] = fetch

    def follow(self, found: Callable[[], None]) -> None:
        """Ask found() before saying which models are offered (the lists, a request naming
        one): it add()s the models made elsewhere since (fine-tunes finished on other
        hosts). It must be cheap (it reads the shared store at most every few seconds)
        and never raise."""
        self._follow = found

    def loaded(self) -> List[str]:
        with self._registry_lock:
            return list(self._models)

    def check_allowed(self, requested: Optional[str]) -> str:
        """The model name to use for a request; None picks the default."""
        name = requested or self.default
        if name not in self._sources:
            self._follow()
        if name not in self._sources:
            raise BadOption(
                "model", f"{name!r} is not offered here; choose one of {', '.join(self.allowed)}"
            )
        return name

    def for_task(self, requested: Optional[str], task: str,
                 language: Optional[str] = None) -> LoadedModel:
        """The loaded model that will run `task` on speech in `language` (None: detected): a
        model that cannot translate hands a translate request to the configured translation
        model rather than transcribe it; a configured model that cannot be had here hands
        it to the bundled model standing in for it (stand_ins.py)."""
        loaded = self._usable(self.check_allowed(requested), task, language)
        if task == "translate" and not loaded.can_translate:
            log.info("%s cannot translate; using %s", loaded.name, self.translate_model)
            loaded = self._usable(self.translate_model, task, language)
        return loaded

    def _usable(self, name: str, task: str, language: Optional[str]) -> LoadedModel:
        """The model itself, or, when it is a configured one whose weights cannot be had
        here, the bundled model standing in for it for this task and language."""
        try:
            return self.get(name)
        except DownloadFailed as error:
            stand_in = self._stand_in_name(name, task, language)
            if stand_in is None:
                raise
            with self._registry_lock:
                first = name not in self._missing
                self._missing[name] = str(error)
            if first:
                log.warning("%s; %s", error, stand_ins.summary())
            try:
                return self.get(stand_in)
            except ModelUnavailable:
                raise error from None

    def _stand_in_name(self, name: str, task: str, language: Optional[str]) -> Optional[str]:
        """The bundled model standing in for `name` here; None where none may (a model the
        operator listed besides the default and translation models fails with its reason)."""
        if name not in (self.default, self.translate_model) or name in BUNDLED_MODELS:
            return None
        return stand_ins.choose(task, language)

    def get(self, name: str) -> LoadedModel:
        """The model `name`, loaded once. Raises DownloadFailed at once, without a second
        download, for a configured model already found missing (its stand-in is asked for
        through for_task), ModelUnavailable for any other reason it cannot load."""
        with self._registry_lock:
            missing = self._missing.get(name)
            self._last_use[name] = next(self._uses)
            if name in self._models:
                return self._models[name]
            loading_lock = self._loading_locks.setdefault(name, threading.Lock())
        if missing is not None:
            raise DownloadFailed(missing)
        with loading_lock:  # one load per name; other names load in parallel
            with self._registry_lock:
                if name in self._models:
                    return self._models[name]
            try:
                loaded = self._load(name)
            except ModelUnavailable as error:
                with self._registry_lock:
                    self._load_errors[name] = str(error)
                    if isinstance(error, DownloadFailed):
                        self._undownloadable.add(name)
                raise
            with self._registry_lock:
                self._models[name] = loaded
                self._load_errors.pop(name, None)
                self._undownloadable.discard(name)
            return loaded

    def peek(self, name: str) -> Optional[LoadedModel]:
        """The model when it is loaded; None otherwise (nothing is loaded for it)."""
        with self._registry_lock:
            return self._models.get(name)

    def cannot_download(self, name: str) -> bool:
        """Whether the model's weights were found not here and not downloadable (its last
        load failed so, or it is a configured model found missing)."""
        with self._registry_lock:
            return name in self._undownloadable or name in self._missing

    def preload(self) -> LoadedModel:
        """Load what a request for the default model runs (the default, or the bundled model
        standing in for it for a transcription in a detected language)."""
        return self.for_task(None, "transcribe")

    def stand_in(self, name: str) -> Optional[str]:
        """The bundled model that a plain transcription asked of `name` runs, when `name` is
        a configured model found missing here; None otherwise."""
        with self._registry_lock:
            if name not in self._missing:
                return None
        return self._stand_in_name(name, "transcribe", None)

    def missing(self) -> Dict[str, str]:
        """Configured models found missing here -> why (the operator's sentence: it may
        name the model directory and the network's error)."""
        with self._registry_lock:
            return dict(self._missing)

    def is_missing(self, name: str) -> bool:
        with self._registry_lock:
            return name in self._missing

    def default_ready(self) -> bool:
        """Whether a request for the default model is served without loading one: the
        default itself, or the model standing in for it, is in memory."""
        name = self.stand_in(self.default) or self.default
        with self._registry_lock:
            return name in self._models

    def stand_in_loading(self) -> bool:
        """Whether the default was found missing and the model standing in for it is still
        to be loaded (without a failed load of its own)."""
        stand_in = self.stand_in(self.default)
        with self._registry_lock:
            return (stand_in is not None and stand_in not in self._models
                    and stand_in not in self._load_errors)

    @property
    def stand_in_notice(self) -> Optional[str]:
        """A sentence for the upload page and /readyz while bundled models stand in for the
        configured ones; None otherwise."""
        missing = [name for name in (self.default, self.translate_model) if self.is_missing(name)]
        if not missing:
            return None
        names = " and ".join(dict.fromkeys(missing))
        # no server path and no raw error in it: pages show it to anyone (the log has both)
        return (f"The model {names} could not be downloaded, so {stand_ins.summary()}, until "
                "the server restarts with internet access or with the weights in its model "
                "directory.")

    def stand_in_sentence(self, requested: Optional[str], used: str) -> Optional[str]:
        """For a job's page and status: which configured model the bundled `used` replaced,
        in a sentence; None when `used` is what was asked for (or a translation handed to
        a translation model that is there)."""
        asked = requested or self.default
        if used not in BUNDLED_MODELS or used == asked:
            return None
        replaced = next((name for name in (asked, self.translate_model) if self.is_missing(name)), None)
        if replaced is None:
            return None
        return (f"{describe(used)} stood in for {replaced}, which this server could not "
                "download.")

    def label(self, name: str) -> str:
        """How a model is shown to people: the bundled model by its label, others by name."""
        return describe(name)

    def download_gb(self, name: str) -> Optional[float]:
        """The GB the first use of this model downloads: an official model whose file is
        not yet in the model directory (whisper names it after its URL); None otherwise."""
        source = self._loadable.get(name, name)
        url = whisper._MODELS.get(source)
        if url is None or os.path.exists(os.path.join(self.settings.model_dir, os.path.basename(url))):
            return None
        return OFFICIAL_DOWNLOAD_GB.get(source)

    def load_error(self, name: str) -> Optional[str]:
        """Why the last attempt to load this model failed; None if it has not failed (or
        loaded since)."""
        with self._registry_lock:
            return self._load_errors.get(name)

    def _load(self, name: str) -> LoadedModel:
        device = pick_device(self.settings.device)
        started = time.monotonic()
        log.info("loading model %s on %s", name, device)
        fp16 = device.type == "cuda"
        try:
            fetch = self._fetch.get(name)
            if fetch is not None:  # its files are elsewhere until its first load here
                fetch()
            # built on the CPU, halved there, then moved: the GPU never holds a float32 copy
            model = load_checkpoint(self._loadable.get(name, name), self.settings.model_dir)
            if fp16:
                half_precision_weights(model)
            self._place(name, model, device)
        except ModelUnavailable as error:  # a sentence from the checkpoint's reader
            raise type(error)(f"model {name!r} could not be loaded: {error}") from error
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as error:
            # download failures (URLError is an OSError), checksum mismatches, files that
            # are no checkpoint or are cut short, a GPU without room for the model
            raise ModelUnavailable(f"model {name!r} could not be loaded: {error}") from error
        model.eval()
        cancel.install(model)  # a cancelled job stops within one encoder or decoder step
        window_progress.install(model)  # openai-whisper's decoder tells how far it has come
        seconds = time.monotonic() - started
        log.info("loaded model %s on %s in %.1f s", name, device, seconds)
        return LoadedModel(name=name, model=model, device=device, fp16=fp16, load_seconds=seconds,
                           source=self._loadable.get(name, name),
                           windows_loader=self._cpu_windows(name) if device.type == "cpu" else None)

    def _cpu_windows(self, name: str) -> Optional[Callable[[], Optional["CTranslate2Windows"]]]:
        """What loads CTranslate2 for the batched engine's window decodes on the CPU, where
        the setting asks for it and the model is in CTranslate2's format; None elsewhere."""
        folder = ctranslate2_folder(self._loadable.get(name, name))
        if self.settings.cpu_decoder == "torch" or folder is None:
            return None
        compute_type, threads = self.settings.cpu_decoder, torch.get_num_threads()

        def load() -> Optional["CTranslate2Windows"]:
            from whisper_service.engines.decoding import ct2

            windows = ct2.load(folder, compute_type, threads)
            if windows is not None:
                log.info("model %s: window decodes on CTranslate2 (%s)", name, compute_type)
            return windows

        return load

    def _place(self, name: str, model: whisper.Whisper, device: torch.device) -> None:
        """Move the model to its device; while the GPU has no room for it, unload the other
        models, least recently used first."""
        while True:
            try:
                move_to(model, device)
                return
            except torch.cuda.OutOfMemoryError:
                if not self._unload_least_recent(keep=name):
                    raise

    def _unload_least_recent(self, keep: str) -> bool:
        with self._registry_lock:
            others = [n for n in self._models if n != keep]
            if not others:
                return False
            victim = self._models.pop(min(others, key=lambda n: self._last_use.get(n, -1)))
        log.warning("no room on %s for model %s: unloading %s", victim.device, keep, victim.name)
        with victim.lock:  # a transcription using it finishes first
            pass
        del victim
        gc.collect()  # its tensors go now, not at some later collection
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True


def move_to(model: whisper.Whisper, device: torch.device) -> None:
    """model.to(device): where a full GPU raises torch.cuda.OutOfMemoryError."""
    model.to(device)
