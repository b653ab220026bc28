"""Uploads and their transcripts on disk, one folder per random id.

The client's file name is kept only as data (for download names and messages), never as
a path. Deleting a folder deletes everything about that upload.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from typing import BinaryIO, Optional

from .transcript import Transcript

ID_BYTES = 16  # 128 random bits: unguessable
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")
MEDIA_FILE = "media"
TRANSCRIPT_FILE = "transcript.json"
META_FILE = "meta.json"
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Upload:
    id: str
    folder: str
    filename: str  # as the client named it; display only

    @property
    def media_path(self) -> str:
        return os.path.join(self.folder, MEDIA_FILE)

    @property
    def stem(self) -> str:
        """'talk' for 'talk.mp3': the base of download names."""
        return os.path.splitext(os.path.basename(self.filename))[0] or "transcript"


class ResultStore:
    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def save_upload(self, stream: BinaryIO, filename: str) -> Upload:
        upload_id = secrets.token_urlsafe(ID_BYTES)
        upload = Upload(upload_id, os.path.join(self.root, upload_id), filename or "upload")
        os.makedirs(upload.folder)
        with open(upload.media_path, "wb") as media:
            shutil.copyfileobj(stream, media, COPY_CHUNK)
        with open(os.path.join(upload.folder, META_FILE), "w", encoding="utf-8") as meta:
            json.dump({"filename": upload.filename}, meta, ensure_ascii=False)
        return upload

    def upload(self, upload_id: str) -> Optional[Upload]:
        """The upload with this id, or None for an unknown or malformed id."""
        if not _ID_PATTERN.match(upload_id or ""):
            return None
        folder = os.path.join(self.root, upload_id)
        try:
            with open(os.path.join(folder, META_FILE), encoding="utf-8") as meta:
                filename = json.load(meta)["filename"]
        except FileNotFoundError:
            return None
        return Upload(upload_id, folder, filename)

    def save_transcript(self, upload: Upload, transcript: Transcript) -> None:
        path = os.path.join(upload.folder, TRANSCRIPT_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            json.dump(transcript.to_dict(), out, ensure_ascii=False)
        os.replace(path + ".tmp", path)  # readers never see half a file

    def transcript(self, upload: Upload) -> Optional[Transcript]:
        try:
            with open(os.path.join(upload.folder, TRANSCRIPT_FILE), encoding="utf-8") as f:
                return Transcript.from_dict(json.load(f))
        except FileNotFoundError:
            return None

    def delete(self, upload: Upload) -> None:
        shutil.rmtree(upload.folder, ignore_errors=True)
