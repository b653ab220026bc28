"""Fine-tunes as jobs: an uploaded dataset archive in, a model in every model list out.

Where a fine-tune lives (its record and files) is a finetune_store.FineTuneStore, chosen
once from the configuration: this host's data folder (the embedded default) or, with
WHISPER_DATABASE_URL, the `fine_tunes` table that every host shares, its files kept as the
jobs' are (rows, or objects with WHISPER_OBJECT_STORE). Each host keeps a work folder per
fine-tune under WHISPER_DATA_DIR/fine-tunes/<id>/ (the unpacked clips, the checkpoints, the
model folder named after the fine-tune); with the shared store it is a cache, fetched when
missing. One thread per host (RUNNER_LOCK), in a process that transcribes (role all, or
`python -m whisper_service worker`), runs them one at a time:

- **Checked first.** The base model must be one this server offers, the name new, and the
  archive a dataset (training/archive.py) before the fine-tune is accepted (202). A web
  host (WHISPER_ROLE=web) accepts it when the store is shared, and a worker runs it.
- **Transcription first.** Between training steps the fine-tune waits while transcription
  jobs are queued, so it takes the device only when no upload waits for it.
- **Restarts and dead hosts.** A fine-tune that was running when its process stopped runs
  again from its last checkpoint (every `save_steps`), its step count going on: at the
  next start here, or, with the shared store, on any host once its runner released it or
  its lease lapsed (the runner sends each checkpoint to the store as it is written).
- **The store away** (the database or the object store): a fine-tune that cannot fetch or
  send its files is handed back, still running, for the next claim; it does not fail.
- **Cancel.** DELETE (on any host) stops it after the current step (the runner's beat
  sees it within BEAT_SECONDS) or at once while queued; its shared files go.
- **Done.** The model joins the registry's allowed models (every model list, the upload
  page) under its name, without a restart: here at once, on other hosts when their lists
  are next asked (the store is read at most every REFRESH_SECONDS); a host fetches the
  model's files on its first use of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from dataclasses import replace
from typing import BinaryIO, Callable, Dict, List, Mapping, Optional

from whisper_service.audio import DecodeLimits
from whisper_service.config import Settings
from whisper_service.errors import BadOption, ServiceError, StoreUnavailable
from whisper_service.models import ModelRegistry
from whisper_service.queue.finetune_store import packing
from whisper_service.queue.finetune_store.base import (ARCHIVE, CANCEL, CANCELLED, CHECKPOINT, DONE,
                                                       FAILED, LOST, MODEL, QUEUED, Claim,
                                                       FineTuneStore)
from whisper_service.queue.finetune_store.local import STATE_FILE  # noqa: F401 (the record's file)

log = logging.getLogger(__name__)

FOLDER = "fine-tunes"  # in the data folder
RUNNER_LOCK = ".runner.lock"  # held by the one process of a host that runs fine-tunes
ARCHIVE_FILE = ARCHIVE  # the uploaded archive, in the work folder
DATA_FOLDER = "data"  # its clips, unpacked
REPORT_FILE = "finetune.json"  # in a model folder: written once the model is
REFRESH_SECONDS = 2.0  # a host reads the shared store for finished fine-tunes at most this often
BEAT_SECONDS = 1.0  # a runner extends its lease and looks for a DELETE this often
POLL_SECONDS = 2.0  # an idle runner asks the shared store for a fine-tune this often
STRAY_CHECK_SECONDS = 3600.0  # files no record names are looked for this often
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
WEB_ONLY = "web"  # the role of a host that serves HTTP and runs nothing
# the form fields a fine-tune takes besides the archive, the base model and the name:
# field -> (FineTuneOptions field, type)
OPTION_FIELDS = {
    "language": ("language", str), "epochs": ("epochs", float), "max_steps": ("max_steps", int),
    "batch_size": ("batch_size", int), "learning_rate": ("learning_rate", float),
    "warmup_steps": ("warmup_steps", int), "eval_fraction": ("eval_fraction", float),
    "eval_steps": ("eval_steps", int), "save_steps": ("save_steps", int), "seed": ("seed", int),
    "method": ("method", str), "lora_rank": ("lora_rank", int), "lora_alpha": ("lora_alpha", int),
}
COPY_CHUNK = 1024 * 1024
RUN_FIELDS = ("base", "output", "resume")  # FineTuneOptions set by the runner, not kept


class FineTuningUnavailable(ServiceError):
    """This install lacks the training packages (requirements-finetune.txt)."""


class FineTunes:
    def __init__(self, store: FineTuneStore, settings: Settings, registry: ModelRegistry,
                 busy: Callable[[], bool] = lambda: False):
        self.store = store
        self.folder = store.folder
        self.settings = settings
        self.registry = registry
        self.busy = busy  # transcription jobs are waiting: training pauses between steps
        self._registries: List[ModelRegistry] = []  # the model lists finished ones join
        self._offered: set = set()  # fine-tune ids whose model the registries offer
        self._refreshed = float("-inf")  # when the store was last read for finished ones
        self._refreshing = threading.Lock()
        self._fetching = threading.Lock()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._cancelled: set = set()
        self._lost: set = set()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        os.makedirs(self.folder, exist_ok=True)
        self.follow(registry)

    # --- asked by the API ------------------------------------------------------------------

    def submit(self, archive: BinaryIO, base: Optional[str], name: Optional[str],
               fields: Mapping[str, str]) -> dict:
        """Check everything, then queue the fine-tune; its state. Raises BadOption /
        DatasetError with a sentence before anything is queued."""
        unknown = sorted(str(k or "") for k in set(fields) - {"model", "name", *OPTION_FIELDS})
        if unknown:
            raise BadOption(unknown[0], f"{unknown[0][:40]!r} is not a fine-tune option; the "
                                        f"options are model, name, {', '.join(OPTION_FIELDS)}")
        from whisper_service.training.options import FineTuneOptions

        if self.settings.role == WEB_ONLY and not self.store.shared:
            raise FineTuningUnavailable("this host serves HTTP only (WHISPER_ROLE=web) and trains "
                                        "nothing: start the fine-tune on a host of role all, or "
                                        "share WHISPER_DATABASE_URL with a worker")
        if self.settings.role != WEB_ONLY:  # a web host queues it for the workers
            from whisper_service.training import missing_packages

            missing = missing_packages()
            if missing:
                raise FineTuningUnavailable(f"this server cannot fine-tune: it lacks "
                                            f"{', '.join(missing)} (pip install -r "
                                            "requirements-finetune.txt)")
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
        path = os.path.join(here, ARCHIVE_FILE)
        try:
            with open(path, "wb") as out:
                shutil.copyfileobj(archive, out, COPY_CHUNK)
            dataset = self._unpack(here)
            state = {"id": fine_tune_id, "name": name, "base": base, "state": QUEUED,
                     "clips": len(dataset.utterances), "step": 0, "total_steps": None,
                     "loss": None, "wer": None, "eta_seconds": None, "error": None,
                     "created": time.time(), "options": {k: v for k, v in _asdict(options).items()
                                                         if k not in RUN_FIELDS},
                     "before": None, "after": None, "losses": [], "wers": []}
            self.store.add(state, path)
        except Exception:
            shutil.rmtree(here, ignore_errors=True)
            raise
        if self.store.shared:  # the store holds it; the host that runs it fetches it
            shutil.rmtree(here, ignore_errors=True)
        with self._wake:
            self._wake.notify_all()
        return state

    def get(self, fine_tune_id: str) -> Optional[dict]:
        return self.store.get(fine_tune_id)

    def list(self) -> List[dict]:
        return self.store.list()

    def cancel(self, fine_tune_id: str) -> Optional[dict]:
        """Stop it: at once while queued, after the current step while running (the
        runner, on whichever host, sees it at its next beat)."""
        return self.store.cancel(fine_tune_id)

    # --- every model list ------------------------------------------------------------------

    def follow(self, registry: ModelRegistry) -> None:
        """Offer finished fine-tunes in this registry too (a worker's other devices), those
        finished on other hosts as soon as a list or a request asks."""
        self._registries.append(registry)
        registry.follow(self._refresh)

    def offer_finished(self) -> None:
        """Every finished fine-tune's model joins the registries' allowed models."""
        for state in self.list():
            if state["state"] == DONE and state["id"] not in self._offered:
                self._offer(state)

    def _refresh(self) -> None:
        """offer_finished() at most every REFRESH_SECONDS; a store away costs nothing here
        (the lists show what they knew)."""
        if not self.store.shared or not self._refreshing.acquire(blocking=False):
            return
        try:
            if time.monotonic() - self._refreshed < REFRESH_SECONDS:
                return
            self._refreshed = time.monotonic()
            self.offer_finished()
        except Exception as error:  # StoreUnavailable and its kin: next time
            log.debug("fine-tunes not read: %s", error)
        finally:
            self._refreshing.release()

    def _offer(self, state: dict) -> None:
        folder = self._model_folder(state)
        fetch = None
        if self.store.shared and not _complete(folder):  # (a host that died mid-way has
            # the folder, with checkpoints but no model)
            fetch = lambda: self._fetch_model(state)  # noqa: E731 (on its first use here)
        for registry in self._registries:
            registry.add(state["name"], folder, fetch)
        self._offered.add(state["id"])

    def _fetch_model(self, state: dict) -> None:
        """The finished model's files from the shared store to this host's work folder."""
        from whisper_service.errors import ModelUnavailable

        folder = self._model_folder(state)
        with self._fetching:
            if _complete(folder):
                return
            here = os.path.dirname(folder)
            os.makedirs(here, exist_ok=True)
            packed = os.path.join(here, MODEL)
            try:
                if not self.store.fetch_file(state["id"], MODEL, packed):
                    raise ModelUnavailable(f"the fine-tuned model {state['name']!r} has no files "
                                           "in the store")
                packing.unpack(packed, folder)
            except ModelUnavailable:
                raise
            except Exception as error:
                raise ModelUnavailable(f"the fine-tuned model {state['name']!r} could not be "
                                       f"fetched: {error}") from error
            finally:
                if os.path.exists(packed):
                    os.remove(packed)
            log.info("fine-tuned model %s fetched to %s", state["name"], folder)

    # --- the runner ------------------------------------------------------------------------

    def start(self) -> None:
        """Run the fine-tunes, the unfinished ones first (resumed), one at a time."""
        self._thread = threading.Thread(target=self._run, name="fine-tunes", daemon=True)
        self._thread.start()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop after the current step; an unfinished fine-tune resumes at the next start
        (or, with the shared store, on the next host that claims it)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        import fcntl

        from whisper_service.training import missing_packages

        missing = missing_packages()
        if missing:  # others may: this host leaves the queue to them
            log.warning("this host runs no fine-tunes: it lacks %s", ", ".join(missing))
            return
        with open(os.path.join(self.folder, RUNNER_LOCK), "w") as lock:
            while True:  # one process of a host runs fine-tunes; the others wait their turn
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    with self._wake:
                        if self._wake.wait_for(lambda: self._stopping, 5.0):
                            return
            self._run_held()

    def _run_held(self) -> None:
        collected = float("-inf")
        while True:
            claim = None
            with self._wake:
                while not self._stopping:
                    try:
                        if time.monotonic() - collected > STRAY_CHECK_SECONDS:
                            collected = time.monotonic()
                            self.store.collect_strays()
                        claim = self.store.claim(self._owner, self.settings.lease_seconds)
                    except Exception as error:  # the store away: ask again
                        log.warning("fine-tunes cannot be claimed now: %s", error)
                    if claim is not None:
                        break
                    self._wake.wait(POLL_SECONDS if self.store.shared else 1.0)
                if self._stopping:
                    if claim is not None:
                        self.store.release(claim)
                    return
            self._train(claim)

    def _train(self, claim: Claim) -> None:
        from whisper_service.cli.evaluate import read_dataset
        from whisper_service.options import TranscribeOptions
        from whisper_service.training import examples
        from whisper_service.training.archive import find_table
        from whisper_service.training.options import FineTuneOptions
        from whisper_service.training.trainer import CHECKPOINTS, Stopped, fine_tune

        state = claim.record
        fine_tune_id = state["id"]
        output = self._model_folder(state)
        checkpoints = os.path.join(output, CHECKPOINTS)
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(claim, beating), daemon=True,
                                name=f"fine-tune {fine_tune_id} beat")
        beat.start()
        sent = [0]  # the step of the checkpoint the store holds

        def send_checkpoint() -> None:
            newest = packing.newest_checkpoint(checkpoints)
            if not self.store.shared or newest is None or newest[0] <= sent[0]:
                return
            packed = os.path.join(self.folder, fine_tune_id, CHECKPOINT)
            try:
                packing.pack(checkpoints, packed, skip=tuple(
                    n for n in os.listdir(checkpoints) if n != newest[1]))
                self.store.put_file(fine_tune_id, CHECKPOINT, packed)
                sent[0] = newest[0]
            except Exception as error:  # the store away: the next one goes up later
                log.warning("fine-tune %s: checkpoint %d not sent: %s", fine_tune_id, newest[0], error)
            finally:
                if os.path.exists(packed):
                    os.remove(packed)

        def on_step(report) -> None:
            send_checkpoint()
            state.update(step=report.step, total_steps=report.total_steps, loss=report.loss,
                         wer=report.wer, eta_seconds=report.eta_seconds)
            try:
                if not self.store.write(claim, state):
                    self._lost.add(fine_tune_id)
            except StoreUnavailable as error:  # training goes on; the next step writes again
                log.warning("fine-tune %s: step %d not written: %s", fine_tune_id, report.step, error)

        def should_stop() -> bool:
            return self._stopping or fine_tune_id in self._cancelled or fine_tune_id in self._lost

        try:
            self.store.write(claim, state)
            if claim.resume and self.store.shared:
                self._fetch_checkpoint(fine_tune_id, checkpoints)
            sent[0] = (packing.newest_checkpoint(checkpoints) or (0, ""))[0]
            base = state["base"]
            source = self.registry.source(base)
            options = FineTuneOptions(base=f"{base}={source}" if base != source else base,
                                      output=output, resume=claim.resume, **state["options"])
            data = os.path.join(self.folder, fine_tune_id, DATA_FOLDER)
            if not os.path.isdir(data):  # queued on another host: its archive, from the store
                self._fetch_dataset(fine_tune_id)
            dataset = read_dataset(find_table(data))
            parts = examples.split(dataset, None, options.eval_fraction, options.seed)
            decoding = TranscribeOptions(language=options.language, beam_size=None, temperature=(0.0,))
            report = fine_tune(replace(self.settings, model=options.base, models=()), options,
                               parts.train, parts.held_out, decoding, on_step, should_stop, self.busy)
            with open(os.path.join(output, REPORT_FILE), encoding="utf-8") as f:
                written = json.load(f)
            if self.store.shared:  # every host fetches it from there
                packed = os.path.join(self.folder, fine_tune_id, MODEL)
                try:
                    packing.pack(output, packed, skip=(CHECKPOINTS,))
                    self.store.put_file(fine_tune_id, MODEL, packed)
                finally:
                    os.remove(packed)
        except Stopped:
            if fine_tune_id in self._cancelled:
                state.update(state=CANCELLED, eta_seconds=None)
                self.store.write(claim, state)
                self.store.remove_files(fine_tune_id)
            elif fine_tune_id not in self._lost:  # stopping: the next runner resumes it
                send_checkpoint()
                self.store.release(claim)
            return
        except StoreUnavailable as error:  # not its fault: it stays running for a next claim
            log.warning("fine-tune %s handed back: %s", fine_tune_id, error)
            try:
                self.store.release(claim)
            except StoreUnavailable:
                pass  # its lease lapses instead
            with self._wake:
                self._wake.wait_for(lambda: self._stopping, POLL_SECONDS)
            return
        except Exception as error:  # a failed fine-tune is reported, the runner goes on
            log.exception("fine-tune %s failed", fine_tune_id)
            state.update(state=FAILED, error=str(error) or type(error).__name__, eta_seconds=None)
            self.store.write(claim, state)
            return
        finally:
            beating.set()
            beat.join()
        state.update(state=DONE, step=report.steps, total_steps=report.steps, eta_seconds=0,
                     wer=report.after.wer, before=written["before"], after=written["after"],
                     losses=written["losses"], wers=written["wers"])
        if not self.store.write(claim, state):  # its lease lapsed: another runner has it
            log.warning("fine-tune %s finished here after another runner took it", fine_tune_id)
            return
        self.store.remove_files(fine_tune_id, (ARCHIVE, CHECKPOINT))
        self._offer(state)
        log.info("fine-tune %s done: %s offered, WER %.3f -> %.3f", fine_tune_id, state["name"],
                 report.before.wer, report.after.wer)

    def _beat(self, claim: Claim, done: threading.Event) -> None:
        """Keep the claim's lease, and learn of a DELETE, every BEAT_SECONDS."""
        fine_tune_id = claim.record["id"]
        lease = self.settings.lease_seconds
        while not done.wait(min(BEAT_SECONDS, lease / 3)):
            try:
                verdict = self.store.beat(claim, lease)
            except Exception as error:  # the store away: the lease may lapse meanwhile
                log.warning("fine-tune %s: no beat: %s", fine_tune_id, error)
                continue
            if verdict == CANCEL:
                self._cancelled.add(fine_tune_id)
            elif verdict == LOST:
                log.warning("fine-tune %s: its lease lapsed and another runner took it", fine_tune_id)
                self._lost.add(fine_tune_id)

    def _fetch_checkpoint(self, fine_tune_id: str, checkpoints: str) -> None:
        """The last checkpoint a runner sent, unless this host has it (or a newer one)."""
        packed = os.path.join(self.folder, fine_tune_id, CHECKPOINT)
        os.makedirs(os.path.dirname(packed), exist_ok=True)
        try:
            if not self.store.fetch_file(fine_tune_id, CHECKPOINT, packed):
                return  # none was sent: it starts from step 0
            fetched = os.path.join(self.folder, fine_tune_id, "fetched-checkpoint")
            packing.unpack(packed, fetched)
            newest = packing.newest_checkpoint(fetched)
            here = packing.newest_checkpoint(checkpoints)
            if newest is not None and (here is None or here[0] < newest[0]):
                os.makedirs(checkpoints, exist_ok=True)
                target = os.path.join(checkpoints, newest[1])
                shutil.rmtree(target, ignore_errors=True)
                os.replace(os.path.join(fetched, newest[1]), target)
            shutil.rmtree(fetched, ignore_errors=True)
        finally:
            if os.path.exists(packed):
                os.remove(packed)

    def _fetch_dataset(self, fine_tune_id: str) -> None:
        here = os.path.join(self.folder, fine_tune_id)
        os.makedirs(here, exist_ok=True)
        if not self.store.fetch_file(fine_tune_id, ARCHIVE, os.path.join(here, ARCHIVE_FILE)):
            raise FileNotFoundError("its dataset archive is gone from the store")
        self._unpack(here)

    def _unpack(self, here: str):
        """The archive in `here`, checked and unpacked into its data folder: the dataset."""
        from whisper_service.training.archive import ArchiveLimits, unpack

        limits = DecodeLimits(max_duration=self.settings.max_duration,
                              timeout=self.settings.decode_timeout, ffmpeg=self.settings.ffmpeg)
        return unpack(os.path.join(here, ARCHIVE_FILE), os.path.join(here, DATA_FOLDER),
                      ArchiveLimits(), limits)

    def _model_folder(self, state: dict) -> str:
        return os.path.join(self.folder, state["id"], state["name"])


def _complete(folder: str) -> bool:
    """Whether the model folder is a finished model (its report is written last)."""
    return os.path.exists(os.path.join(folder, REPORT_FILE))


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
