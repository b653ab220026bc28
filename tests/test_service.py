"""The service facade: decoding ahead of time for the job that comes next."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_service import service as service_module
from whisper_service.errors import MediaError


def counting_decoder(monkeypatch) -> list:
    calls = []
    original = service_module.decode_file

    def decode(path, *args, **kwargs):
        calls.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(service_module, "decode_file", decode)
    return calls


def test_a_prefetched_file_is_decoded_once_with_the_same_samples(service, media, monkeypatch):
    path = str(media["speech.mp3"])
    direct = service.decode(path)
    calls = counting_decoder(monkeypatch)
    service.prefetch(path, "speech.mp3")
    service.prefetch(path, "speech.mp3")  # asked twice: still one decode
    ahead = service.decode(path)
    assert calls == [path]
    assert np.array_equal(ahead, direct)
    service.decode(path)  # taken: the next decode runs ffmpeg again
    assert calls == [path, path]


def test_a_prefetched_bad_file_raises_when_it_is_decoded(service, media):
    path = str(media["notes.mp3"])
    with pytest.raises(MediaError) as direct:
        service.decode(path, "notes.mp3")
    service.prefetch(path, "notes.mp3")
    with pytest.raises(MediaError) as ahead:
        service.decode(path, "notes.mp3")
    assert str(ahead.value) == str(direct.value) and "notes.mp3" in str(ahead.value)


def test_files_prefetched_but_never_used_are_let_go(service, media, monkeypatch):
    counting_decoder(monkeypatch)
    names = ["speech.wav", "speech.mp3", "speech.flac"]
    for name in names:
        service.prefetch(str(media[name]), name)
    assert list(service._prefetched) == [str(media[n]) for n in names[1:]]


def test_preload_loads_the_default_model_and_the_detector(service, monkeypatch):
    from whisper_service.engines import vad

    monkeypatch.setattr(vad, "_model", None)
    service.preload_in_background().join(60)
    assert service.models.loaded() == [service.models.default]
    assert vad._model is not None


def test_share_key_groups_batched_runs_of_the_same_decoding(service):
    from dataclasses import replace

    from whisper_service.options import SubtitleLayout, TranscribeOptions

    batched = TranscribeOptions(mode="batched", language="en", beam_size=5)
    key = service.share_key(batched)
    assert key is not None
    # what concerns one file only does not keep files apart
    assert service.share_key(replace(batched, initial_prompt="Names: Ada.", word_timestamps=True,
                                     layout=SubtitleLayout(max_line_width=30))) == key
    assert service.share_key(replace(batched, beam_size=2)) != key
    assert service.share_key(replace(batched, language="de")) != key
    assert service.share_key(replace(batched, mode=None)) is None  # sequential on the CPU
    assert service.share_key(replace(batched, model="large-v3")) != key
    assert service.share_key(replace(batched, model="medium")) is None  # not offered here


def test_files_transcribed_together_fail_one_by_one(service, media):
    from whisper_service.options import TranscribeOptions

    options = TranscribeOptions(mode="batched", language="en", beam_size=None,
                                temperature=(0.0,))
    alone = service.transcribe_file(str(media["speech.wav"]), options)
    bad, good = service.transcribe_together([
        (str(media["notes.mp3"]), options, "notes.mp3", None),
        (str(media["speech.wav"]), options, "speech.wav", None),
    ])
    assert isinstance(bad, MediaError) and "'notes.mp3' is not an audio or video file" in str(bad)
    assert good.text == alone.text and [s.tokens for s in good.segments] == [
        s.tokens for s in alone.segments]
