"""Voice activity detection: the file's sections one after another on one thread (the
baseline) against the same sections in parallel threads, on the same audio, in one run.

    python bench/vad.py                 # an hour of speech with pauses, tones and silence

Prints one table: threads, wall seconds, times real time, the ratio to the baseline, and
whether the windows are the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transcribe import format_speed, make_audio  # noqa: E402  (the end-to-end benchmark's audio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60)
    args = parser.parse_args()

    from whisper_service.engines import vad
    from whisper_service.audio import DecodeLimits, decode_file
    from whisper_service.config import bundled_ffmpeg

    with tempfile.TemporaryDirectory() as folder:
        audio = decode_file(make_audio(args.minutes, folder, "vad.wav"),
                            DecodeLimits(24 * 3600, 3600, bundled_ffmpeg()))
    seconds = len(audio) / vad.SAMPLE_RATE
    vad.load_model()
    parallel = min(len(vad.audio_sections(audio)), os.cpu_count() or 1, vad.MAX_THREADS)
    print(f"{args.minutes:g} min of audio, {len(vad.audio_sections(audio))} sections of about "
          f"{vad.SECTION_SECONDS} s, {os.cpu_count()} cores")
    print("| threads | wall s | x real time | vs baseline | windows | same windows |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for threads in (1, parallel):
        started = time.perf_counter()
        windows = list(vad.iter_speech_windows(audio, threads=threads))
        wall = time.perf_counter() - started
        baseline = baseline or (wall, windows)
        print(f"| {threads} | {wall:.2f} | {format_speed(seconds / wall)} | {baseline[0] / wall:.2f} | "
              f"{len(windows)} | {'yes' if windows == baseline[1] else 'no'} |")


if __name__ == "__main__":
    main()
