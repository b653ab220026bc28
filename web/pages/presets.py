"""The upload form's presets: decoding choices made for people who do not want to make them.

A preset fills the expert fields the form left empty; a field given a value keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping

from whisper_service.errors import BadOption
from whisper_service.options import DEFAULT_TEMPERATURES

FALLBACK = ", ".join(f"{t:g}" for t in DEFAULT_TEMPERATURES)  # the command line's schedule
NO_FALLBACK = "0"


@dataclass(frozen=True)
class Preset:
    label: str
    summary: str  # one line on the form
    fields: Mapping[str, str]  # form field -> value, as the expert fields would send it


PRESETS: Dict[str, Preset] = {
    "fast": Preset("Fast", "One guess per passage, no second tries: quickest, fine for clear speech.",
                   {"beam_size": "1", "patience": "1", "temperature": NO_FALLBACK}),
    "balanced": Preset("Balanced", "Weighs five guesses and retries unclear passages: "
                       "openai-whisper's own defaults.",
                       {"beam_size": "5", "patience": "1", "temperature": FALLBACK}),
    "accurate": Preset("Most accurate", "Weighs ten guesses, waits longer for the best one and "
                       "retries unclear passages: slowest.",
                       {"beam_size": "10", "patience": "2", "temperature": FALLBACK}),
}
DEFAULT_PRESET = "balanced"


def apply_preset(name: str, form: Dict[str, str]) -> Dict[str, str]:
    """The form's options with the preset's values where the form left a field empty."""
    preset = PRESETS.get(name or DEFAULT_PRESET)
    if preset is None:
        raise BadOption("preset", f"must be one of {', '.join(PRESETS)}")
    return {**preset.fields, **{k: v for k, v in form.items() if v != ""}}
