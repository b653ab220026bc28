"""`python -m whisper_service worker`: job consumers without HTTP, one per device.

On a GPU host of a many-host deployment (WHISPER_DATABASE_URL set, web hosts running with
WHISPER_ROLE=web), this is the process that transcribes: it loads one model per device and
takes jobs from the shared queue until SIGTERM or SIGINT, which stops it as gunicorn stops
its workers: no new jobs, the running ones get WHISPER_GRACEFUL_TIMEOUT seconds to finish,
and one still running after that is queued again (at once by this host's next start, or by
any host once its lease lapses). It also runs the queued fine-tunes (queue/finetunes.py),
one at a time, on its first device, transcription first; a SIGTERM leaves the one running
to the next worker, which resumes it from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from dataclasses import replace
from typing import List, Optional, Sequence

from whisper_service.config import DEVICE_PATTERN, Settings
from whisper_service.errors import ConfigError
from whisper_service.queue.finetune_store import open_fine_tune_store
from whisper_service.queue.finetunes import FOLDER as FINE_TUNES, FineTunes
from whisper_service.queue.jobs import JobQueue
from whisper_service.metrics import gpu_utilization
from whisper_service.service import WhisperService
from whisper_service.queue.store import open_store

log = logging.getLogger(__name__)

HOURS = 3600
DEFAULT_DATA_DIR = os.path.join("instance", "jobs")  # the web app's default, from the repository
DEFAULT_GRACEFUL_SECONDS = 60  # as gunicorn.conf.py's graceful_timeout
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-service worker",
        description="Transcribe queued jobs, one consumer per device, without serving HTTP. "
                    "Settings come from WHISPER_* variables (WHISPER_DATABASE_URL to share "
                    "a queue with other hosts).",
    )
    parser.add_argument("--devices", default=os.environ.get("WHISPER_DEVICES", ""),
                        help="comma-separated devices, e.g. cuda:0,cuda:1 (default: "
                             "WHISPER_DEVICES, else WHISPER_DEVICE)")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG")
    return parser


def parse_devices(raw: str, fallback: str) -> List[str]:
    devices = [d.strip().lower() for d in raw.split(",") if d.strip()] or [fallback]
    for device in devices:
        if not DEVICE_PATTERN.match(device):
            raise ConfigError(f"--devices: {device!r} is not auto, cpu, cuda or cuda:N")
    if len(set(devices)) != len(devices):
        raise ConfigError(f"--devices names a device twice: {','.join(devices)}")
    return devices


class Worker:
    """The consumers of one process; start(), then stop() on a signal."""

    def __init__(self, settings: Settings, devices: Sequence[str]):
        data_folder = settings.data_dir or DEFAULT_DATA_DIR
        self.store = open_store(settings.database_url, data_folder, settings.object_store)
        self.queues: List[JobQueue] = []
        self.fine_tunes: Optional[FineTunes] = None
        for device in devices:
            service = WhisperService(replace(settings, device=device))
            if self.fine_tunes is None:  # the first device trains; every one offers the models
                self.fine_tunes = FineTunes(
                    open_fine_tune_store(settings, os.path.join(data_folder, FINE_TUNES)),
                    replace(settings, device=device), service.models, busy=self._busy)
            else:
                self.fine_tunes.follow(service.models)
            if settings.preload:
                service.preload_in_background()
            self.queues.append(JobQueue(
                self.store, service,
                max_queued=settings.max_queued,
                max_attempts=settings.max_attempts,
                retention_seconds=settings.retention_hours * HOURS,
                shared_jobs=settings.shared_jobs,
                lease_seconds=settings.lease_seconds,
                worker_info=lambda device=device: {"device": device,
                                                   "gpu_utilization": gpu_utilization(device)},
            ))

    def _busy(self) -> bool:
        """Transcription jobs wait: a fine-tune pauses between its steps."""
        return any(queue.queued_count() > 0 for queue in self.queues)

    def start(self) -> None:
        for queue in self.queues:
            queue.start()
        if self.fine_tunes is not None:
            self.fine_tunes.offer_finished()
            self.fine_tunes.start()

    def stop(self, timeout: float) -> None:
        threads = [threading.Thread(target=queue.stop, args=(timeout,)) for queue in self.queues]
        if self.fine_tunes is not None:
            threads.append(threading.Thread(target=self.fine_tunes.stop, args=(timeout,)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.store.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        devices = parse_devices(args.devices, settings.device)
    except ConfigError as error:
        log.error("%s", error)
        return EXIT_USAGE
    graceful = float(os.environ.get("WHISPER_GRACEFUL_TIMEOUT", DEFAULT_GRACEFUL_SECONDS))
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    worker = Worker(settings, devices)
    worker.start()
    log.info("worker %s consuming on %s", os.getpid(), ", ".join(devices))
    stopping.wait()
    log.info("worker %s stopping: running jobs get %s s", os.getpid(), graceful)
    worker.stop(graceful)
    log.info("worker %s stopped", os.getpid())
    return 0
