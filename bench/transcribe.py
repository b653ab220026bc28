"""End-to-end benchmark: stock whisper.transcribe (the baseline) against this service's
sequential and batched engines, through the Python API and through the HTTP API, on the same
checkpoint, audio and options, in one run.

    python bench/transcribe.py                                   # CPU: 3 minutes, tiny's shape
    python bench/transcribe.py --shape large-v3 --minutes 60 --slow-minutes 10 --device cuda
    python bench/transcribe.py --shape turbo --minutes 60 --slow-minutes 10 --device cuda

The audio is spoken sentences (espeak-ng) with pauses, plus a stretch of music-like tones
and of silence. The checkpoint is a seeded random one of the named shape, so nothing is
downloaded; random weights rarely stop on their own, so every engine decodes with the same
per-window token budget (the model's default, n_text_ctx // 2). Each Python-API run is its
own process, so its peak memory is its own; the HTTP run is `gunicorn -c gunicorn.conf.py`
with one worker, timed from the upload to the finished transcript.

Stock whisper on an hour of a large model takes longer than a benchmark should:
--slow-minutes runs the baseline and the sequential engine on the first minutes of the same
audio only, and "vs baseline" compares throughput (audio seconds per wall second), which is
what it compares anyway. --engines picks rows, to split a run into shorter ones.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Tuple

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
HTTP_SUFFIX = "-http"
PYTHON_ENGINES = ("baseline", "sequential", "batched")
ENGINES = (*PYTHON_ENGINES, "sequential" + HTTP_SUFFIX, "batched" + HTTP_SUFFIX)
SLOW_ENGINES = ("baseline", "sequential", "sequential" + HTTP_SUFFIX)  # --slow-minutes
LABELS = {"baseline": "baseline", "sequential": "sequential", "batched": "batched",
          "sequential-http": "sequential, HTTP API", "batched-http": "batched, HTTP API"}


def make_audio(minutes: float, folder: str, name: str, seed: int = 0) -> str:
    """Speech with pauses, then tones and silence, repeated: written as a WAV file."""
    rng = np.random.default_rng(seed)
    spoken = spoken_sentences(folder)
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
    return write_wav(audio, os.path.join(folder, name))


def spoken_sentences(folder: str) -> list:
    """SENTENCES spoken by espeak-ng, as 16 kHz float samples."""
    spoken = []
    for i, sentence in enumerate(SENTENCES):
        path = os.path.join(folder, f"s{i}.wav")
        subprocess.run(["espeak-ng", "-s", "160", "-w", path, sentence], check=True)
        raw = np.frombuffer(Path(path).read_bytes()[44:], np.int16).astype(np.float32) / 32768
        spoken.append(np.interp(np.arange(0, len(raw), 22050 / SAMPLE_RATE), np.arange(len(raw)), raw))
    return spoken


def write_wav(audio: np.ndarray, path: str) -> str:
    import wave

    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
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
    from whisper_service.engines import transcribe
    from whisper_service.models import LoadedModel
    from whisper_service.options import TranscribeOptions

    from whisper_service.engines.pipeline import StageTimes

    model = whisper.load_model(checkpoint, device=device)
    times = StageTimes(torch.device(device))
    with times.stage("ffmpeg"):  # before the clock starts, as in every row
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
        text = transcribe(loaded, audio, options, times=times).text
    if fp16:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    gpu = torch.cuda.max_memory_allocated() / 2**20 if fp16 else None
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "gpu_mib": gpu, "host_mib": host, "text": text,
            "stages": times.as_dict()}


@contextlib.contextmanager
def serving(checkpoint: str, device: str, log_path: str = os.devnull,
            **settings: str) -> Iterator[Tuple[str, int]]:
    """`gunicorn -c gunicorn.conf.py` with one worker on a free loopback port, until the
    model is loaded: yields (base URL, worker pid). Its log (JSON lines) goes to log_path."""
    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "WHISPER_MODEL": checkpoint, "WHISPER_DEVICES": device,
               "WHISPER_HOST": "127.0.0.1", "WHISPER_PORT": str(port), "WHISPER_DATA_DIR": data,
               "WHISPER_MAX_UPLOAD_MB": "4096", "WHISPER_MAX_DURATION": str(24 * 3600),
               "WHISPER_SYNC_TIMEOUT": "86400", "WHISPER_MAX_QUEUED": "1000",
               **{f"WHISPER_{name.upper()}": value for name, value in settings.items()}}
        log = open(log_path, "w")
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"the server stopped (exit {server.returncode}); its "
                                       f"log: {log_path}")
                try:
                    if requests.get(base + "/readyz", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.5)
            yield base, requests.get(base + "/healthz").json()["pid"]
        finally:
            server.terminate()
            server.wait()
            log.close()


def peak_host_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) / 1024


def run_http(mode: str, checkpoint: str, audio_path: str, device: str, beam: int,
             patience: float) -> dict:
    """One synchronous upload through the native API: upload to finished transcript."""
    import requests

    with tempfile.NamedTemporaryFile(suffix=".log") as log, \
            serving(checkpoint, device, log.name) as (base, pid):
        form = {"mode": mode, "language": "en", "beam_size": beam, "patience": patience,
                "temperature": "0"}
        started = time.perf_counter()
        with open(audio_path, "rb") as audio:
            response = requests.post(base + "/api/v1/transcriptions", data=form,
                                     files={"file": ("bench.wav", audio)})
        seconds = time.perf_counter() - started
        response.raise_for_status()
        return {"seconds": seconds, "gpu_mib": worker_gpu_mib(pid, device),
                "host_mib": peak_host_mib(pid), "text": response.json()["text"],
                "stages": server_stages(log.name, seconds)}


RUN_LOG = re.compile(r"batched run of \d+ file\(s\) in ([\d.]+) s: (.*)")
STAGE = re.compile(r"(\w+) ([\d.]+) s")


def server_stages(log_path: str, wall: float) -> dict:
    """The engine's stage times from the server's log line of the run, and as `http`
    whatever else the request took (upload, the server's ffmpeg, the job's bookkeeping,
    the answer): wall less the engine's run. Empty for the sequential engine."""
    for line in reversed(Path(log_path).read_text().splitlines()):
        try:
            message = json.loads(line).get("message", "")
        except (ValueError, AttributeError):
            continue
        found = RUN_LOG.search(message)
        if found:
            stages = {name: float(value) for name, value in STAGE.findall(found.group(2))}
            stages["http"] = wall - float(found.group(1))
            return stages
    return {}


