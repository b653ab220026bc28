"""What the model menus offer (upload page, live page, /api/v1/models, /v1/models).

Every allowed model, in the allow-list's order, with what a person needs to choose: its
label (a bundled model by what it is), whether it can be had here and if not why and what
runs instead, what its first use downloads, and which languages it hears (the page's
language list follows the chosen model). Reads the registry; loads and downloads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from whisper_service.checkpoints import BUNDLED_MODELS, OFFICIAL_MODELS, describe
from whisper_service.models import TRANSCRIBE_ONLY_MODELS, ModelRegistry

# why a configured model found missing cannot be had, in people's terms (no path, no errno)
MISSING_REASON = "its weights are not on this server, which cannot download them (no internet access)"
FAILED_REASON = "it could not be loaded on this server"  # the log has the operator's detail


@dataclass(frozen=True)
class ModelChoice:
    name: str  # what a request names (the value of the page's option)
    label: str  # what people see: a bundled model by what it is ("base (bundled, multilingual)")
    available: bool  # False: cannot be had here (see `reason`); a request for it gets `stand_in` or fails
    reason: Optional[str]  # why it cannot be had here; None when it can
    stand_in: Optional[str]  # the bundled model a transcription asked of it runs instead; None: itself
    download_gb: Optional[float]  # what its first use downloads; None: nothing (on hand, or unknown)
    english_only: Optional[bool]  # True: hears English only; None: not known until it loads
    translates: Optional[bool]  # whether it translates itself (else the translation model does); None: not known

    @property
    def note(self) -> Optional[str]:
        """What the menu shows after the label, in parentheses; None: nothing."""
        if self.stand_in:
            return f"not on this server: {describe(self.stand_in)} runs instead"
        if not self.available:
            return f"cannot be used: {self.reason}"
        if self.download_gb:
            return f"first use downloads {self.download_gb} GB"
        return None

    def to_dict(self) -> dict:
        return {"id": self.name, "label": self.label, "available": self.available,
                "reason": self.reason, "stand_in": self.stand_in, "download_gb": self.download_gb,
                "english_only": self.english_only, "translates": self.translates}


def menu(registry: ModelRegistry) -> List[ModelChoice]:
    """Every allowed model as the menus offer it."""
    return [choice(registry, name) for name in registry.allowed]


def choice(registry: ModelRegistry, name: str) -> ModelChoice:
    stand_in = registry.stand_in(name)
    failed = registry.load_error(name) is not None and stand_in is None
    english_only, translates = _hears(registry, name)
    return ModelChoice(
        name=name, label=describe(name), available=stand_in is None and not failed,
        reason=(MISSING_REASON if registry.cannot_download(name) else FAILED_REASON) if stand_in or failed else None,
        stand_in=stand_in, download_gb=None if stand_in or failed else registry.download_gb(name),
        english_only=english_only, translates=translates)


def selected(registry: ModelRegistry, choices: List[ModelChoice]) -> Optional[str]:
    """The choice a menu starts on: the default model where it can be had, else the
    bundled model standing in for it, else the first that can."""
    usable = [c.name for c in choices if c.available]
    default = registry.default
    if default in usable:
        return default
    stand_in = registry.stand_in(default)
    if stand_in in usable:
        return stand_in
    return usable[0] if usable else default


def _hears(registry: ModelRegistry, name: str):
    """(English only, translates itself) as far as known without loading anything."""
    source = registry.source(name)
    if source in BUNDLED_MODELS:
        english = BUNDLED_MODELS[source].english_only
        return english, not english
    loaded = registry.peek(name)
    if loaded is not None:
        return not loaded.is_multilingual, loaded.can_translate
    if source in OFFICIAL_MODELS:
        english = source.endswith(".en")
        return english, not english and source not in TRANSCRIBE_ONLY_MODELS
    return None, None
