"""Fine-tunes in this host's data folder (the embedded default): `<folder>/<id>/state.json`
is the record, the archive and everything else lie beside it. One process of the host runs
them (the caller holds finetunes.RUNNER_LOCK), so a claim is the first unfinished record;
a DELETE answered by another process of the server leaves a `cancel` file the runner's
beat sees."""

from __future__ import annotations

import json
import os
import re
from typing import List, Optional

from whisper_service.queue.finetune_store.base import (CANCEL, CANCELLED, GO_ON, QUEUED, RUNNING,
                                                       UNFINISHED, Claim, FineTuneStore)

STATE_FILE = "state.json"
CANCEL_FILE = "cancel"  # a running fine-tune was asked to stop
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")


class LocalFineTunes(FineTuneStore):
    def __init__(self, folder: str):
        super().__init__(folder)
        os.makedirs(folder, exist_ok=True)

    def add(self, record: dict, archive: str) -> None:
        self._write(record["id"], record)  # the archive is already in its work folder

    def get(self, fine_tune_id: str) -> Optional[dict]:
        if not ID_PATTERN.match(fine_tune_id):
            return None
        try:
            with open(os.path.join(self.folder, fine_tune_id, STATE_FILE), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def list(self) -> List[dict]:
        found = [self.get(n) for n in sorted(os.listdir(self.folder))]
        return sorted((s for s in found if s), key=lambda s: s["created"])

    def cancel(self, fine_tune_id: str) -> Optional[dict]:
        record = self.get(fine_tune_id)
        if record is None or record["state"] not in UNFINISHED:
            return record
        if record["state"] == QUEUED:
            record["state"] = CANCELLED
            self._write(fine_tune_id, record)
        else:
            open(os.path.join(self.folder, fine_tune_id, CANCEL_FILE), "w").close()
        return record

    def claim(self, owner: str, lease_seconds: float) -> Optional[Claim]:
        record = next((s for s in self.list() if s["state"] in UNFINISHED), None)
        if record is None:
            return None
        resume = record["state"] == RUNNING  # it was running when the process stopped
        record.update(state=RUNNING, error=None)
        self._write(record["id"], record)
        return Claim(record, owner, resume)

    def write(self, claim: Claim, record: dict) -> bool:
        self._write(record["id"], record)
        return True

    def beat(self, claim: Claim, lease_seconds: float) -> str:
        cancelled = os.path.exists(os.path.join(self.folder, claim.record["id"], CANCEL_FILE))
        return CANCEL if cancelled else GO_ON

    def release(self, claim: Claim) -> None:
        pass  # it stays running: this host's next start resumes it

    def _write(self, fine_tune_id: str, record: dict) -> None:
        path = os.path.join(self.folder, fine_tune_id, STATE_FILE)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(temporary, path)
