"""Voice activity detection: windows at pauses, sections detected in parallel."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import whisper

from whisper_service.engines import vad
from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.config import bundled_ffmpeg

RATE = whisper.audio.SAMPLE_RATE
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spoken(media) -> np.ndarray:
    return decode_file(str(media["speech.wav"]), DecodeLimits(600, 60, bundled_ffmpeg()))


def test_first_use_leaves_torch_threads_alone():
    """silero_vad's import sets torch to one thread; every later transcription in that
    thread would run on one core."""
    script = (
        "import numpy as np, torch\n"
        "torch.set_num_threads(2)\n"
        "from whisper_service.engines.vad import speech_windows\n"
        "speech_windows(np.zeros(32000, np.float32))\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split() == ["2"]


def test_sections_end_at_the_quietest_moment():
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, 300 * RATE).astype(np.float32)
    pause = slice(int(117.3 * RATE), int(117.5 * RATE))  # 200 ms of quiet, 2.7 s early
    audio[pause] = 0.0
    sections = vad.audio_sections(audio)
    assert sections[0][0] == 0 and sections[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(sections, sections[1:]))  # no gaps, no overlap
    assert pause.start <= sections[0][1] < pause.stop
    assert len(sections) == 3  # 117.4 s, about 120 s more, then the last 60 s or so
    assert all(abs(b - a - 120 * RATE) <= 5 * RATE for a, b in sections[:-1])


def test_short_audio_is_one_section():
    audio = np.zeros(125 * RATE, np.float32)
    assert vad.audio_sections(audio) == [(0, len(audio))]


def test_parallel_detection_equals_serial_and_respects_sections(spoken):
    rng = np.random.default_rng(1)
    pieces = []
    while sum(map(len, pieces)) < 330 * RATE:  # three sections
        pieces += [spoken, np.zeros(int(rng.uniform(0.5, 3.0) * RATE), np.float32)]
    audio = np.concatenate(pieces)
    serial = list(vad.iter_speech_windows(audio, threads=1))
    parallel = list(vad.iter_speech_windows(audio, threads=3))
    assert parallel == serial
    assert len(serial) >= 10
    assert all(0 < w.seconds <= vad.MAX_WINDOW_SECONDS for w in serial)
    assert all(a.end <= b.start for a, b in zip(serial, serial[1:]))
    cuts = [end for _, end in vad.audio_sections(audio)[:-1]]
    assert len(cuts) == 2
    assert not [w for w in serial for cut in cuts if w.start < cut < w.end]


def test_silence_and_tones_give_no_window(spoken):
    seconds = np.arange(20 * RATE) / RATE
    tones = (0.1 * sum(np.sin(2 * np.pi * f * seconds) for f in (220, 277, 330))).astype(np.float32)
    audio = np.concatenate([np.zeros(10 * RATE, np.float32), tones, spoken])
    windows = vad.speech_windows(audio)
    assert windows and windows[0].offset >= 29.5  # the first window is the speech


def test_a_transcription_stopped_mid_file_leaves_no_detection_running(spoken, service):
    """A cancelled job (its progress callback raises) stops the detection threads too."""
    import threading

    from whisper_service.engines import dispatch
    from whisper_service.options import TranscribeOptions

    audio = np.concatenate([spoken, np.zeros(RATE, np.float32)] * 60)  # several sections
    assert len(vad.audio_sections(audio)) >= 3
    loaded = service.models.get(service.settings.model)

    def cancel(progress):
        raise RuntimeError("cancelled")

    options = TranscribeOptions(mode="batched", beam_size=None, language="en", temperature=(0.0,))
    with pytest.raises(RuntimeError, match="cancelled"):
        dispatch.transcribe(loaded, audio, options, progress=cancel, batch_windows=1)
    assert not [t for t in threading.enumerate() if t.name.startswith("vad")]


def test_speech_with_no_pause_past_30_s_is_cut_or_kept_whole():
    from long_speech import long_speech

    speech = long_speech(90, seed=0, long_run=40)
    cut = vad.speech_windows(speech.audio)
    whole = vad.speech_windows(speech.audio, split_long=False)
    assert max(w.seconds for w in cut) <= 30
    longest = max(whole, key=lambda w: w.seconds)
    assert longest.seconds > 35
    # the same speech from its first sample to its last, in fewer windows
    assert (whole[0].start, whole[-1].end) == (cut[0].start, cut[-1].end)
    assert len(whole) < len(cut)
