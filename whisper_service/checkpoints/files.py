"""What every checkpoint reader shares: reading a folder's JSON files, and the error for
weights that are not on this machine and could not be fetched."""

from __future__ import annotations

import json
import os

from whisper_service.errors import ModelUnavailable


class DownloadFailed(ModelUnavailable):
    """The weights are not on this machine and could not be downloaded (no internet, a
    firewall, the server down): the one failure a stand-in model may cover."""


def read_json(path: str, where: str, missing_ok: bool = False):
    """A checkpoint's JSON file; {} for a missing one when missing_ok."""
    if missing_ok and not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelUnavailable(f"{where} has no {os.path.basename(path)}") from None
    except (OSError, ValueError) as error:
        raise ModelUnavailable(f"{where}: {os.path.basename(path)} cannot be read as JSON: "
                               f"{error}") from None
