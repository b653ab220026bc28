"""Live captions under load: N sessions at once, each streaming speech at real-time speed to
/api/live, and how long after the words are spoken their text shows and is committed.

    python bench/live.py                                          # CPU: bundled tiny.en, 1,2,4 sessions
    python bench/live.py --model synthetic:tiny                   # random weights of tiny's shape
    python bench/live.py --model synthetic:turbo --device cuda --sessions 1,10,25,50
    python bench/live.py --server http://127.0.0.1:8000 --sessions 1,4   # a server already running
    python bench/live.py --in-process                             # the live engine alone, no server
    python bench/live.py --in-process --sessions 2 --diarize 1    # one of them labels speakers

With --in-process the sessions are the live engine's own (whisper_service.live: gate,
scheduler, decoder, the bundled tiny.en loaded in this process), fed the same frames at the
same pace, with no HTTP, WebSocket or proxy between: what the decoding costs and how fast
it follows, apart from the server; CPU seconds are this process's. Otherwise, without
--server it starts `gunicorn -c gunicorn.conf.py` (one worker, nginx in front) with
the model, as bench/transcribe.py does, and waits for /readyz. Each session is a thread
running the `live` command's own streaming function (whisper_service.cli.live_client.stream),
not a subprocess: frames of 0.25 s, each sent when a microphone would have it (the audio at
p seconds into the stream exists p seconds after the session started). Sessions start
--stagger seconds apart in turn, as people do not all begin on the same frame.

The audio is espeak-ng sentences (bench/transcribe.py's) with a pause before each and
--tail seconds of silence at the end; where each one's speech begins and ends is read off
the samples (the first and last above 1 % of full scale), so latencies are measured from
when the words were spoken:

- first text: speech onset to the first `partial` or `committed` text of that utterance;
- first commit: speech onset to the utterance's first `committed`;
- final commit: the utterance's speech end to its last `committed`;
  (a committed text belongs to the utterance its `start` and `end` overlap; a partial to the
  utterance of the next committed text: the words it shows are settled by that commit;
  an utterance with no committed text is counted as missed);
- a session keeps up when its final commit comes within --keep-up seconds (2) of the end of
  its last speech; "real time" counts the sessions that did, and the most sessions
  sustained is the largest N where all did;
- server CPU per audio second: the CPU seconds (user + system) the server's worker used
  during the row, over the seconds of audio all its sessions streamed: above 1 on one
  core, the host cannot decode as fast as people speak (on a shared machine CPU seconds
  are steadier than wall times); a server started here only (with --server the worker's
  pid is unknown);
- behind: the sessions that got a `behind` event (the server saying their text lags the
  audio by 3 s or more) and the largest lag it said.

Medians and p95 (nearest rank) are over every utterance of every session of a row; "vs 1"
divides a row's p95 first text by the 1-session row's, measured in the same run.

--diarize K (with --in-process): the first K sessions of each row label speakers
(diarize=true), the others do not; each row is then measured twice, the sessions that
label and those that do not ("2: 1 diarizing", "2: 1 not"), so what labelling costs the
other sessions shows in the second line; the labelling sessions' `speaker` events are
counted below the table, with how long after each utterance's speech end they came, and
the seconds every label took are summed by the thread that ran it: the live decoding thread
(which every session's decodes wait for meanwhile) or another (the speaker labeler's).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from transcribe import SAMPLE_RATE, spoken_sentences, serving  # noqa: E402  (the end-to-end bench's helpers)
from whisper_service.cli import live_client  # noqa: E402

SPEECH_LEVEL = 0.01  # of full scale: quieter samples at the ends of espeak's output are silence
SYNTHETIC = "synthetic:"


@dataclass
class Utterance:
    onset: float  # seconds into the stream
    end: float


@dataclass
class Session:
    index: int
    delay: float  # seconds after the row's start that it began
    paced: Optional[live_client.Paced] = None
    events: List[Tuple[float, dict]] = field(default_factory=list)  # (clock, event)
    result: Optional[live_client.LiveResult] = None
    failure: Optional[str] = None


def make_audio(folder: str, sentences: int, pause: float, tail: float) -> Tuple[bytes, List[Utterance]]:
    """A pause and a sentence, `sentences` times, then `tail` of silence: PCM16 and where
    each sentence's speech lies."""
    spoken = spoken_sentences(folder)
    pieces, utterances, at = [], [], 0.0
    for index in range(sentences):
        words = spoken[index % len(spoken)]
        loud = np.flatnonzero(np.abs(words) > SPEECH_LEVEL)
        pieces += [np.zeros(int(pause * SAMPLE_RATE), np.float32), words.astype(np.float32)]
        at += pause
        utterances.append(Utterance(at + loud[0] / SAMPLE_RATE, at + (loud[-1] + 1) / SAMPLE_RATE))
        at += len(words) / SAMPLE_RATE
    pieces.append(np.zeros(int(tail * SAMPLE_RATE), np.float32))
    pcm = (np.clip(np.concatenate(pieces), -1, 1) * 32767).astype("<i2").tobytes()
    return pcm, utterances


