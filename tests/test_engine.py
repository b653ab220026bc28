"""The service's transcript equals openai-whisper's own, option for option."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import whisper

from whisper_service.engines import batched, dispatch
from whisper_service.errors import BadOption
from whisper_service.options import TranscribeOptions
from whisper_service.engines.vad import speech_windows

FAST = dict(temperature=(0.0,))  # one decode per window keeps the suite fast

# (what a user sends, as form strings) -> (what they would pass to model.transcribe themselves)
CASES = {
    "greedy, fixed language": (
        dict(beam_size="greedy", language="English", temperature="0"),
        dict(beam_size=None, language="en", temperature=0.0),
    ),
    "greedy, auto language": (
        dict(beam_size="greedy", language="auto", temperature="0"),
        dict(temperature=0.0),
    ),
    "beam 5, patience 1": (
        dict(beam_size="5", patience="1", language="de", temperature="0"),
        dict(beam_size=5, patience=1.0, language="de", temperature=0.0),
    ),
    "beam 5, patience 2, auto": (
        dict(beam_size="5", patience="2", temperature="0"),
        dict(beam_size=5, patience=2.0, temperature=0.0),
    ),
    "translate greedy": (
        dict(task="translate", beam_size="greedy", language="French", temperature="0"),
        dict(task="translate", language="fr", temperature=0.0),
    ),
    "translate beam 5 patience 2": (
        dict(task="translate", beam_size="5", patience="2", temperature="0"),
        dict(task="translate", beam_size=5, patience=2.0, temperature=0.0),
    ),
    "prompt, no conditioning": (
        dict(beam_size="3", initial_prompt="Quarterly results.", condition_on_previous_text="false",
             temperature="0"),
        dict(beam_size=3, initial_prompt="Quarterly results.", condition_on_previous_text=False,
             temperature=0.0),
    ),
    "word timestamps": (
        dict(beam_size="greedy", word_timestamps="true", temperature="0"),
        dict(word_timestamps=True, temperature=0.0),
    ),
    "length penalty, no thresholds": (
        dict(beam_size="2", length_penalty="0.5", no_speech_threshold="none",
             logprob_threshold="none", compression_ratio_threshold="none", temperature="0"),
        dict(beam_size=2, length_penalty=0.5, no_speech_threshold=None, logprob_threshold=None,
             compression_ratio_threshold=None, temperature=0.0),
    ),
    # the command line's defaults: beam 5, best_of 5, fallback 0.0 -> 1.0 in steps of 0.2
    "defaults with fallback": (dict(), dict(beam_size=5, best_of=5, patience=1.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transcript_equals_whisper_transcribe(case, service, media, ffmpeg_on_path, monkeypatch):
    form, whisper_kwargs = CASES[case]
    options = TranscribeOptions.from_mapping(form)
    path = media["speech.mp3"]
    loaded = service.models.get(service.models.default)  # building a model draws random numbers
    torch.manual_seed(1234)  # sampling at temperatures above 0 draws the same numbers on both sides
    transcript = service.transcribe_file(str(path), options)

    monkeypatch.setenv("PATH", ffmpeg_on_path)
    audio = whisper.load_audio(str(path))
    torch.manual_seed(1234)
    expected = loaded.model.transcribe(audio, verbose=None, fp16=False, **whisper_kwargs)

    assert transcript.text == expected["text"]
    assert transcript.language == expected["language"]
    assert transcript.task == whisper_kwargs.get("task", "transcribe")
    assert len(transcript.segments) == len(expected["segments"]) > 0
    for ours, theirs in zip(transcript.segments, expected["segments"]):
        assert list(ours.tokens) == theirs["tokens"]
        assert (ours.start, ours.end, ours.text) == (theirs["start"], theirs["end"], theirs["text"])
        assert ours.temperature == theirs["temperature"]
        assert [(w.word, w.start, w.end) for w in ours.words] == [
            (w["word"], w["start"], w["end"]) for w in theirs.get("words", [])
        ]
    assert transcript.has_word_timestamps == bool(whisper_kwargs.get("word_timestamps"))


def test_options_change_the_result(service, media):
    """Guards the test above: different options really give different transcripts here."""
    results = {
        case: service.transcribe_file(
            str(media["speech.mp3"]), TranscribeOptions.from_mapping(CASES[case][0])
        ).text
        for case in ("greedy, fixed language", "beam 5, patience 1", "translate greedy")
    }
    assert len(set(results.values())) == 3


def test_auto_language_reports_its_probability(service, media):
    transcript = service.transcribe_file(str(media["speech.wav"]), TranscribeOptions(**FAST))
    probabilities = service.detect_language_file(str(media["speech.wav"]))
    top = next(iter(probabilities))
    assert transcript.language == top
    assert transcript.language_probability == pytest.approx(probabilities[top])
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert list(probabilities.values()) == sorted(probabilities.values(), reverse=True)
    assert len(probabilities) == 99  # every language of a multilingual v1/v2 vocabulary


def test_named_language_has_probability_one(service, media):
    transcript = service.transcribe_file(str(media["speech.wav"]), TranscribeOptions(language="ko", **FAST))
    assert (transcript.language, transcript.language_probability) == ("ko", 1.0)
    assert transcript.model == service.models.default == "tiny-test"
    assert 3.0 < transcript.duration < 15.0


def test_progress_reaches_the_total_and_never_goes_back(service, media):
    reports = []
    service.transcribe_file(str(media["speech.wav"]), TranscribeOptions(**FAST), progress=reports.append)
    assert len(reports) >= 2
    done = [r.done_seconds for r in reports]
    assert done == sorted(done)
    assert reports[-1].fraction == 1.0
    assert reports[-1].total_seconds == pytest.approx(reports[0].total_seconds, abs=0.05)


def test_english_only_model(english_checkpoint, settings, media):
    from dataclasses import replace

    from whisper_service.service import WhisperService

    service = WhisperService(replace(settings, model=english_checkpoint, models=()))
    transcript = service.transcribe_file(str(media["speech.wav"]), TranscribeOptions(**FAST))
    assert (transcript.language, transcript.language_probability) == ("en", 1.0)
    with pytest.raises(BadOption, match="English-only"):
        service.transcribe_file(str(media["speech.wav"]), TranscribeOptions(language="ko", **FAST))


def test_concurrent_callers_on_one_model_get_serial_results(service, media):
    options = TranscribeOptions(beam_size=2, **FAST)
    serial = service.transcribe_file(str(media["speech.wav"]), options)
    results, errors = [], []

    def work():
        try:
            results.append(service.transcribe_file(str(media["speech.wav"]), options))
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [r.segments for r in results] == [serial.segments] * 4


def test_detect_language_without_lock_contention_returns_all(service, media):
    audio = service.decode(str(media["speech.wav"]))
    loaded = service.models.get(service.models.default)
    probabilities = dispatch.detect_language(loaded, audio)
    assert set(probabilities) == set(list(whisper.tokenizer.LANGUAGES)[:99])


def test_batched_mode_decodes_speech_windows_only(service, media):
    speech = service.decode(str(media["speech.wav"]))
    silence = np.zeros(20 * whisper.audio.SAMPLE_RATE, np.float32)
    audio = np.concatenate([speech, silence, speech])
    windows = speech_windows(audio)
    assert len(windows) == 2  # the silence separates two windows of speech
    gap_start = windows[0].end / whisper.audio.SAMPLE_RATE
    gap_end = windows[1].start / whisper.audio.SAMPLE_RATE
    assert gap_end - gap_start > 15

    loaded = service.models.get(service.models.default)
    reports = []
    options = TranscribeOptions(mode="batched", beam_size=5, patience=2.0, language="en",
                                temperature=(0.0,), word_timestamps=True)
    transcript = dispatch.transcribe(loaded, audio, options, progress=reports.append)
    assert transcript.segments
    for segment in transcript.segments:
        assert not (gap_start + 0.5 < segment.start < gap_end - 0.5), "no text in the silence"
        assert segment.start < segment.end
        assert all(w.start <= w.end for w in segment.words)
    assert transcript.has_word_timestamps
    assert reports[-1].fraction == 1.0

    # each window's tokens are what whisper.decode gives for that window alone
    first = windows[0]
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio[first.start:first.end]))
    alone = whisper.decode(loaded.model, mel, whisper.DecodingOptions(
        language="en", beam_size=5, patience=2.0, fp16=False))
    ours = [t for s in transcript.segments if s.start < gap_start for t in s.tokens]
    assert ours == alone.tokens[:len(ours)] and len(ours) > 0


def test_mode_defaults_to_sequential_on_cpu_and_can_be_chosen(service):
    loaded = service.models.get(service.models.default)
    assert dispatch.mode_of(loaded, TranscribeOptions()) == "sequential"
    assert dispatch.mode_of(loaded, TranscribeOptions(mode="batched")) == "batched"
    with pytest.raises(BadOption, match="mode: must be one of batched, sequential"):
        TranscribeOptions.from_mapping({"mode": "turbo"})


def test_batch_windows_setting_changes_batches_not_results(service, long_speech, monkeypatch):
    audio = service.decode(str(long_speech))
    loaded = service.models.get(service.models.default)
    options = TranscribeOptions(mode="batched", beam_size=5, patience=1.0, language="en", **FAST)
    sizes = []
    original = batched.decode_batch

    def recording(model, mels, decoding, *args, **kwargs):
        sizes.append(len(mels))
        return original(model, mels, decoding, *args, **kwargs)

    monkeypatch.setattr(batched, "decode_batch", recording)
    windows = len(speech_windows(audio, split_long=False))
    together = dispatch.transcribe(loaded, audio, options)
    # one batch on the CPU (8 windows at most), then the rests of those whose decode
    # stopped early (batched._rest), together
    assert windows >= 2 and sizes[0] == windows and max(sizes) == windows
    sizes.clear()
    one_by_one = dispatch.transcribe(loaded, audio, options, batch_windows=1)
    assert set(sizes) == {1} and len(sizes) >= windows

    def said(transcript):  # batching may change float rounding, never what is said
        return [(s.start, s.end, s.text, s.tokens) for s in transcript.segments]

    assert said(one_by_one) == said(together) and said(together)
    assert [s.no_speech_prob for s in one_by_one.segments] == pytest.approx(
        [s.no_speech_prob for s in together.segments], rel=1e-4)


class _Dims:
    def __init__(self, shape):
        from whisper_service.synthetic import DIMENSIONS

        self.dims = DIMENSIONS[shape]


@pytest.mark.parametrize("free_gib, shape, beam, expected", [
    (80, "large-v3", 5, 59),   # about 1 GB a window: cross-attention keys/values + 2 caches
    (8, "large-v3", 5, 5),
    (8, "large-v3", None, 14),  # one row a window: a much smaller cache
    (8, "turbo", 5, 39),        # four decoder layers
    (80, "turbo", 5, batched.MAX_BATCH_WINDOWS),
    (0.1, "large-v3", 5, 1),    # never none
])
def test_windows_per_batch_follows_free_gpu_memory_and_model_size(
    free_gib, shape, beam, expected, monkeypatch
):
    from whisper_service.models import LoadedModel

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(free_gib * 2**30), 0))
    loaded = LoadedModel("m", _Dims(shape), torch.device("cuda"), fp16=True, load_seconds=0.0)
    assert batched.windows_per_batch(loaded, beam) == expected


def test_windows_per_batch_on_the_cpu_is_fixed(service):
    loaded = service.models.get(service.models.default)
    assert batched.windows_per_batch(loaded, 5) == batched.BATCH_WINDOWS_CPU


def _said(transcript):
    return [(s.start, s.end, s.text, s.tokens) for s in transcript.segments]


def test_files_transcribed_together_share_batches_and_say_what_they_say_alone(
    service, media, long_speech, monkeypatch
):
    loaded = service.models.get(service.models.default)
    short, long = service.decode(str(media["speech.wav"])), service.decode(str(long_speech))
    options = TranscribeOptions(mode="batched", beam_size=5, patience=1.0, language="en", **FAST)
    prompted = TranscribeOptions(mode="batched", beam_size=5, patience=1.0, language="en",
                                 initial_prompt="Glossary: Whisper, ffmpeg.", **FAST)
    alone = [dispatch.transcribe(loaded, short, prompted), dispatch.transcribe(loaded, long, options)]
    sizes = []
    original = batched.decode_batch

    def recording(model, mels, decoding, prompts=None):
        sizes.append(len(mels))
        return original(model, mels, decoding, prompts)

    monkeypatch.setattr(batched, "decode_batch", recording)
    reports = {0: [], 1: []}
    together = dispatch.transcribe_together(loaded, [
        dispatch.FileRequest(short, prompted, reports[0].append),
        dispatch.FileRequest(long, options, reports[1].append),
    ])
    windows = len(speech_windows(short, split_long=False)) + len(speech_windows(long, split_long=False))
    # one batch held the windows of both (then the rests of any that stopped early)
    assert sizes[0] == windows and max(sizes) == windows and windows >= 3
    assert [_said(t) for t in together] == [_said(t) for t in alone]
    assert [t.duration for t in together] == [t.duration for t in alone]
    assert reports[0][-1].fraction == reports[1][-1].fraction == 1.0


def test_a_file_given_up_together_with_others_leaves_them_alone(service, media, long_speech):
    loaded = service.models.get(service.models.default)
    first, second = service.decode(str(long_speech)), service.decode(str(media["speech.wav"]))
    options = TranscribeOptions(mode="batched", beam_size=None, language="en", **FAST)

    def cancelled(progress):
        raise RuntimeError("cancelled by its owner")

    alone = dispatch.transcribe(loaded, second, options)
    outcomes = dispatch.transcribe_together(loaded, [
        dispatch.FileRequest(first, options, cancelled),
        dispatch.FileRequest(second, options),
    ], batch_windows=1)
    assert isinstance(outcomes[0], RuntimeError) and "cancelled" in str(outcomes[0])
    assert _said(outcomes[1]) == _said(alone) and outcomes[1].segments


def test_language_detection_runs_between_batches_of_a_transcription(service, long_speech):
    """The batched engine holds the model a batch at a time, so a detection asked for
    meanwhile waits for one batch, not for the whole file."""
    loaded = service.models.get(service.models.default)
    audio = service.decode(str(long_speech))
    detected = []

    def between_batches(progress):
        # reports from inside a batch (a slow machine's decoder, or windows that fall back)
        # come while the model is held: the one after the batch comes once it is let go
        if not detected and progress.fraction < 1.0 and not loaded.lock.locked():
            other = threading.Thread(
                target=lambda: detected.append(dispatch.detect_language(loaded, audio, wait=5)))
            other.start()
            other.join()

    options = TranscribeOptions(mode="batched", beam_size=None, language="en", **FAST)
    dispatch.transcribe(loaded, audio, options, progress=between_batches, batch_windows=1)
    assert len(detected) == 1 and sum(detected[0].values()) == pytest.approx(1.0, abs=1e-2)