def format_stages(stages: dict) -> str:
    """'ffmpeg 0.4, vad 1.2, ...' seconds per pipeline stage, as measured in the engine."""
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in stages.items()) or "-"


def worker_gpu_mib(pid: int, device: str):
    """GPU memory a server worker holds after a run (the caching allocator keeps its
    peak), from nvidia-smi; None on the CPU."""
    if device == "cpu":
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True)
    except OSError:
        return None
    for line in out.stdout.splitlines():
        found_pid, _, used = line.partition(",")
        if found_pid.strip() == str(pid):
            return float(used)
    return None


def format_memory(row: dict) -> str:
    memory = f"{row['host_mib']:,.0f} MiB host"
    if row["gpu_mib"] is not None:
        memory = f"{row['gpu_mib']:,.0f} MiB GPU, " + memory
    return memory


def format_speed(ratio: float) -> str:
    return f"{ratio:.1f}" if ratio < 10 else f"{ratio:,.0f}"


def differs(a: str, b: str) -> str:
    """How far two texts are apart, by words: 0 % is the same text."""
    ratio = difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()
    return f"{(1 - ratio) * 100:.0f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny", help="checkpoint dimensions: "
                        "tiny, large-v3, turbo, or test-tiny (the tests' 64-wide model)")
    parser.add_argument("--minutes", type=float, default=3, help="audio length")
    parser.add_argument("--slow-minutes", type=float, help="run the baseline and the "
                        "sequential engine on only this many first minutes (compared by "
                        "throughput); default: all of it")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated rows to run, from {','.join(ENGINES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--patience", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--run", choices=PYTHON_ENGINES, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_engine(args.run, args.checkpoint, args.audio, args.device,
                                    args.beam, args.patience[0])))
        return
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")

    from whisper_service.synthetic import make_checkpoint

    assert shutil.which("espeak-ng"), "the benchmark speaks its audio with espeak-ng"
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = make_checkpoint(os.path.join(folder, "model.pt"), args.shape)
        full = make_audio(args.minutes, folder, "bench.wav")
        slow_minutes = min(args.slow_minutes or args.minutes, args.minutes)
        short = full if slow_minutes == args.minutes else make_audio(slow_minutes, folder, "short.wav")
        print(f"{args.shape} on {args.device}, speech with pauses and {MUSIC_SECONDS} s tones + "
              f"{SILENCE_SECONDS} s silence per block, beam {args.beam}, temperature 0, every "
              "engine with the same token budget per window (n_text_ctx // 2)")
        print("| audio | patience | engine | wall s | x real time | vs baseline | peak memory | "
              "text differs from baseline | stage seconds |")
        print("|---|---|---|---|---|---|---|---|---|")
        for patience in args.patience:
            base = None
            for engine in engines:
                minutes = slow_minutes if engine in SLOW_ENGINES else args.minutes
                audio = short if engine in SLOW_ENGINES else full
                if engine.endswith(HTTP_SUFFIX):
                    row = run_http(engine[: -len(HTTP_SUFFIX)], checkpoint, audio, args.device,
                                   args.beam, patience)
                else:
                    out = subprocess.run(
                        [sys.executable, __file__, "--run", engine, "--checkpoint", checkpoint,
                         "--audio", audio, "--device", args.device, "--beam", str(args.beam),
                         "--patience", str(patience)],
                        check=True, capture_output=True, text=True,
                    ).stdout
                    row = json.loads(out.strip().splitlines()[-1])
                row["speed"] = minutes * 60 / row["seconds"]
                row["audio"] = audio
                if engine == "baseline":
                    base = row
                print_row(engine, minutes, patience, row, base)


def print_row(engine: str, minutes: float, patience: float, row: dict, base: dict) -> None:
    ratio = f"{row['speed'] / base['speed']:.2f}" if base else "-"
    same_audio = base is not None and base["audio"] == row["audio"]
    difference = differs(base["text"], row["text"]) if same_audio else "-"
    print(f"| {minutes:g} min | {patience:g} | {LABELS[engine]} | {row['seconds']:.1f} | "
          f"{format_speed(row['speed'])} | {ratio} | {format_memory(row)} | {difference} | "
          f"{format_stages(row.get('stages', {}))} |")
    sys.stdout.flush()  # a row at a time: a run cut short keeps what it measured


if __name__ == "__main__":
    main()