def run_session(session: Session, server: str, pcm: bytes, start: float, options: dict) -> None:
    time.sleep(max(0.0, start + session.delay - time.monotonic()))
    session.paced = live_client.Paced(pcm)

    def record(event: dict) -> None:
        session.events.append((time.monotonic(), event))

    try:
        session.result = live_client.stream(server, session.paced, on_event=record, **options)
        if session.result.error is not None:
            session.failure = str(session.result.error)
    except live_client.LiveError as error:
        session.failure = str(error)


IN_PROCESS_EVENTS = {"Partial": "partial", "Committed": "committed", "Behind": "behind",
                     "SpeechStarted": "speech_started", "SpeechStopped": "speech_stopped",
                     "SpeakerFound": "speaker"}


def run_in_process(session: Session, scheduler, pcm: bytes, start: float, options: dict) -> None:
    """As run_session, on the live engine of this process (`scheduler`): the events as the
    native protocol names them, `done` once the stopped session has settled."""
    from dataclasses import asdict

    from whisper_service.live.audio import pcm16_samples
    from whisper_service.live.session import LiveOptions

    time.sleep(max(0.0, start + session.delay - time.monotonic()))
    session.paced = live_client.Paced(pcm)

    def record(event) -> None:
        kind = IN_PROCESS_EVENTS.get(type(event).__name__)
        if kind:
            session.events.append((time.monotonic(), {"type": kind, **asdict(event)}))

    diarize = session.index < options.get("diarize", 0)
    live = scheduler.open(LiveOptions(language=options["language"], diarize=diarize), record)
    try:
        for frame in session.paced:
            live.feed(pcm16_samples(frame))
        live.stop()
        while not live.settled:
            time.sleep(0.01)
        session.events.append((time.monotonic(), {"type": "done"}))
    finally:
        scheduler.close(live)


def run_row(server, sessions: int, pcm: bytes, stagger: float, options: dict) -> List[Session]:
    """server: a base URL, or a LiveScheduler of this process (--in-process)."""
    row = [Session(index, index * stagger) for index in range(sessions)]
    start = time.monotonic() + 0.5
    run = run_session if isinstance(server, str) else run_in_process
    threads = [threading.Thread(target=run, args=(s, server, pcm, start, options), daemon=True)
               for s in row]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return row


@dataclass
class Measured:
    first_text: List[float] = field(default_factory=list)
    first_commit: List[float] = field(default_factory=list)
    final_commit: List[float] = field(default_factory=list)
    kept_up: int = 0
    failed: List[str] = field(default_factory=list)
    missed: int = 0  # utterances that never got a committed word
    done_after_stop: List[float] = field(default_factory=list)
    behind: List[float] = field(default_factory=list)  # per session that fell behind: its worst lag
    cpu_per_audio: Optional[float] = None  # server CPU seconds per second of audio streamed


