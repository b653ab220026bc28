"""Where fine-tunes live: one small interface (FineTuneStore), two places.

- local.LocalFineTunes: a folder per fine-tune in this host's data folder, its record a
  `state.json` (the embedded default: one host).
- shared.SharedFineTunes: the `fine_tunes` table of the PostgreSQL that many hosts share
  (state, step, loss, WER, curves, before/after tables, and a claim with a lease on the
  database's clock, as jobs have), and the files (the dataset archive, the latest
  checkpoint, the finished model, each one tar) kept by the jobs' own keeper (blobs.py):
  rows of fine_tune_files, or S3 objects under `<prefix>fine-tunes/<id>/`.

A record is the dict the API shows (`id`, `name`, `base`, `state`, `step`, `total_steps`,
`loss`, `wer`, `eta_seconds`, `error`, `created`, `options`, `before`, `after`, `losses`,
`wers`, `clips`). Every host keeps a work folder per fine-tune, `<folder>/<id>/`: the
unpacked clips (data/), the checkpoints and the model folder named after the fine-tune; in
the shared place it is a cache, fetched from the files when missing.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import List, Optional, Sequence

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
UNFINISHED = (QUEUED, RUNNING)
ENDED = (DONE, FAILED, CANCELLED)
# the files of a fine-tune (each one file, or one tar of a folder)
ARCHIVE = "dataset.zip"  # the uploaded dataset archive
CHECKPOINT = "checkpoint.tar"  # the latest training checkpoint (checkpoints/checkpoint-N/)
MODEL = "model.tar"  # the finished model folder
FILES = (ARCHIVE, CHECKPOINT, MODEL)
# what a runner's beat learns
GO_ON, CANCEL, LOST = "go on", "cancel", "lost"


@dataclass(frozen=True)
class Claim:
    """A fine-tune taken by one runner."""

    record: dict  # its record, state already RUNNING
    owner: str  # who holds it (host:pid:token); the beats and writes name it
    resume: bool  # it ran before (a stopped or dead runner): continue from its checkpoint


class FineTuneStore(abc.ABC):
    """Records and files of fine-tunes. Methods that touch a shared place may raise
    StoreUnavailable (the web answers 503)."""

    # whether other hosts see the records and files (then the runner sends its checkpoints
    # and model to the files, and a host fetches them to its work folder)
    shared = False

    def __init__(self, folder: str):
        self.folder = folder  # this host's work folders: <folder>/<id>/

    @abc.abstractmethod
    def add(self, record: dict, archive: str) -> None:
        """Keep a new fine-tune (queued) and its dataset archive (the local path). Raises
        BadOption('name') when an unfinished or done fine-tune already has its name."""

    @abc.abstractmethod
    def get(self, fine_tune_id: str) -> Optional[dict]:
        """Its record; None when there is none (or the id has not the shape of ours)."""

    @abc.abstractmethod
    def list(self) -> List[dict]:
        """Every record, oldest first."""

    @abc.abstractmethod
    def cancel(self, fine_tune_id: str) -> Optional[dict]:
        """A queued one is cancelled at once (its files go); a running one is asked to stop
        (its runner sees it at its next beat, then writes CANCELLED). Its record after."""

    @abc.abstractmethod
    def claim(self, owner: str, lease_seconds: float) -> Optional[Claim]:
        """The oldest queued fine-tune, or a running one whose runner stopped or died (its
        lease lapsed), now RUNNING under `owner`; None when none waits."""

    @abc.abstractmethod
    def write(self, claim: Claim, record: dict) -> bool:
        """Write the record of a claimed fine-tune (progress, or its end); False when the
        claim is no longer the owner's (nothing written)."""

    @abc.abstractmethod
    def beat(self, claim: Claim, lease_seconds: float) -> str:
        """Extend the claim's lease: GO_ON, CANCEL (DELETE asked it to stop) or LOST."""

    @abc.abstractmethod
    def release(self, claim: Claim) -> None:
        """This runner stops (the process stops): the fine-tune stays RUNNING and the next
        runner (here after a restart, or on any host) resumes it from its checkpoint."""

    def put_file(self, fine_tune_id: str, name: str, path: str) -> None:
        """Keep the local file at `path` as the fine-tune's file `name` (shared places)."""

    def fetch_file(self, fine_tune_id: str, name: str, path: str) -> bool:
        """Write the fine-tune's file `name` to `path`; False when it has none."""
        return False

    def remove_files(self, fine_tune_id: str, names: Sequence[str] = FILES) -> None:
        """Remove these files of a fine-tune (shared places): all of a cancelled one, the
        archive and checkpoint of a finished one."""

    def collect_strays(self) -> int:
        """Remove files no record names (a crash between writing them and the record);
        how many fine-tunes' files went."""
        return 0

    def close(self) -> None:
        """Give back connections."""
