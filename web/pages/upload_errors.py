"""Why an upload was refused, in plain words for the upload page, with the technical
detail (ffmpeg's own message) kept for a "details" toggle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from whisper_service import errors

# the sentence a person reads first; the error's own message becomes the detail
PLAIN_WORDS = {
    errors.NotMedia: "{name} is not audio or video we can read.",
    errors.RefusedFormat: "{name} is in a format this server does not accept.",
    errors.EmptyMedia: "{name} is empty.",
    errors.NoAudioStream: "{name} has no sound to transcribe.",
    errors.TruncatedMedia: "{name} is cut short: part of it is missing.",
}


@dataclass(frozen=True)
class RefusedFile:
    name: str
    sentence: str
    detail: Optional[str]  # the full technical message, when it says more than the sentence


def refused(name: str, error: errors.MediaError) -> RefusedFile:
    template = next((PLAIN_WORDS[k] for k in type(error).__mro__ if k in PLAIN_WORDS), None)
    if template is None:  # already a plain sentence (too long, too large, too slow)
        message = str(error)
        return RefusedFile(name, message[:1].upper() + message[1:] + ".", None)
    return RefusedFile(name, template.format(name=name), str(error))
