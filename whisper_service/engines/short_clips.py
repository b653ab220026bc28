"""Clips too short to hold more than a word are decoded once, at the first temperature.

whisper's temperature fallback decodes a window again, hotter, when its text looks wrong
(too repetitive, too unlikely). On a clip of a fraction of a second nothing looks right:
the model guesses at a word it only half hears, the guess is unlikely, and every
temperature of the schedule is tried in turn (with the default preset, five samples each)
for a clip that cannot hold a sentence. A second guess at a sliver of audio is no better
than the first, so such a clip costs one window's decode, whatever the schedule says.
"""

from __future__ import annotations

from whisper_service.options import TranscribeOptions

# below this a clip holds a word or two at most: too little for the fallback to mend
SHORT_CLIP_SECONDS = 1.0


def is_short(seconds: float) -> bool:
    """Whether a clip of this many seconds is decoded once."""
    return seconds < SHORT_CLIP_SECONDS


def for_clip(options: TranscribeOptions, seconds: float) -> TranscribeOptions:
    """The options a clip of `seconds` is decoded with: as given, except that a short clip
    keeps only the first temperature of the fallback schedule."""
    if not is_short(seconds) or len(options.temperature) == 1:
        return options
    return options.with_changes(temperature=options.temperature[:1])
