"""Files sent back to a client under a name of its own choosing: transcripts named after
the upload, and the upload itself when it cannot be played inline."""

from __future__ import annotations

from urllib.parse import quote

from flask import Response

from whisper_service.queue.jobs import Job, clean_filename
from whisper_service.transcript import Transcript
from whisper_service.writers import MEDIA_TYPES, write

DOWNLOAD_STEM_CHARS = 120  # of the upload's name, in a download's name


def transcript_download(job: Job, transcript: Transcript, fmt: str, suffix: str = "") -> Response:
    """A transcript file named after the upload ('talk.srt' for 'talk.mp3'; with suffix
    '-original', 'talk-original.srt')."""
    body = write(fmt, transcript, job.options.layout)  # an unknown format: BadOption
    response = Response(body, content_type=MEDIA_TYPES[fmt])
    response.headers["Content-Disposition"] = attachment(f"{download_stem(job)}{suffix}.{fmt}")
    return response


def download_stem(job: Job) -> str:
    """'talk' for 'talk.mp3': downloads are named after the upload."""
    stem = job.filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return (stem.rsplit(".", 1)[0] if "." in stem else stem)[:DOWNLOAD_STEM_CHARS] or "transcript"


def attachment(name: str) -> str:
    """Content-Disposition with an ASCII fallback and the UTF-8 name (RFC 6266 / 5987).
    The name was cleaned at upload (jobs.clean_filename); what cannot stand in a quoted
    header value is replaced here again, so no name can break the header."""
    name = clean_filename(name)
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