def utterance_of(event: dict, utterances: List[Utterance]) -> int:
    """The utterance a committed text belongs to: the one its stream times overlap most (the
    nearest when none does)."""
    start, end = float(event.get("start", 0)), float(event.get("end", 0))

    def closeness(u: Utterance) -> float:
        overlap = min(end, u.end) - max(start, u.onset)
        return overlap if overlap > 0 else -min(abs(start - u.end), abs(end - u.onset))

    return max(range(len(utterances)), key=lambda index: closeness(utterances[index]))


def measure(row: List[Session], utterances: List[Utterance], keep_up: float) -> Measured:
    """Committed texts are given to utterances by their stream times; a partial to the
    utterance of the next committed text after it (a partial is what follows everything
    committed, so the next commit settles the words it shows)."""
    measured = Measured()
    for session in row:
        if session.failure or session.paced is None or session.paced.started is None:
            measured.failed.append(session.failure or "did not start")
            continue
        texts: List[List[float]] = [[] for _ in utterances]
        commits: List[List[float]] = [[] for _ in utterances]
        waiting: List[float] = []  # partials not yet followed by a commit
        for at, event in session.events:
            kind, text = event.get("type"), str(event.get("text", "")).strip()
            if kind == "partial" and text:
                waiting.append(at)
            elif kind == "committed" and text:
                index = utterance_of(event, utterances)
                texts[index] += waiting + [at]
                commits[index].append(at)
                waiting = []
        for index, u in enumerate(utterances):
            onset, end = session.paced.wall_time(u.onset), session.paced.wall_time(u.end)
            if not commits[index]:
                measured.missed += 1
                continue
            measured.first_text.append(min(texts[index]) - onset)
            measured.first_commit.append(min(commits[index]) - onset)
            measured.final_commit.append(max(commits[index]) - end)
        last = commits[-1]
        if last and max(last) - session.paced.wall_time(utterances[-1].end) <= keep_up:
            measured.kept_up += 1
        lags = [float(e.get("seconds", 0)) for _, e in session.events if e.get("type") == "behind"]
        if any(lags):
            measured.behind.append(max(lags))
        done = [at for at, e in session.events if e.get("type") == "done"]
        if done:  # the stop goes out right after the last frame, when the audio ends
            measured.done_after_stop.append(done[0] - session.paced.wall_time(total_seconds(session)))
    return measured


def speaker_labels(row: List[Session], utterances: List[Utterance]) -> Tuple[int, List[float]]:
    """The `speaker` events of these sessions, and for each how long after the speech end
    of the utterance it labels it came (the sentences in order: the n-th label, the n-th)."""
    told, after = 0, []
    for session in row:
        if session.paced is None or session.paced.started is None:
            continue
        found = [at for at, event in session.events if event.get("type") == "speaker"]
        told += len(found)
        for at, u in zip(found, utterances):
            after.append(at - session.paced.wall_time(u.end))
    return told, after


DECODING_THREAD = "live-scheduler"  # the name of the live scheduler's thread


def time_labels() -> dict:
    """From now on, every speaker label of this process timed (seconds from its call to its
    answer), by where it ran: {"the decoding thread": [...], "other threads": [...]}."""
    from whisper_service.speakers.online import OnlineSpeakers

    spent: dict = {"the decoding thread": [], "other threads": []}
    label = OnlineSpeakers.label

    def timed(self, audio):
        began = time.perf_counter()
        try:
            return label(self, audio)
        finally:
            on_decoder = threading.current_thread().name == DECODING_THREAD
            spent["the decoding thread" if on_decoder else "other threads"].append(
                time.perf_counter() - began)

    OnlineSpeakers.label = timed
    return spent


def total_seconds(session: Session) -> float:
    return len(session.paced.pcm) / (SAMPLE_RATE * 2)


