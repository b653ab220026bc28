"""Why something failed, twice: a sentence for the person who sent the file, and the
operator's detail.

People read the sentence on the job page and in the APIs' error bodies: it says what
happened in their terms and what they can do, and never holds a server path, an errno or
a driver's text. The detail (the error's class and its own text) goes to the server's log
and, for a signed-in operator, under "Details" on the job page. The job runner
(queue/jobs.py) and the web's error answers (web/http/errors.py) both ask `explain`.

    explain(ModelUnavailable("model 'large-v3' could not be loaded: it is not in /root/...
            and could not be downloaded ([Errno -2] Name or service not known)"))
    -> Failure(message="This server cannot reach the internet to download large-v3; "
                       "choose another model.",
               detail="DownloadFailed: model 'large-v3' could not be loaded: ...",
               kind="DownloadFailed", field="model", retry=True, other_model=True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

from whisper_service.errors import MediaError, ModelUnavailable, ServiceError

# the name a model error begins with: "model 'large-v3' could not be loaded: ..."
_MODEL_NAME = re.compile(r"model '([^']+)'")
# what a person must not be shown: an absolute path (two parts at least), an errno
_PATH = re.compile(r"(?<![\w.:/])(?:~|[A-Za-z]:)?/(?:[^\s'\"/,;:()\[\]]+/)+[^\s'\",;:()\[\]]*")
_ERRNO = re.compile(r"\s*\[Errno -?\d+\][^()\]]*")
_GPU_MEMORY = ("out of memory", "CUDA error: out of memory")

SERVER_FAILED = "The transcription failed on the server."
MEDIA_GONE = "The upload is no longer on the server; upload the file again."
OUT_OF_MEMORY = ("The server ran out of memory while transcribing this file; try again later, "
                 "or choose a smaller model.")
STOPPED = "The server stopped while transcribing this file."


@dataclass(frozen=True)
class Failure:
    """One error, explained."""

    message: str  # for people: what happened and what to do; no path, errno or driver text
    detail: str  # for the operator: "ErrorClass: the error's own text" (log, "Details")
    kind: str  # the error's class name, as jobs keep it ("NotMedia", "RuntimeError")
    field: Optional[str] = None  # the option or "file" at fault, so an API can point at it
    retry: bool = False  # trying the same again may work (a condition that passes)
    other_model: bool = False  # another model may work where this one did not


def explain(error: BaseException) -> Failure:
    """The Failure of any error a transcription or a request can end in."""
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    kind = type(error).__name__
    if isinstance(error, ModelUnavailable) and error.field == "model":
        return Failure(_model_sentence(str(error)), detail, kind, error.field, retry=True,
                       other_model=True)
    if isinstance(error, MediaError):
        return Failure(scrub(str(error)), detail, kind, error.field)
    if isinstance(error, ServiceError):  # its message is written for people already (a
        # speaker backend that cannot run says what to set: a ModelUnavailable of "diarize")
        busy = getattr(error, "retry_after", None) is not None
        return Failure(scrub(str(error)), detail, kind, error.field, retry=busy)
    if isinstance(error, FileNotFoundError):  # the store lost the upload
        return Failure(MEDIA_GONE, detail, kind, "file")
    if isinstance(error, MemoryError) or any(words in str(error) for words in _GPU_MEMORY):
        return Failure(OUT_OF_MEMORY, detail, kind, retry=True, other_model=True)
    return Failure(SERVER_FAILED, detail, kind, retry=True, other_model=True)


def stopped(reason: str) -> Failure:
    """The Failure of an attempt that ended without an error of this process to explain
    (the server stopped, a lease lapsed): `reason` is the operator's detail."""
    return Failure(STOPPED, reason, "Stopped", retry=True)


def scrub(text: str) -> str:
    """text without absolute paths and errnos, for a sentence a person is shown."""
    text = _ERRNO.sub("", text)
    text = _PATH.sub(lambda match: _name_only(match.group(0)), text)
    return re.sub(r"\(\s*\)", "", re.sub(r"\s{2,}", " ", text)).strip()


def _name_only(path: str) -> str:
    """The last part of a path ("the file tiny.pt"), which says which without saying where."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name or "a server folder"


def model_name(text: str) -> Optional[str]:
    """The model a model error's text names, as people know it (a path: its last part)."""
    found = _MODEL_NAME.search(text)
    if found is None:
        return None
    name = found.group(1)
    return _name_only(name) if "/" in name and name.startswith(("/", "~")) else name


def _model_sentence(text: str) -> str:
    name = model_name(text)
    model = name or "the chosen model"
    named = f"The model {name}" if name else "The chosen model"
    if "could not be downloaded" in text:
        return f"This server cannot reach the internet to download {model}; choose another model."
    if any(words in text for words in _GPU_MEMORY):
        return (f"The server has no room for {model} in its GPU's memory right now; try again "
                "later, or choose a smaller model.")
    if "no CUDA GPU" in text:
        return ("This server is set to use a GPU it cannot find, so no model can run; tell its "
                "operator.")
    return f"{named} cannot be loaded on this server; choose another model."


def remedies(kind: Optional[str], field: Optional[str]) -> Tuple[bool, bool]:
    """(try again, try with another model): what may help a failed job, from the kind and
    field of its failure. A file at fault needs another file; a refused option the same
    options will refuse again, though another model may take it (a language an
    English-only model cannot do)."""
    if field == "file":
        return False, False
    return kind != "BadOption", True
