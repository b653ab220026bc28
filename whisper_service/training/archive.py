"""A fine-tune's uploaded dataset: a zip of clips and a table (a CSV / JSONL manifest, or a
Common Voice folder zipped), unpacked safely and checked before anything trains.

Refused with a sentence: a file that is not a zip; an archive bomb (too many entries, too
many bytes unpacked, an entry that unpacks to far more than it holds); names that climb
out of the folder (`../`, absolute paths, drive letters) or are links; no table; a table
whose clips are missing, not audio, or have no text.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from typing import List, Optional

from whisper_service.audio import DecodeLimits, check_file
from whisper_service.cli.evaluate import (COMMON_VOICE_TABLES, Dataset, DatasetError,
                                          read_dataset)
from whisper_service.errors import MediaError

MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 20000  # files and folders in the zip
    max_bytes: int = 8 * 1024 ** 3  # unpacked, in all
    max_ratio: int = 200  # unpacked size / packed size of one entry (audio barely compresses)


def unpack(path: str, folder: str, limits: ArchiveLimits, decode: DecodeLimits) -> Dataset:
    """The dataset in the zip at `path`, unpacked into `folder`, every clip checked."""
    if not zipfile.is_zipfile(path):
        raise DatasetError("the dataset is not a zip archive: zip the clips with their table "
                           "(a .csv or .jsonl with audio and text, or a Common Voice folder)",
                           field="dataset")
    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
        _check_entries(entries, limits)
        archive.extractall(folder)
    table = find_table(folder)
    if table is None:
        raise DatasetError("the archive has no table: add a .csv or .jsonl with audio and text "
                           "columns, or a Common Voice .tsv with path and sentence", field="dataset")
    try:
        dataset = read_dataset(table)
    except DatasetError as error:  # said with the archive's names: the server's paths stay private
        raise DatasetError(str(error).replace(os.path.join(folder, ""), ""), field="dataset") from None
    if dataset.missing:
        raise DatasetError(f"the table names {len(dataset.missing)} clips the archive does not "
                           f"hold, e.g. {dataset.missing[0]!r}", field="dataset")
    for utterance in dataset.utterances:
        name = os.path.relpath(utterance.audio, folder)
        if not utterance.reference.strip():
            raise DatasetError(f"{name!r} has no text in the table", field="dataset")
        try:
            check_file(utterance.audio, decode, name)
        except MediaError as error:
            raise DatasetError(f"{name!r} cannot be a training clip: {error}", field="dataset") from None
    return dataset


def _check_entries(entries: List[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    if len(entries) > limits.max_entries:
        raise DatasetError(f"the archive holds {len(entries)} entries; at most "
                           f"{limits.max_entries} are taken", field="dataset")
    total = 0
    for entry in entries:
        name = entry.filename.replace("\\", "/")
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise DatasetError(f"the archive names {entry.filename!r}, outside its own folder",
                               field="dataset")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise DatasetError(f"the archive holds a link, {entry.filename!r}; only files are taken",
                               field="dataset")
        total += entry.file_size
        if entry.file_size > limits.max_ratio * max(entry.compress_size, 1) and entry.file_size > 1024 ** 2:
            raise DatasetError(f"{entry.filename!r} unpacks to {entry.file_size // 1024 ** 2} MB from "
                               f"{entry.compress_size} bytes: an archive bomb is refused", field="dataset")
    if total > limits.max_bytes:
        raise DatasetError(f"the archive unpacks to {total / 1024 ** 3:.1f} GB; at most "
                           f"{limits.max_bytes / 1024 ** 3:.0f} GB are taken", field="dataset")


def find_table(folder: str) -> Optional[str]:
    """The manifest or Common Voice folder in the unpacked archive: at its top, or in its
    one top folder (a zipped folder)."""
    for place in _places(folder):
        names = sorted(os.listdir(place))
        manifest = next((n for n in names if n.endswith(MANIFEST_SUFFIXES)), None)
        if manifest:
            return os.path.join(place, manifest)
        if any(n in COMMON_VOICE_TABLES or n.endswith(".tsv") for n in names):
            return place
    return None


def _places(folder: str) -> List[str]:
    names = [n for n in os.listdir(folder) if not n.startswith(("__MACOSX", "."))]
    inner = [os.path.join(folder, n) for n in names if os.path.isdir(os.path.join(folder, n))]
    return [folder] + (inner if len(inner) == 1 else [])