def median_p95(values: List[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return f"{statistics.median(ordered):.2f} / {p95:.2f}"


def p95(values: List[float]) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def this_process() -> float:
    return time.process_time()


@contextlib.contextmanager
def a_server(args, folder: str):
    if args.in_process:
        from whisper_service.checkpoints import BUNDLED
        from whisper_service.speakers.encoder import load_encoder
        from whisper_service.config import Settings
        from whisper_service.live.decoder import WhisperDecoder
        from whisper_service.live.scheduler import LiveScheduler
        from whisper_service.models import ModelRegistry

        registry = ModelRegistry(Settings(model=BUNDLED, device="cpu"))
        registry.get(BUNDLED).windows  # its CTranslate2 twin loaded now, not in a measured row
        WhisperDecoder.warm_up()
        if args.diarize:
            load_encoder("cpu")  # the speaker encoder loaded now, not in a measured row
        scheduler = LiveScheduler(WhisperDecoder(registry), max(
            int(n) for n in args.sessions.split(",") if n.strip()))
        try:
            yield scheduler, "this process"
        finally:
            scheduler.stop()
        return
    if args.server:
        yield args.server, None
        return
    model = args.model or "bundled"
    if model.startswith(SYNTHETIC):
        from whisper_service.synthetic import make_checkpoint

        model = make_checkpoint(os.path.join(folder, f"{model[len(SYNTHETIC):]}.pt"),
                                model[len(SYNTHETIC):])
    log = os.path.join(folder, "server.log")
    print(f"starting the server ({model} on {args.device}); its log: {log}", file=sys.stderr)
    # every session of the largest row at once (gunicorn's threads follow: one each)
    sessions = args.max_sessions or max(int(n) for n in args.sessions.split(",") if n.strip())
    with serving(model, args.device, log, live_sessions=str(sessions), proxy=args.proxy) as (base, pid):
        yield base, pid


def cpu_seconds(pid) -> Optional[float]:
    """User + system CPU seconds of a process so far (None: unknown; "this process")."""
    if pid is None:
        return None
    if pid == "this process":
        return this_process()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,2,4", help="comma-separated session counts")
    parser.add_argument("--server", help="a running server's address (default: start one)")
    parser.add_argument("--in-process", action="store_true",
                        help="no server: the live engine of this process, bundled tiny.en on the CPU")
    parser.add_argument("--model",
                        help="what the started server loads: bundled (tiny.en, the default), a "
                             "model name or checkpoint, or synthetic:SHAPE for seeded random "
                             "weights; with --server, the model the sessions ask for")
    parser.add_argument("--device", default="cpu", help="the started server's WHISPER_DEVICES")
    parser.add_argument("--max-sessions", type=int,
                        help="WHISPER_LIVE_SESSIONS of the started server (default: the largest "
                             "--sessions)")
    parser.add_argument("--proxy", default="nginx", choices=("nginx", "off"),
                        help="the started server's WHISPER_PROXY (off: straight from gunicorn)")
    parser.add_argument("--api-key", default=os.environ.get(live_client.API_KEY_VARIABLE))
    parser.add_argument("--language", default="en")
    parser.add_argument("--sentences", type=int, default=3, help="utterances per session")
    parser.add_argument("--pause", type=float, default=1.5, help="seconds of silence before each")
    parser.add_argument("--tail", type=float, default=2.5, help="seconds of silence at the end")
    parser.add_argument("--stagger", type=float, default=0.1, help="seconds between session starts")
    parser.add_argument("--keep-up", type=float, default=2.0,
                        help="seconds after the last speech within which the final commit must come")
    parser.add_argument("--diarize", type=int, default=0,
                        help="with --in-process: this many sessions of each row label speakers")
    args = parser.parse_args()
    if args.diarize and not args.in_process:
        parser.error("--diarize needs --in-process (the live client sends no diarize option)")
    counts = [int(n) for n in args.sessions.split(",") if n.strip()]

    with tempfile.TemporaryDirectory() as folder:
        pcm, utterances = make_audio(folder, args.sentences, args.pause, args.tail)
        seconds = len(pcm) / (SAMPLE_RATE * 2)
        options = {"api_key": args.api_key, "language": args.language, "done_timeout": 900,
                   "model": args.model if args.server else None}  # a started server's default
        labelling = {"diarize": args.diarize} if args.diarize else {}
        with a_server(args, folder) as (server, pid):
            # warm-up: a fresh server's first decodes compile and load (numba, onnxruntime)
            warm = int((utterances[0].end + 1.0) * SAMPLE_RATE) * 2
            if isinstance(server, str):
                live_client.stream(server, live_client.Paced(pcm[:warm]), **options)
            else:
                run_in_process(Session(-1, 0.0), server, pcm[:warm], time.monotonic(),
                               {**options, "diarize": 1 if args.diarize else 0})
            rows, labels = [], []
            label_cpu = time_labels() if args.diarize else {}
            for count in counts:
                started, cpu = time.monotonic(), cpu_seconds(pid)
                row = run_row(server, count, pcm, args.stagger, {**options, **labelling})
                wall = time.monotonic() - started
                cpu_per_audio = (None if cpu is None
                                 else (cpu_seconds(pid) - cpu) / (count * seconds))
                split = min(args.diarize, count)
                groups = ([(f"{count}: {split} diarizing", row[:split]),
                           (f"{count}: {count - split} not", row[split:])]
                          if args.diarize else [(str(count), row)])
                for name, sessions in groups:
                    if not sessions:
                        continue
                    measured = measure(sessions, utterances, args.keep_up)
                    measured.cpu_per_audio = cpu_per_audio
                    rows.append((name, len(sessions), measured, wall))
                labels.append((count, speaker_labels(row[:split], utterances)))
                print(f"{count} sessions: {wall:.1f} s", file=sys.stderr)

    print(f"\n{len(utterances)} utterances in {seconds:.1f} s of audio per session; "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| sessions | first text s, median / p95 | first commit s, median / p95 "
          "| final commit after speech end s, median / p95 | p95 first text vs 1 "
          "| done after stop s, median | server CPU s per audio s | behind (worst s) "
          "| real time | utterances missed | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = p95(rows[0][2].first_text) if rows and rows[0][0] == "1" else None
    sustained = 0
    for name, count, m, _wall in rows:
        worst = p95(m.first_text)
        ratio = f"{worst / base:.2f}" if base and worst is not None else "-"
        done = f"{statistics.median(m.done_after_stop):.2f}" if m.done_after_stop else "-"
        cpu = f"{m.cpu_per_audio:.2f}" if m.cpu_per_audio is not None else "-"
        behind = f"{len(m.behind)} of {count} ({max(m.behind):.1f})" if m.behind else f"0 of {count}"
        print(f"| {name} | {median_p95(m.first_text)} | {median_p95(m.first_commit)} "
              f"| {median_p95(m.final_commit)} | {ratio} | {done} | {cpu} | {behind} "
              f"| {m.kept_up} of {count} | {m.missed} | {len(m.failed)} |")
        if m.kept_up == count and not m.failed and name.isdigit():
            sustained = max(sustained, count)
    if not args.diarize:
        print(f"\nMost sessions sustained in real time (final commit within {args.keep_up:g} s "
              f"of the last speech, every session): {sustained}")
    for count, (told, after) in labels if args.diarize else ():
        print(f"\n{count} sessions: {told} speaker labels for {min(args.diarize, count) * len(utterances)} "
              f"utterances, after the speech end s, median / p95: {median_p95(after)}")
    for where, spent in label_cpu.items():
        print(f"speaker labels on {where}: {len(spent)}, {sum(spent):.2f} s"
              + (f" (longest {max(spent):.2f} s)" if spent else ""))
    for name, _count, m, _wall in rows:
        for failure in sorted(set(m.failed)):
            print(f"- {name} sessions: {m.failed.count(failure)} failed: {failure}")


if __name__ == "__main__":
    main()
