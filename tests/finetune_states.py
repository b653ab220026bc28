"""Fine-tunes as the runner writes them (queue/finetunes.py's state.json), finished and
running, for the pages' tests: no training needed to draw them."""

from __future__ import annotations

import json
from pathlib import Path

from whisper_service.queue.finetunes import FOLDER, STATE_FILE

DONE_ID, RUNNING_ID = "D" * 22, "R" * 22


def scores(model: str, wer: float, cer: float) -> dict:
    return {"model": model, "wer": wer, "cer": cer, "substitutions": 1, "deletions": 0,
            "insertions": 0, "words": 33, "utterances": 6, "skipped": []}


def write_states(data_dir: Path) -> None:
    """A done fine-tune (names-en, 97 % -> 3 %) and one running at step 7 of 20."""
    base = {"base": "bundled", "clips": 36, "error": None, "options": {}, "created": 1.0}
    done = {**base, "id": DONE_ID, "name": "names-en", "state": "done", "step": 20,
            "total_steps": 20, "loss": 0.1, "wer": 0.03, "eta_seconds": 0,
            "before": scores("bundled", 0.97, 0.457), "after": scores("names-en", 0.03, 0.009),
            "losses": [[s, 2.0 / s] for s in range(1, 21)], "wers": [[0, 0.97], [10, 0.2], [20, 0.03]]}
    running = {**base, "id": RUNNING_ID, "name": "names-more", "state": "running", "step": 7,
               "total_steps": 20, "loss": 0.4, "wer": 0.5, "eta_seconds": 65.0, "created": 2.0,
               "before": None, "after": None,
               "losses": [[s, 2.0 / s] for s in range(1, 8)], "wers": [[0, 0.97], [5, 0.5]]}
    for state in (done, running):
        folder = data_dir / FOLDER / state["id"]
        folder.mkdir(parents=True)
        (folder / STATE_FILE).write_text(json.dumps(state))
