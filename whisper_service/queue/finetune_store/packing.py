"""A folder as one tar and back, for the files of a shared fine-tune (its checkpoint, its
model): written beside the target, then renamed, so a half-written folder is never used."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from typing import Optional, Tuple

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # transformers' checkpoint folders


def pack(folder: str, target: str, skip: Tuple[str, ...] = ()) -> None:
    """The contents of `folder` (but the names in `skip`) as the tar `target` (uncompressed:
    weights do not shrink, and the CPU has better things to do)."""
    with tarfile.open(target, "w") as tar:
        for name in sorted(os.listdir(folder)):
            if name not in skip:
                tar.add(os.path.join(folder, name), arcname=name)


def unpack(archive: str, folder: str) -> None:
    """Unpack the tar into `folder` (made here, replacing one there): only plain files and
    folders inside it are taken (the "data" filter)."""
    partial = f"{folder}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def newest_checkpoint(checkpoints: str) -> Optional[Tuple[int, str]]:
    """(step, folder name) of the newest complete checkpoint in `checkpoints`; None."""
    found = []
    if os.path.isdir(checkpoints):
        for name in os.listdir(checkpoints):
            match = CHECKPOINT_PATTERN.match(name)
            if match and os.path.exists(os.path.join(checkpoints, name, "trainer_state.json")):
                found.append((int(match.group(1)), name))
    return max(found) if found else None
