"""Many short uploads: stock whisper.transcribe over each file (the baseline) against the
service through its HTTP API, each job alone and queued jobs sharing batches, in one run.

    python bench/many_files.py                                       # CPU: 16 clips, tiny's shape
    python bench/many_files.py --shape large-v3 --files 64 --device cuda

Each clip is one to three spoken sentences (espeak-ng), 3 to 15 s. The checkpoint is a
seeded random one of the named shape; every engine decodes with the model's own token
budget per window. The baseline loads the model once and transcribes the clips one after
another. The HTTP rows start `gunicorn -c gunicorn.conf.py` (one worker) and upload every
clip at once with `?async=1`, timed from the first upload to the last finished job; the
batched engine runs each job alone (WHISPER_SHARED_JOBS=1) or lets queued jobs share
batches (the default). The first upload goes straight to the consumer, so the others queue
behind it and share runs of up to WHISPER_SHARED_JOBS jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transcribe import (  # noqa: E402  (the end-to-end benchmark's helpers)
    SAMPLE_RATE, differs, format_memory, format_speed, peak_host_mib, serving, spoken_sentences,
    worker_gpu_mib, write_wav,
)

POLL_SECONDS = 0.05


def make_clips(count: int, folder: str, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    spoken = spoken_sentences(folder)
    paths = []
    for index in range(count):
        pieces = []
        for _ in range(rng.integers(1, 4)):
            pieces += [spoken[rng.integers(len(spoken))], np.zeros(int(0.5 * SAMPLE_RATE))]
        paths.append(write_wav(np.concatenate(pieces), os.path.join(folder, f"clip{index}.wav")))
    return paths


def run_baseline(checkpoint: str, clips: list, device: str, beam: int) -> dict:
    """In this process: whisper.transcribe on each clip, the model loaded once."""
    import torch
    import whisper

    from whisper_service.audio import DecodeLimits, decode_file
    from whisper_service.config import bundled_ffmpeg

    model = whisper.load_model(checkpoint, device=device)
    limits = DecodeLimits(3600, 600, bundled_ffmpeg())
    fp16 = device.startswith("cuda")
    started = time.perf_counter()
    texts = []
    for clip in clips:
        audio = decode_file(clip, limits)
        texts.append(whisper.transcribe(model, audio, language="en", beam_size=beam,
                                        temperature=0.0, fp16=fp16)["text"])
    if fp16:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if fp16 else None,
            "host_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "texts": texts}


def run_http(checkpoint: str, clips: list, device: str, beam: int, shared_jobs: int) -> dict:
    import requests

    with serving(checkpoint, device, shared_jobs=str(shared_jobs)) as (base, pid):
        form = {"mode": "batched", "language": "en", "beam_size": beam, "temperature": "0"}
        started = time.perf_counter()
        jobs = []
        for clip in clips:
            with open(clip, "rb") as audio:
                response = requests.post(base + "/api/v1/transcriptions?async=1", data=form,
                                         files={"file": (os.path.basename(clip), audio)})
            response.raise_for_status()
            jobs.append(base + response.headers["Location"])
        texts = []
        for job in jobs:
            while requests.get(job).json()["state"] not in ("done", "failed", "cancelled"):
                time.sleep(POLL_SECONDS)
            texts.append(requests.get(job + "/transcript.json").json()["text"])
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "gpu_mib": worker_gpu_mib(pid, device),
                "host_mib": peak_host_mib(pid), "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny", help="checkpoint dimensions: "
                        "tiny, large-v3, turbo, or test-tiny (the tests' 64-wide model)")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--shared-jobs", type=int, default=8)
    parser.add_argument("--baseline", help=argparse.SUPPRESS)  # internal: checkpoint
    parser.add_argument("--clips", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        print(json.dumps(run_baseline(args.baseline, args.clips, args.device, args.beam)))
        return

    from whisper_service.synthetic import make_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = make_checkpoint(os.path.join(folder, "model.pt"), args.shape)
        clips = make_clips(args.files, folder)
        seconds = sum(os.path.getsize(c) - 44 for c in clips) / 2 / SAMPLE_RATE
        print(f"{args.shape} on {args.device}, {args.files} clips, {seconds:.0f} s of speech in "
              f"all, beam {args.beam}, temperature 0, the model's own token budget per window")
        print("| files | engine | wall s | x real time | vs baseline | peak memory | text differs from baseline |")
        print("|---|---|---|---|---|---|---|")
        out = subprocess.run(
            [sys.executable, __file__, "--baseline", checkpoint, "--clips", *clips,
             "--device", args.device, "--beam", str(args.beam)],
            check=True, capture_output=True, text=True,
        ).stdout
        rows = [("baseline: whisper.transcribe per file", json.loads(out.strip().splitlines()[-1]))]
        rows.append(("batched, HTTP API, each job alone",
                     run_http(checkpoint, clips, args.device, args.beam, shared_jobs=1)))
        rows.append((f"batched, HTTP API, up to {args.shared_jobs} jobs sharing batches",
                     run_http(checkpoint, clips, args.device, args.beam, args.shared_jobs)))
        base = rows[0][1]
        for label, row in rows:
            print(f"| {args.files} | {label} | {row['seconds']:.1f} | "
                  f"{format_speed(seconds / row['seconds'])} | "
                  f"{base['seconds'] / row['seconds']:.2f} | {format_memory(row)} | "
                  f"{differs(' '.join(base['texts']), ' '.join(row['texts']))} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
