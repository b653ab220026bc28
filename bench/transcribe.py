"""End-to-end benchmark: stock whisper.transcribe (the baseline) against this service's
sequential and batched engines, through the Python API and through the HTTP API, on the same
checkpoint, audio and options, in one run.

    python bench/transcribe.py                                            # CPU: 3 minutes, tiny's shape
    python bench/transcribe.py --shape large-v3 --minutes 60 --device cuda   # a GPU host
    python bench/transcribe.py --shape turbo --minutes 60 --device cuda

The audio is spoken sentences (espeak-ng) with pauses, plus a stretch of music-like tones
and of silence. The checkpoint is a seeded random one of the named shape, so nothing is
downloaded; random weights rarely stop on their own, so every engine decodes with the same
per-window token budget (the model's default, n_text_ctx // 2). Each Python-API run is its
own process, so its peak memory is its own; the HTTP run is `gunicorn -c gunicorn.conf.py`
with one worker, timed from the upload to the finished transcript.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_RATE = 16000
SENTENCES = [
    "The committee met on Tuesday to discuss the budget for next year.",
    "Rain is expected in the north, with sunny spells later in the afternoon.",
    "Please remember to bring your identification to the appointment.",
    "The library will be closed on Monday for the public holiday.",
    "Whisper turns speech into text, and this benchmark measures how fast.",
]
MUSIC_SECONDS = 20
SILENCE_SECONDS = 15
ENGINES = ("baseline", "sequential", "batched")


def make_audio(minutes: float, folder: str, seed: int = 0) -> str:
    """Speech with pauses, then tones and silence, repeated: written as a WAV file."""
    rng = np.random.default_rng(seed)
    spoken = []
    for i, sentence in enumerate(SENTENCES):
        path = os.path.join(folder, f"s{i}.wav")
        subprocess.run(["espeak-ng", "-s", "160", "-w", path, sentence], check=True)
        raw = np.frombuffer(Path(path).read_bytes()[44:], np.int16).astype(np.float32) / 32768
        spoken.append(np.interp(np.arange(0, len(raw), 22050 / SAMPLE_RATE), np.arange(len(raw)), raw))
    t = np.arange(MUSIC_SECONDS * SAMPLE_RATE) / SAMPLE_RATE
    music = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (220, 277, 330)) * (1 + np.sin(t))
    pieces, total = [], 0
    while total < minutes * 60 * SAMPLE_RATE:
        for _ in range(20):
            pieces += [spoken[rng.integers(len(spoken))],
                       np.zeros(int(SAMPLE_RATE * rng.uniform(0.4, 2.0)))]
        pieces += [music, np.zeros(SILENCE_SECONDS * SAMPLE_RATE)]
        total = sum(map(len, pieces))
    audio = np.concatenate(pieces)[: int(minutes * 60 * SAMPLE_RATE)]
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    path = os.path.join(folder, "bench.wav")
    import wave

    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return path


def run_engine(engine: str, checkpoint: str, audio_path: str, device: str, beam: int,
               patience: float) -> dict:
    """One engine in this process: wall seconds, peak memory and the text."""
    import torch
    import whisper

    from whisper_service.audio import DecodeLimits, decode_file
    from whisper_service.config import bundled_ffmpeg
    from whisper_service.engine import transcribe
    from whisper_service.models import LoadedModel
    from whisper_service.options import TranscribeOptions

    model = whisper.load_model(checkpoint, device=device)
    audio = decode_file(audio_path, DecodeLimits(24 * 3600, 3600, bundled_ffmpeg()))
    fp16 = device.startswith("cuda")
    if fp16:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if engine == "baseline":
        text = whisper.transcribe(model, audio, language="en", beam_size=beam, patience=patience,
                                  temperature=0.0, fp16=fp16)["text"]
    else:
        loaded = LoadedModel("bench", model, torch.device(device), fp16, 0.0)
        options = TranscribeOptions(mode=engine, language="en", beam_size=beam,
                                    patience=patience, temperature=(0.0,))
        text = transcribe(loaded, audio, options).text
    if fp16:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    gpu = torch.cuda.max_memory_allocated() / 2**20 if fp16 else None
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "gpu_mib": gpu, "host_mib": host, "text": text}


def run_http(checkpoint: str, audio_path: str, device: str, beam: int, patience: float) -> dict:
    """gunicorn -c gunicorn.conf.py, one worker: upload to finished transcript."""
    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "WHISPER_MODEL": checkpoint, "WHISPER_DEVICES": device,
               "WHISPER_HOST": "127.0.0.1", "WHISPER_PORT": str(port), "WHISPER_DATA_DIR": data,
               "WHISPER_MAX_UPLOAD_MB": "4096", "WHISPER_MAX_DURATION": str(24 * 3600),
               "WHISPER_SYNC_TIMEOUT": "86400"}
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if requests.get(base + "/readyz", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.5)
            pid = requests.get(base + "/healthz").json()["pid"]
            form = {"mode": "batched", "language": "en", "beam_size": beam, "patience": patience,
                    "temperature": "0"}
            started = time.perf_counter()
            with open(audio_path, "rb") as audio:
                response = requests.post(base + "/api/v1/transcriptions", data=form,
                                         files={"file": ("bench.wav", audio)})
            seconds = time.perf_counter() - started
            response.raise_for_status()
            status = Path(f"/proc/{pid}/status").read_text()
            host = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) / 1024
            return {"seconds": seconds, "gpu_mib": None, "host_mib": host,
                    "text": response.json()["text"]}
        finally:
            server.terminate()
            server.wait()


def _times(ratio: float) -> str:
    return f"{ratio:.1f}" if ratio < 10 else f"{ratio:,.0f}"


def differs(a: str, b: str) -> str:
    """How far two texts are apart, by words: 0 % is the same text."""
    ratio = difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()
    return f"{(1 - ratio) * 100:.0f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny", help="checkpoint dimensions: "
                        "tiny, large-v3, turbo, or test-tiny (the tests' 64-wide model)")
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--patience", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--run", choices=ENGINES, help=argparse.SUPPRESS)  # one engine, internal
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_engine(args.run, args.checkpoint, args.audio, args.device,
                                    args.beam, args.patience[0])))
        return

    from whisper_service.synthetic import make_checkpoint

    assert shutil.which("espeak-ng"), "the benchmark speaks its audio with espeak-ng"
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = make_checkpoint(os.path.join(folder, "model.pt"), args.shape)
        audio = make_audio(args.minutes, folder)
        seconds_of_audio = args.minutes * 60
        print(f"{args.shape} on {args.device}, {args.minutes:g} min of audio (speech with pauses, "
              f"{MUSIC_SECONDS} s tones and {SILENCE_SECONDS} s silence per block), beam "
              f"{args.beam}, temperature 0, every engine with the same token budget per window "
              "(n_text_ctx // 2)")
        print("| audio | patience | engine | wall s | x real time | vs baseline | peak memory | text differs from baseline |")
        print("|---|---|---|---|---|---|---|---|")
        for patience in args.patience:
            rows = {}
            for engine in ENGINES:
                out = subprocess.run(
                    [sys.executable, __file__, "--run", engine, "--checkpoint", checkpoint,
                     "--audio", audio, "--device", args.device, "--beam", str(args.beam),
                     "--patience", str(patience)],
                    check=True, capture_output=True, text=True,
                ).stdout
                rows[engine] = json.loads(out.strip().splitlines()[-1])
            rows["batched, HTTP API"] = run_http(checkpoint, audio, args.device, args.beam, patience)
            base = rows["baseline"]
            for engine, row in rows.items():
                memory = f"{row['host_mib']:,.0f} MiB host"
                if row["gpu_mib"] is not None:
                    memory = f"{row['gpu_mib']:,.0f} MiB GPU, " + memory
                print(f"| {args.minutes:g} min | {patience:g} | {engine} | {row['seconds']:.1f} | "
                      f"{_times(seconds_of_audio / row['seconds'])} | {base['seconds'] / row['seconds']:.2f} | "
                      f"{memory} | {differs(base['text'], row['text'])} |")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
