"""A clip too short to hold more than a word costs one window's decode, whatever the
temperature schedule: the fallback does not walk every temperature over a sliver of audio.
Counted in decodes (and CPU seconds), never wall-clock."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bundled_model import bundled_model, spoken_wav
from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.config import bundled_ffmpeg
from whisper_service.engines import dispatch, short_clips
from whisper_service.options import DEFAULT_TEMPERATURES, TranscribeOptions
from web.pages.presets import DEFAULT_PRESET, PRESETS, apply_preset

SAMPLE_RATE = 16000
LIMITS = DecodeLimits(max_duration=600, timeout=60, ffmpeg=bundled_ffmpeg())


def load_audio(path: str) -> np.ndarray:
    return decode_file(path, LIMITS)


def default_preset_options(**changes) -> TranscribeOptions:
    """What the upload form sends with its default preset and nothing else filled in."""
    return TranscribeOptions.from_mapping(apply_preset(DEFAULT_PRESET, {})).with_changes(**changes)


@pytest.fixture(scope="module")
def word_start(tmp_path_factory):
    """The first 0.2 s of espeak-ng saying "hello there": the start of a word, no more (the
    clip that walked the whole schedule: the model's guess at it is unlikely every time)."""
    path = spoken_wav("hello there", tmp_path_factory.mktemp("short"))
    return load_audio(str(path))[: int(0.2 * SAMPLE_RATE)]


class CountingDecodes:
    """Counts openai-whisper's window decodes (whisper.transcribe calls model.decode once
    per temperature it tries) and their temperatures."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.temperatures = []

    def __enter__(self):
        model = self.loaded.model
        original = model.decode

        def decode(mel, options):
            self.temperatures.append(options.temperature)
            return original(mel, options)

        self.original = original
        model.decode = decode
        return self

    def __exit__(self, *exc):
        self.loaded.model.decode = self.original


def test_the_default_preset_has_a_fallback_schedule():
    """Otherwise the tests below would prove nothing."""
    assert PRESETS[DEFAULT_PRESET].fields["beam_size"] == "5"
    assert default_preset_options().temperature == DEFAULT_TEMPERATURES
    assert len(DEFAULT_TEMPERATURES) > 1


def test_a_short_clip_keeps_only_the_first_temperature():
    options = default_preset_options()
    assert short_clips.for_clip(options, 0.2).temperature == (0.0,)
    assert short_clips.for_clip(options, short_clips.SHORT_CLIP_SECONDS - 0.01).temperature == (0.0,)
    # a clip that can hold words keeps its schedule, and a single temperature stays as it is
    assert short_clips.for_clip(options, short_clips.SHORT_CLIP_SECONDS).temperature == DEFAULT_TEMPERATURES
    assert short_clips.for_clip(options, 30.0) is options
    one = options.with_changes(temperature=(0.4,))
    assert short_clips.for_clip(one, 0.2) is one


def test_a_fifth_of_a_second_is_decoded_once_with_the_default_preset(word_start):
    loaded = bundled_model()
    options = default_preset_options(mode="sequential")  # the CPU's engine
    with CountingDecodes(loaded) as counted:
        began = time.process_time()
        transcript = dispatch.transcribe(loaded, word_start, options)
        one_clip = time.process_time() - began
    assert counted.temperatures == [0.0]
    assert transcript.duration == pytest.approx(0.2)
    # the same clip through whisper.transcribe with the whole schedule: every temperature
    # is tried (what the clip cost before), so a single decode is what saves the time
    with CountingDecodes(loaded) as schedule:
        began = time.process_time()
        whisper_transcribe(loaded, word_start, options)
        walked = time.process_time() - began
    assert schedule.temperatures == list(DEFAULT_TEMPERATURES)
    assert one_clip < walked / 2, (one_clip, walked)


def whisper_transcribe(loaded, audio, options):
    import whisper

    kwargs = options.decode_kwargs()
    kwargs.update(fp16=False, language="en")
    return whisper.transcribe(loaded.model, audio, verbose=None, **kwargs)


def test_longer_speech_keeps_the_fallback(tmp_path):
    """A clip that holds words goes through the schedule as before (here the first
    temperature suffices: one decode, the same text as whisper.transcribe gives)."""
    loaded = bundled_model()
    audio = load_audio(str(spoken_wav("hello there, how are you", tmp_path)))
    assert not short_clips.is_short(len(audio) / SAMPLE_RATE)
    options = default_preset_options(mode="sequential")
    transcript = dispatch.transcribe(loaded, audio, options)
    assert "hello" in transcript.text.lower()
    assert transcript.text == whisper_transcribe(loaded, audio, options)["text"]


def test_short_and_long_files_transcribed_together_each_get_their_schedule(word_start, tmp_path):
    loaded = bundled_model()
    audio = load_audio(str(spoken_wav("hello there, how are you", tmp_path)))
    options = default_preset_options(mode="batched")
    requests = [dispatch.FileRequest(word_start, options), dispatch.FileRequest(audio, options)]
    outcomes = dispatch.transcribe_together(loaded, requests)
    assert [type(o).__name__ for o in outcomes] == ["Transcript", "Transcript"]
    assert "hello" in outcomes[1].text.lower()
    assert np.isclose(outcomes[0].duration, 0.2)
