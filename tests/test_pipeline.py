"""The batched engine's pipeline: the next batch is prepared while this one decodes, and
every stage's time is measured and logged."""

from __future__ import annotations

import logging
import threading

import pytest

from whisper_service.engines import batched, dispatch
from whisper_service.options import TranscribeOptions
from whisper_service.engines.pipeline import STAGES, Prefetcher, StageTimes

FAST = dict(temperature=(0.0,), beam_size=None, language="en", mode="batched")


def test_batched_run_measures_every_engine_stage_and_logs_them(service, long_speech, caplog):
    loaded = service.models.get(service.settings.model)
    audio = service.decode(str(long_speech))
    times = StageTimes(loaded.device)
    with caplog.at_level(logging.INFO, logger="whisper_service.engines.batched"):
        transcript = dispatch.transcribe(loaded, audio, TranscribeOptions(**FAST),
                                       batch_windows=1, times=times)
    assert transcript.segments
    seconds = times.as_dict()
    assert set(seconds) == {"vad", "mel", "encoder", "decoder", "handover", "segments"}
    assert all(value >= 0 for value in seconds.values()) and seconds["decoder"] > 0
    assert list(seconds) == [stage for stage in STAGES if stage in seconds]  # pipeline order
    [message] = [r.getMessage() for r in caplog.records if "batched run" in r.getMessage()]
    assert "decoder" in message and "vad" in message


def test_next_batch_is_prepared_while_this_one_decodes(service, long_speech, monkeypatch):
    loaded = service.models.get(service.settings.model)
    audio = service.decode(str(long_speech))
    events = []
    make_mels, decode = batched._window_mels, batched.decode_batch
    second_mel = threading.Event()

    def recording_mels(*args):
        events.append(("mel", threading.current_thread().name))
        mels = make_mels(*args)
        if [kind for kind, _ in events].count("mel") == 2:
            second_mel.set()
        return mels

    def slow_decode(*args):
        events.append(("decode", threading.current_thread().name))
        if not second_mel.is_set():
            # the first batch decodes until the producer has made the next one meanwhile
            # (it never will if it waits for this decode: then the order below tells)
            second_mel.wait(60)
        result = decode(*args)
        events.append(("decoded", threading.current_thread().name))
        return result

    monkeypatch.setattr(batched, "_window_mels", recording_mels)
    monkeypatch.setattr(batched, "decode_batch", slow_decode)
    dispatch.transcribe(loaded, audio, TranscribeOptions(**FAST), batch_windows=1)
    kinds = [kind for kind, _ in events]
    assert kinds.count("decode") == kinds.count("mel") >= 2
    # the second batch's mel was made before the first batch finished decoding
    assert kinds.index("mel", kinds.index("mel") + 1) < kinds.index("decoded")
    assert {thread for kind, thread in events if kind == "mel"} == {"batches"}
    assert threading.current_thread().name in {t for k, t in events if k == "decode"}


def test_prefetcher_hands_over_items_errors_and_stops_its_producer():
    def items(closed):
        try:
            yield 1
            yield 2
            raise ValueError("broken media")
        finally:
            closed.append(threading.current_thread().name)

    closed = []
    with Prefetcher(items(closed), name="producer") as ahead:
        got = []
        with pytest.raises(ValueError, match="broken media"):
            for item in ahead:
                got.append(item)
    assert got == [1, 2] and closed == ["producer"]

    def endless(closed):
        try:
            count = 0
            while True:
                count += 1
                yield count
        finally:
            closed.append("closed")

    closed = []
    with Prefetcher(endless(closed)) as ahead:
        assert next(iter(ahead)) == 1
    assert closed == ["closed"]  # leaving stopped the producer and closed its iterator


def test_stage_times_refuse_unknown_stages():
    times = StageTimes()
    with times.stage("decoder"):
        pass
    with pytest.raises(ValueError, match="unknown stage"):
        times.add("lunch", 1.0)
    assert list(times.as_dict()) == ["decoder"] and "decoder" in times.summary()
