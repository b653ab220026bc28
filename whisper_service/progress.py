"""How far a transcription has come, as engines report it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    done_seconds: float  # audio seconds transcribed so far
    total_seconds: float

    @property
    def fraction(self) -> float:
        return 1.0 if self.total_seconds <= 0 else min(1.0, self.done_seconds / self.total_seconds)


ProgressCallback = Callable[[Progress], None]
