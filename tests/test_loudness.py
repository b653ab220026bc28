"""The picture of the audio (whisper_service/loudness.py): levels that follow the sound, a
size of a few hundred bytes a minute, and a JSON form that reads back the same."""

from __future__ import annotations

import json

import numpy as np

from whisper_service.loudness import BINS_PER_SECOND, LEVELS, MIN_BINS, Envelope, envelope

RATE = 16000


def tone(seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_levels_follow_the_sound():
    audio = np.concatenate([np.zeros(RATE * 60, np.float32), tone(60, 0.9), tone(60, 0.01)])
    levels = np.frombuffer(envelope(audio).levels, np.uint8)
    per_minute = 60 * BINS_PER_SECOND
    silence, loud, quiet = levels[:per_minute], levels[per_minute:2 * per_minute], levels[2 * per_minute:]
    assert silence.max() == 0
    assert loud.min() > 0.9 * LEVELS  # -3.9 dB RMS of a sine at 0.9
    assert 0 < quiet.max() < loud.min() / 2


def test_a_few_hundred_bytes_a_minute_and_detail_for_short_files():
    long = envelope(np.zeros(RATE * 600, np.float32))
    assert len(long.levels) == 600 * BINS_PER_SECOND
    assert len(json.dumps(long.to_dict())) / 10 < 400
    short = envelope(tone(3, 0.5))
    assert len(short.levels) == MIN_BINS and abs(short.seconds_per_bin * MIN_BINS - 3) < 0.01
    assert envelope(np.zeros(0, np.float32)).to_dict()["bins"] == 0


def test_the_json_form_reads_back():
    found = envelope(tone(5, 0.3))
    assert Envelope.from_dict(json.loads(json.dumps(found.to_dict()))) == found
