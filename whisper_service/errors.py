"""Errors a caller can cause, each with a message a person understands.

The web layer maps these classes to HTTP status codes; nothing here knows about HTTP.
"""

from __future__ import annotations

from typing import Optional


class ServiceError(Exception):
    """Base class: something about the request (not the server) is wrong."""

    def __init__(self, message: str, *, field: Optional[str] = None):
        super().__init__(message)
        self.message = message
        # the option or upload field at fault, so an API can point at it
        self.field = field

    def __str__(self) -> str:
        return self.message


class BadOption(ServiceError):
    """An option has a value outside its accepted range or choices."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", field=field)


class MediaError(ServiceError):
    """The uploaded file cannot be turned into audio we accept."""

    def __init__(self, message: str):
        super().__init__(message, field="file")


class EmptyMedia(MediaError):
    """The file has no bytes."""


class NotMedia(MediaError):
    """ffmpeg cannot read the file as audio or video."""


class RefusedFormat(MediaError):
    """A playlist or a container outside the demuxer allow-list."""


class NoAudioStream(MediaError):
    """A video (or other container) with no audio stream."""


class TruncatedMedia(MediaError):
    """The container declares more audio than the file holds."""


class MediaTooLong(MediaError):
    """The audio runs past the configured maximum duration."""


class MediaTooLarge(MediaError):
    """The upload is larger than the configured maximum size."""


class DecodeTimeout(MediaError):
    """ffmpeg did not finish within the wall-clock limit."""


class ModelUnavailable(ServiceError):
    """A model could not be loaded or downloaded (a server-side condition)."""

    def __init__(self, message: str):
        super().__init__(message, field="model")


class ModelBusy(ServiceError):
    """The model was busy with other work for longer than a caller may wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, field="model")
        self.retry_after = retry_after


class StoreUnavailable(ServiceError):
    """The job database cannot be reached, or stayed locked past its timeout: a server-side
    condition that passes (a restart, a failover, a long writer). Raised by the stores at
    their connection helper; the web answers 503 with Retry-After, the consumer waits."""

    def __init__(self, reason: str, retry_after: int = 5):
        super().__init__(f"the job database is unreachable ({reason}); try again in "
                         f"{retry_after} s", field=None)
        # a phrase safe to show a client: never the driver's text (it names server paths)
        self.reason = reason
        self.retry_after = retry_after


class ConfigError(Exception):
    """A WHISPER_* setting is invalid; raised at start-up, naming the variable."""


class DiskFull(ServiceError):
    """The data folder's disk has no room for an upload: it filled up while the upload was
    written (nothing of it is kept), or its free space is below WHISPER_MIN_FREE_MB. A
    server-side condition that passes when room is made; the web answers 507."""

    def __init__(self, message: str, retry_after: int = 60):
        super().__init__(message, field="file")
        self.retry_after = retry_after
