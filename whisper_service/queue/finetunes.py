"""Fine-tunes as jobs: an uploaded dataset archive in, a model in every model list out.

Each fine-tune is a folder under WHISPER_DATA_DIR/fine-tunes/<id>/ holding the archive, its
unpacked clips, `state.json` (state, step, loss, WER, time left; rewritten at each step) and,
once done, the model folder named after the fine-tune. One thread in the process that
transcribes (the one owner of its device) runs them one at a time:

- **Checked first.** The base model must be one this server offers, the name new, and the
  archive a dataset (training/archive.py) before the fine-tune is accepted (202).
- **Transcription first.** Between training steps the fine-tune waits while transcription
  jobs are queued, so it takes the device only when no upload waits for it.
- **Restarts.** A fine-tune that was queued or running when the process stopped runs again
  at the next start, from its last checkpoint (every `save_steps`), its step count going on.
- **Cancel.** DELETE stops it after the current step (seconds) or at once while queued.
- **Done.** The model joins the registry's allowed models (every model list, the upload
  page) under its name, without a restart; finished fine-tunes are registered again at start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import replace
from typing import BinaryIO, Callable, Dict, List, Mapping, Optional

from whisper_service.audio import DecodeLimits
from whisper_service.config import Settings
from whisper_service.errors import BadOption, ServiceError
from whisper_service.models import ModelRegistry

log = logging.getLogger(__name__)

FOLDER = "fine-tunes"  # in the data folder
RUNNER_LOCK = ".runner.lock"  # held by the one process of a host that runs fine-tunes
STATE_FILE = "state.json"
ARCHIVE_FILE = "dataset.zip"
DATA_FOLDER = "data"
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
UNFINISHED = (QUEUED, RUNNING)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")
WEB_ONLY = "web"  # the role of a host that serves HTTP and runs nothing
# the form fields a fine-tune takes besides the archive, the base model and the name:
# field -> (FineTuneOptions field, type)
OPTION_FIELDS = {
    "language": ("language", str), "epochs": ("epochs", float), "max_steps": ("max_steps", int),
    "batch_size": ("batch_size", int), "learning_rate": ("learning_rate", float),
    "warmup_steps": ("warmup_steps", int), "eval_fraction": ("eval_fraction", float),
    "eval_steps": ("eval_steps", int), "save_steps": ("save_steps", int), "seed": ("seed", int),
}
COPY_CHUNK = 1024 * 1024
RUN_FIELDS = ("base", "output", "resume")  # FineTuneOptions set by the runner, not kept


class FineTuningUnavailable(ServiceError):
    """This install lacks the training packages (requirements-finetune.txt)."""


class FineTunes:
    def __init__(self, folder: str, settings: Settings, registry: ModelRegistry,
                 busy: Callable[[], bool] = lambda: False):
        self.folder = folder
        self.settings = settings
        self.registry = registry
        self.busy = busy  # transcription jobs are waiting: training pauses between steps
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._cancelled: set = set()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        os.makedirs(folder, exist_ok=True)

    # --- asked by the API ------------------------------------------------------------------

    def submit(self, archive: BinaryIO, base: Optional[str], name: Optional[str],
               fields: Mapping[str, str]) -> dict:
        """Check everything, then queue the fine-tune; its state. Raises BadOption /
        DatasetError with a sentence before anything is queued."""
        unknown = sorted(str(k or "") for k in set(fields) - {"model", "name", *OPTION_FIELDS})
        if unknown:
            raise BadOption(unknown[0], f"{unknown[0][:40]!r} is not a fine-tune option; the "
                                        f"options are model, name, {', '.join(OPTION_FIELDS)}")
        from whisper_service.training.archive import ArchiveLimits, unpack
        from whisper_service.training.options import FineTuneOptions

        if self.settings.role == WEB_ONLY:
            raise FineTuningUnavailable("this host serves HTTP only (WHISPER_ROLE=web) and trains "
                                        "nothing: start the fine-tune on a host of role all")
        from whisper_service.training import missing_packages

        missing = missing_packages()
        if missing:
            raise FineTuningUnavailable(f"this server cannot fine-tune: it lacks {', '.join(missing)} "
                                        "(pip install -r requirements-finetune.txt)")
        if not base:
            raise BadOption("model", "name the base model to fine-tune (model)")
        source = self.registry.source(base)  # a model this server does not offer: refused
        name = (name or "").strip()
        if not NAME_PATTERN.match(name):
            raise BadOption("name", "name the fine-tuned model: letters, digits, '.', '_' or '-', "
                                    "64 at most, e.g. small-meetings")
        if name in self.registry.allowed or any(s.get("name") == name and s["state"] != FAILED
                                                and s["state"] != CANCELLED for s in self.list()):
            raise BadOption("name", f"there is already a model named {name!r}")
        options = FineTuneOptions(base=f"{base}={source}" if base != source else base,
                                  output="", **_options(fields))
        fine_tune_id = secrets.token_urlsafe(16)
        here = os.path.join(self.folder, fine_tune_id)
        os.makedirs(here)
        try:
            path = os.path.join(here, ARCHIVE_FILE)
            with open(path, "wb") as out:
                shutil.copyfileobj(archive, out, COPY_CHUNK)
            limits = DecodeLimits(max_duration=self.settings.max_duration,
                                  timeout=self.settings.decode_timeout, ffmpeg=self.settings.ffmpeg)
            dataset = unpack(path, os.path.join(here, DATA_FOLDER), ArchiveLimits(), limits)
        except Exception:
            shutil.rmtree(here, ignore_errors=True)
            raise
        state = {"id": fine_tune_id, "name": name, "base": base, "state": QUEUED,
                 "clips": len(dataset.utterances), "step": 0, "total_steps": None,
                 "loss": None, "wer": None, "eta_seconds": None, "error": None,
                 "created": time.time(), "options": {k: v for k, v in _asdict(options).items()
                                                     if k not in RUN_FIELDS},
                 "before": None, "after": None, "losses": [], "wers": []}
        self._write(fine_tune_id, state)
        with self._wake:
            self._wake.notify_all()
        return state

    def get(self, fine_tune_id: str) -> Optional[dict]:
        if not ID_PATTERN.match(fine_tune_id):
            return None
        path = os.path.join(self.folder, fine_tune_id, STATE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def list(self) -> List[dict]:
        found = [self.get(n) for n in sorted(os.listdir(self.folder))]
        return sorted((s for s in found if s), key=lambda s: s["created"])

    def cancel(self, fine_tune_id: str) -> Optional[dict]:
        """Stop it: at once while queued, after the current step while running."""
        with self._lock:
            state = self.get(fine_tune_id)
            if state is None or state["state"] not in UNFINISHED:
                return state
            self._cancelled.add(fine_tune_id)
            if state["state"] == QUEUED:
                state["state"] = CANCELLED
                self._write(fine_tune_id, state)
        return state

    # --- the runner ------------------------------------------------------------------------

    def offer_finished(self) -> None:
        """Every finished fine-tune's model joins the registry's allowed models."""
        for state in self.list():
            if state["state"] == DONE:
                self.registry.add(state["name"], self._model_folder(state))

    def start(self) -> None:
        """Run the fine-tunes, the unfinished ones first (resumed), one at a time."""
        self._thread = threading.Thread(target=self._run, name="fine-tunes", daemon=True)
        self._thread.start()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop after the current step; an unfinished fine-tune resumes at the next start."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        import fcntl

        with open(os.path.join(self.folder, RUNNER_LOCK), "w") as lock:
            while True:  # one process of the server runs fine-tunes; the others wait their turn
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    with self._wake:
                        if self._wake.wait_for(lambda: self._stopping, 5.0):
                            return
            self._run_held()

    def _run_held(self) -> None:
        while True:
            with self._wake:
                state = None
                while not self._stopping:
                    state = next((s for s in self.list() if s["state"] in UNFINISHED), None)
                    if state is not None:
                        break
                    self._wake.wait(1.0)
                if self._stopping:
                    return
            self._train(state)

    def _train(self, state: dict) -> None:
        from whisper_service.cli.evaluate import read_dataset
        from whisper_service.options import TranscribeOptions
        from whisper_service.training import examples
        from whisper_service.training.archive import find_table
        from whisper_service.training.options import FineTuneOptions
        from whisper_service.training.trainer import Stopped, fine_tune

        fine_tune_id = state["id"]
        resume = state["state"] == RUNNING  # it was running when the process stopped
        state.update(state=RUNNING, error=None)
        self._write(fine_tune_id, state)
        output = self._model_folder(state)

        def on_step(report) -> None:
            state.update(step=report.step, total_steps=report.total_steps, loss=report.loss,
                         wer=report.wer, eta_seconds=report.eta_seconds)
            self._write(fine_tune_id, state)

        def should_stop() -> bool:
            return self._stopping or fine_tune_id in self._cancelled

        try:
            base = state["base"]
            source = self.registry.source(base)
            options = FineTuneOptions(base=f"{base}={source}" if base != source else base,
                                      output=output, resume=resume, **state["options"])
            dataset = read_dataset(find_table(os.path.join(self.folder, fine_tune_id, DATA_FOLDER)))
            parts = examples.split(dataset, None, options.eval_fraction, options.seed)
            decoding = TranscribeOptions(language=options.language, beam_size=None, temperature=(0.0,))
            report = fine_tune(replace(self.settings, model=options.base, models=()), options,
                               parts.train, parts.held_out, decoding, on_step, should_stop, self.busy)
        except Stopped:
            if fine_tune_id in self._cancelled:
                state.update(state=CANCELLED, eta_seconds=None)
                self._write(fine_tune_id, state)
            return  # stopping: it stays running, and resumes at the next start
        except Exception as error:  # a failed fine-tune is reported, the runner goes on
            log.exception("fine-tune %s failed", fine_tune_id)
            state.update(state=FAILED, error=str(error) or type(error).__name__, eta_seconds=None)
            self._write(fine_tune_id, state)
            return
        with open(os.path.join(output, "finetune.json"), encoding="utf-8") as f:
            written = json.load(f)
        state.update(state=DONE, step=report.steps, total_steps=report.steps, eta_seconds=0,
                     wer=report.after.wer, before=written["before"], after=written["after"],
                     losses=written["losses"], wers=written["wers"])
        self.registry.add(state["name"], output)
        self._write(fine_tune_id, state)
        log.info("fine-tune %s done: %s offered, WER %.3f -> %.3f", fine_tune_id, state["name"],
                 report.before.wer, report.after.wer)

    def _model_folder(self, state: dict) -> str:
        return os.path.join(self.folder, state["id"], state["name"])

    def _write(self, fine_tune_id: str, state: dict) -> None:
        path = os.path.join(self.folder, fine_tune_id, STATE_FILE)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(temporary, path)


def _options(fields: Mapping[str, str]) -> Dict[str, object]:
    options: Dict[str, object] = {}
    for field, (name, kind) in OPTION_FIELDS.items():
        raw = (fields.get(field) or "").strip()
        if not raw:
            continue
        try:
            options[name] = kind(raw)
        except ValueError:
            raise BadOption(field, f"{field} must be a {'whole ' if kind is int else ''}number; "
                                   f"got {raw[:40]!r}") from None
    if "language" in options:
        from whisper_service.options import language_code

        options["language"] = language_code(str(options["language"]))
    return options


def _asdict(options) -> dict:
    from dataclasses import asdict

    return asdict(options)
