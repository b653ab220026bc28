"""Decoding benchmark: stock whisper.decode, one window at a time (the baseline, measured
in the same run), against whisper_service.engines.decoding.decode_batch on the same windows.

    python bench/decode_windows.py                                   # CPU, tiny-dimension model
    python bench/decode_windows.py --shape large-v3 --device cuda --windows 64 --batch 32

The checkpoint is a seeded random one of the named shape (whisper_service.synthetic), so
no weights are downloaded; random weights rarely stop on their own, so both decoders get
the same per-window token budget (--sample-len). The windows are 30 s of generated speech
(espeak-ng when installed, else noise). Prints one table: per configuration, wall seconds,
times real time, the ratio to the baseline, peak memory, and whether the tokens agree.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import whisper
from whisper.audio import N_SAMPLES, SAMPLE_RATE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from whisper_service.engines.decoding import decode_batch  # noqa: E402
from whisper_service.synthetic import make_checkpoint  # noqa: E402

SENTENCES = [
    "The committee met on Tuesday to discuss the budget for next year.",
    "Rain is expected in the north, with sunny spells later in the afternoon.",
    "Please remember to bring your identification to the appointment.",
    "Whisper turns speech into text, and this benchmark measures how fast.",
]
CONFIGS = {
    "greedy": dict(beam_size=None),
    "beam 5, patience 1": dict(beam_size=5, patience=1.0),
    "beam 5, patience 2": dict(beam_size=5, patience=2.0),
}


def speech_windows(count: int, seed: int) -> np.ndarray:
    """`count` windows of 30 s: spoken sentences with pauses (or noise without espeak-ng)."""
    rng = np.random.default_rng(seed)
    pieces = []
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as folder:
            for i, sentence in enumerate(SENTENCES):
                path = os.path.join(folder, f"{i}.wav")
                subprocess.run(["espeak-ng", "-w", path, sentence], check=True)
                raw = np.frombuffer(Path(path).read_bytes()[44:], np.int16).astype(np.float32)
                # espeak speaks at 22.05 kHz; plain resampling is enough for a benchmark
                pieces.append(np.interp(np.arange(0, len(raw), 22050 / SAMPLE_RATE),
                                        np.arange(len(raw)), raw / 32768.0).astype(np.float32))
    audio = []
    total = count * N_SAMPLES
    while sum(map(len, audio)) < total:
        audio.append(pieces[rng.integers(len(pieces))] if pieces
                     else rng.normal(0, 0.1, SAMPLE_RATE * 3).astype(np.float32))
        audio.append(np.zeros(int(SAMPLE_RATE * rng.uniform(0.3, 1.5)), np.float32))
    return np.concatenate(audio)[:total].reshape(count, N_SAMPLES)


def peak_memory(device: torch.device) -> str:
    host_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB GPU, {host_mib:,.0f} MiB host"
    return f"{host_mib:,.0f} MiB host"


def timed(device: torch.device, work):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="test-tiny", help="checkpoint dimensions (synthetic.DIMENSIONS)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--windows", type=int, default=16, help="30 s windows to decode")
    parser.add_argument("--batch", type=int, default=16, help="windows per decode_batch call")
    parser.add_argument("--sample-len", type=int, default=32, help="token budget per window")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    fp16 = device.type == "cuda"
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = make_checkpoint(os.path.join(folder, "model.pt"), args.shape, args.seed)
        model = whisper.load_model(checkpoint, device=device)
    windows = speech_windows(args.windows, args.seed)
    mels = torch.stack([whisper.log_mel_spectrogram(w, model.dims.n_mels) for w in windows])
    mels = whisper.pad_or_trim(mels, whisper.audio.N_FRAMES).to(device)
    if fp16:
        mels = mels.half()
    audio_seconds = args.windows * N_SAMPLES / SAMPLE_RATE

    print(f"model {args.shape} on {device} ({'fp16' if fp16 else 'fp32'}), "
          f"{args.windows} windows = {audio_seconds:.0f} s audio, batch {args.batch}, "
          f"same token budget for both: {args.sample_len} per window, language en, timestamps on")
    print("| decoding | engine | wall s | x real time | vs baseline | peak memory | tokens equal |")
    print("|---|---|---|---|---|---|---|")
    for name, config in CONFIGS.items():
        options = whisper.DecodingOptions(language="en", fp16=fp16, sample_len=args.sample_len,
                                          **config)
        # warm up both paths once (kernels, caches), outside the timings
        whisper.decode(model, mels[0], options)
        decode_batch(model, mels[:1], options)
        stock_s, stock = timed(device, lambda: [whisper.decode(model, m, options) for m in mels])
        stock_memory = peak_memory(device)
        batched_s, batched = timed(device, lambda: [
            r for i in range(0, len(mels), args.batch)
            for r in decode_batch(model, mels[i:i + args.batch], options)
        ])
        batched_memory = peak_memory(device)
        equal = sum(a.tokens == b.tokens for a, b in zip(stock, batched))
        print(f"| {name} | whisper.decode per window | {stock_s:.2f} | {audio_seconds / stock_s:.0f} "
              f"| 1.00 | {stock_memory} | |")
        print(f"| {name} | decode_batch | {batched_s:.2f} | {audio_seconds / batched_s:.0f} "
              f"| {stock_s / batched_s:.2f} | {batched_memory} | {equal}/{len(mels)} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
