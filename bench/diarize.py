"""Diarization error rate and speed of the embedded speaker backend, on generated
conversations of 2-4 espeak-ng voices with known turns (tests/conversations.py).

    python bench/diarize.py                      # 2, 3 and 4 speakers, 3 conversations each
    python bench/diarize.py --speakers 2,3 --turns 10 --seeds 0,1

Prints one row per number of speakers: conversations, the speakers found (how often right),
DER (pyannote.metrics, no collar; mean and worst), and seconds of diarization per hour of
audio (after the encoder is loaded; the VAD, the embeddings and the clustering).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from conversations import conversation, diarization_error_rate  # noqa: E402
from whisper_service.speakers import encoder  # noqa: E402
from whisper_service.speakers.embedded import EmbeddedDiarizer  # noqa: E402

SECONDS_PER_HOUR = 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", default="2,3,4", help="comma-separated speaker counts")
    parser.add_argument("--turns", type=int, default=10, help="turns per conversation")
    parser.add_argument("--seeds", default="0,1,2", help="one conversation per seed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    diarizer = EmbeddedDiarizer(args.device)
    encoder.load_encoder(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {args.device}")
    print("speakers | conversations | audio s | count right | DER mean | DER worst | s per hour")
    print("---|---|---|---|---|---|---")
    for speakers in (int(s) for s in args.speakers.split(",")):
        ders, right, audio_seconds, spent = [], 0, 0.0, 0.0
        for seed in seeds:
            talk = conversation(speakers, args.turns, seed=seed)
            began = time.perf_counter()
            turns = diarizer.diarize(talk.audio)
            spent += time.perf_counter() - began
            audio_seconds += talk.duration
            right += len({t.speaker for t in turns}) == speakers
            ders.append(diarization_error_rate(talk.turns, [(t.start, t.end, t.speaker) for t in turns]))
        print(f"{speakers} | {len(seeds)} | {audio_seconds:.0f} | {right}/{len(seeds)} | "
              f"{sum(ders) / len(ders):.3f} | {max(ders):.3f} | "
              f"{spent / audio_seconds * SECONDS_PER_HOUR:.0f}")


if __name__ == "__main__":
    main()
