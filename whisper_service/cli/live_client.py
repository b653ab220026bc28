"""The live client: audio from a microphone or a media file to `/api/live`, text back.

    python -m whisper_service live --server http://127.0.0.1:8000                 # microphone
    python -m whisper_service live --server http://127.0.0.1:8000 --file talk.mp3 -o talk.txt

It speaks the native protocol of the README ("Live captions"): binary frames of 16 kHz mono
PCM16, 0.25 s each, `{"type": "stop"}` at the end; JSON events back. Committed text goes to
stdout as it comes, one line per utterance; the tentative partial is drawn in place on
stderr when stderr is a terminal. Ctrl-C (or the end of --file) stops the session: the
server commits the rest and saves the job, whose address is printed on stderr.

The audio comes from an ffmpeg child process writing s16le to a pipe: the ffmpeg bundled
with imageio-ffmpeg (or WHISPER_FFMPEG), as the server decodes uploads. The microphone is
PulseAudio's default source, or ALSA's when PulseAudio is not there (the bundled ffmpeg has
no ALSA input; an ffmpeg on PATH is tried for it).

`stream()` is the part without a terminal: a bench or another program gives it frames and a
callback for the events, and gets the finished session back. It never imports Flask (nor
torch): the client runs where only the client is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BYTES_PER_SAMPLE = 2
FRAME_SECONDS = 0.25  # what one binary frame carries (the README: 0.1 to 0.5 s is best)
FRAME_BYTES = int(SAMPLE_RATE * FRAME_SECONDS) * BYTES_PER_SAMPLE
LIVE_PATH = "/api/live"
TRANSCRIPT_PATH = "/api/v1/jobs/{job}/transcript.{fmt}"  # web/api/native.py's TRANSCRIPT_RULE
DOWNLOAD_FORMATS = ("txt", "srt", "vtt", "tsv", "json")  # whisper_service.writers.FORMATS
TASKS = ("transcribe", "translate")
API_KEY_VARIABLE = "WHISPER_API_KEY"

CONNECT_TIMEOUT = 10.0  # seconds to reach the server's port
DONE_TIMEOUT = 120.0  # seconds to wait for `done` after `stop` (the rest is decoded first)
FETCH_TIMEOUT = 30.0  # seconds for a download, Retry-After waits included
MICROPHONE_START_SECONDS = 5.0  # the first audio of a microphone comes within this

# the error codes after which the session goes on (the README: the frame, or audio the
# server could not keep up with, is dropped)
RECOVERABLE_ERRORS = frozenset({"bad_frame", "audio_dropped"})
# close codes the README names, said in words when no `error` event came before them
CLOSE_CODES = {
    1001: "the server is going away (restarting or shutting down)",
    1008: "the server refused the session (policy violation)",
    1009: "a frame was too large for the server",
    1011: "the server failed (internal error)",
    1013: "the server is busy: too many live sessions, try again later",
}

EXIT_OK = 0
EXIT_FAILED = 1  # the server refused or ended the session with an error, or could not be reached
EXIT_USAGE = 2  # a bad option: nothing was tried
EXIT_INTERRUPTED = 130  # a second Ctrl-C: left without waiting for the job


class LiveError(Exception):
    """What went wrong, in one line a person reads; `code` is the server's error code, if any."""

    def __init__(self, message: str, code: Optional[str] = None):
        super().__init__(message)
        self.code = code


class UsageError(LiveError):
    """A bad option, found before anything started."""


# --- where to connect -----------------------------------------------------------------------


def server_base(server: str) -> str:
    """The server's HTTP base address, without a trailing slash: 'host:8000' and
    'ws://host:8000' both become 'http://host:8000'; a path (a proxy's prefix) is kept."""
    text = server.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https"):
        raise UsageError(f"--server takes an http(s):// or ws(s):// address; got {server!r}")
    if not parts.hostname:
        raise UsageError(f"--server has no host: {server!r}")
    try:
        parts.port  # a port that is not a number raises here
    except ValueError:
        raise UsageError(f"--server has a bad port: {server!r}") from None
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def live_url(server: str, model: Optional[str] = None, language: Optional[str] = None,
             task: Optional[str] = None) -> str:
    """The WebSocket address of a session: ws(s)://.../api/live?model=&language=&task=
    (only the options given: the others are the server's defaults)."""
    base = server_base(server)
    query = urllib.parse.urlencode(
        [(name, value) for name, value in (("model", model), ("language", language), ("task", task))
         if value])
    scheme, rest = base.split("://", 1)
    url = {"http": "ws", "https": "wss"}[scheme] + "://" + rest + LIVE_PATH
    return url + ("?" + query if query else "")


def auth_headers(api_key: Optional[str]) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# --- audio -----------------------------------------------------------------------------------


def ffmpeg_binary() -> str:
    """The ffmpeg the server uses: WHISPER_FFMPEG, or the one bundled with imageio-ffmpeg."""
    configured = os.environ.get("WHISPER_FFMPEG", "")
    if configured:
        return configured
    import imageio_ffmpeg  # as whisper_service.config.bundled_ffmpeg (which imports torch's world)

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_command(ffmpeg: str, source: Sequence[str]) -> List[str]:
    """ffmpeg reading `source` (input arguments, -i included), writing 16 kHz mono s16le to stdout."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", *source,
            "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"]


def file_source(path: str, realtime: bool = True) -> List[str]:
    """A media file as ffmpeg input, at real-time speed unless `realtime` is False."""
    return (["-re"] if realtime else []) + ["-i", "file:" + os.path.abspath(path)]


def device_sources(device: Optional[str]) -> List[Tuple[str, List[str]]]:
    """(input format, ffmpeg input arguments) to try for a microphone, in order."""
    name = device or "default"
    return [(fmt, ["-f", fmt, "-i", name]) for fmt in ("pulse", "alsa")]


class FfmpegAudio:
    """An ffmpeg child process as an iterator of FRAME_BYTES frames of PCM (the last may be
    shorter). Its stderr is kept (the last lines) to say why it failed."""

    def __init__(self, command: List[str], what: str):
        self.what = what
        self.command = command
        self._stderr: deque = deque(maxlen=20)
        log.info("starting %s", " ".join(command))
        # its own session: Ctrl-C at the terminal is ours to handle (stop, then wait for
        # `done`), not a signal that kills ffmpeg under us mid-frame
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)
        self._reader = threading.Thread(target=self._read_stderr, name="ffmpeg-stderr", daemon=True)
        self._reader.start()
        self._pending = b""  # a frame read ahead (the first one, read by start())

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._stderr.append(text)
                log.info("ffmpeg: %s", text)

    def error_line(self) -> str:
        self._reader.join(timeout=1)
        return self._stderr[-1] if self._stderr else f"ffmpeg exited with status {self.process.returncode}"

    def start(self) -> "FfmpegAudio":
        """Read the first frame now, so that an input ffmpeg cannot open fails here, before a
        session is opened for it."""
        self._pending = self.process.stdout.read(FRAME_BYTES)
        if not self._pending:
            self.process.wait()
            if self.process.returncode != 0:
                raise LiveError(f"{self.what}: {self.error_line()}")
            raise LiveError(f"{self.what}: no audio in it")
        return self

    def __iter__(self) -> Iterator[bytes]:
        if self._pending:
            frame, self._pending = self._pending, b""
            yield frame
        while True:
            frame = self.process.stdout.read(FRAME_BYTES)
            if not frame:
                break
            yield frame
        code = self.process.wait()
        if code not in (0, -signal.SIGTERM, 255):  # 255: ffmpeg stopped by a signal it caught
            raise LiveError(f"{self.what}: {self.error_line()}")

    def close(self) -> None:
        """Stop ffmpeg (the microphone is released); the frames end."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def open_file(path: str, realtime: bool = True, ffmpeg: Optional[str] = None) -> FfmpegAudio:
    if not os.path.isfile(path):
        raise UsageError(f"--file {path!r}: no such file")
    return FfmpegAudio(ffmpeg_command(ffmpeg or ffmpeg_binary(), file_source(path, realtime)),
                       os.path.basename(path)).start()


def open_microphone(device: Optional[str] = None, ffmpeg: Optional[str] = None) -> FfmpegAudio:
    """PulseAudio's source `device` (default: the default one), else ALSA's; the bundled
    ffmpeg has no ALSA input, so an ffmpeg on PATH is tried for it too."""
    binaries = [ffmpeg or ffmpeg_binary()]
    system = shutil.which("ffmpeg")
    if system and os.path.realpath(system) != os.path.realpath(binaries[0]):
        binaries.append(system)
    failures = []
    name = device or "default"
    for fmt, source in device_sources(device):
        for binary in binaries:
            audio = FfmpegAudio(ffmpeg_command(binary, source), f"{fmt} input {name!r}")
            try:
                return _started_within(audio, MICROPHONE_START_SECONDS)
            except LiveError as error:
                log.info("%s", error)
                failures.append(f"{fmt}: {error.args[0].split(': ', 1)[-1]}")
                if "Unknown input format" not in str(error):
                    break  # this ffmpeg has the format: another one would fail the same way
    raise LiveError(f"cannot open the microphone {name!r} ({'; '.join(failures)})")


def _started_within(audio: FfmpegAudio, seconds: float) -> FfmpegAudio:
    timer = threading.Timer(seconds, audio.close)  # a device that never delivers a sample
    timer.start()
    try:
        return audio.start()
    except LiveError:
        audio.close()
        raise
    finally:
        timer.cancel()


def decode_file(path: str, ffmpeg: Optional[str] = None) -> bytes:
    """A whole media file as 16 kHz mono PCM16, as fast as ffmpeg goes (for benches and tests)."""
    done = subprocess.run(ffmpeg_command(ffmpeg or ffmpeg_binary(), file_source(path, realtime=False)),
                          stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise LiveError(f"{os.path.basename(path)}: {lines[-1] if lines else 'no audio'}")
    return done.stdout


class Paced:
    """PCM cut into frames and given out at real-time speed, as a microphone would: frame k
    (audio up to (k + 1) * FRAME_SECONDS) comes at `started + (k + 1) * FRAME_SECONDS`, so
    the audio at `p` seconds into the stream exists from `started + p` on. `started` is set
    when the first frame is asked for."""

    def __init__(self, pcm: bytes, frame_bytes: int = FRAME_BYTES,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.pcm = pcm
        self.frame_bytes = frame_bytes
        self.clock = clock
        self.sleep = sleep
        self.started: Optional[float] = None

    def wall_time(self, seconds: float) -> float:
        """When the audio `seconds` into the stream was spoken, on the clock."""
        return self.started + seconds

    def __iter__(self) -> Iterator[bytes]:
        self.started = self.clock()
        for index, start in enumerate(range(0, len(self.pcm), self.frame_bytes)):
            frame = self.pcm[start:start + self.frame_bytes]
            due = self.started + (index * self.frame_bytes + len(frame)) / (SAMPLE_RATE * BYTES_PER_SAMPLE)
            wait = due - self.clock()
            if wait > 0:
                self.sleep(wait)
            yield frame


# --- the session -----------------------------------------------------------------------------


@dataclass
class LiveResult:
    """A finished session: the job the server saved, its text, and why it ended early if it did."""

    session: Optional[str] = None
    job: Optional[str] = None
    url: Optional[str] = None  # the job page, absolute
    text: str = ""  # the whole transcript, as `done` gives it
    committed: List[str] = field(default_factory=list)  # each `committed` text, in order
    error: Optional[LiveError] = None  # set when the server ended the session with an error
    ready: dict = field(default_factory=dict)  # the `ready` event


def _client_class():
    """simple_websocket's client, reading first what came in with the handshake's answer:
    its reading thread waits for more data before it looks at frames already received, so
    a server that refuses a session at once (its error and close right behind the 101)
    and closes the connection left them unread, and the session seemed closed without a
    word (1005)."""
    import simple_websocket

    class Client(simple_websocket.Client):
        def _thread(self):
            self.connected = self._handle_events()
            if self.connected:
                super()._thread()
            else:  # the close came with the answer: as the reading thread ends on one
                self.event.set()
                self.sock.close()

    return Client


def connect(url: str, api_key: Optional[str] = None, timeout: float = CONNECT_TIMEOUT):
    """An open WebSocket to `url`, or LiveError saying in words why not."""
    import simple_websocket

    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    where = f"{parts.hostname}:{port}"
    # simple_websocket connects without a timeout: reach the port first, with one, so that
    # a server that is down or a host that does not answer is said in seconds
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise LiveError(f"cannot reach the server at {where}: {reason}") from None
    try:
        return _client_class().connect(url, headers=auth_headers(api_key))
    except simple_websocket.ConnectionError as error:
        status = error.status_code
        if status in (401, 403):
            raise LiveError(f"the server refused the API key (HTTP {status}): "
                            f"give one with --api-key or {API_KEY_VARIABLE}", "unauthorized") from None
        if status == 404:
            raise LiveError(f"the server at {where} has no live captions ({LIVE_PATH}: HTTP 404)") from None
        if status in (429, 503):
            raise LiveError(f"the server is busy (HTTP {status}); try again later",
                            "too_many_sessions") from None
        raise LiveError(f"the server at {where} refused the WebSocket"
                        + (f" (HTTP {status})" if status else "")) from None
    except OSError as error:
        raise LiveError(f"cannot open a WebSocket to {where}: {error.strerror or error}") from None


def stream(server: str, audio: Iterable[bytes], *, api_key: Optional[str] = None,
           model: Optional[str] = None, language: Optional[str] = None, task: Optional[str] = None,
           on_event: Optional[Callable[[dict], None]] = None,
           stop: Optional[threading.Event] = None, done_timeout: float = DONE_TIMEOUT) -> LiveResult:
    """One live session: every frame of `audio` sent as it comes (a thread of its own), then
    `{"type": "stop"}`; every event handed to `on_event` in this thread as it arrives, until
    `done`. Setting `stop` ends the audio early (after the frame being read). Raises
    LiveError when the server cannot be reached or refuses the session; an error that ends
    a session the server still saved comes back in the result's `error`."""
    base = server_base(server)
    ws = connect(live_url(base, model, language, task), api_key)
    stop = stop or threading.Event()
    result = LiveResult()
    sender_failed: List[BaseException] = []
    stopped_at: List[float] = []
    ready = threading.Event()

    def send_all() -> None:
        # audio only once the server said `ready`: a session it refuses at once (busy, a bad
        # option) gets none, and its error is read before the connection closes, rather than
        # lost to the reset that audio arriving after the close would bring
        while not ready.wait(0.1):
            if stop.is_set() or not ws.connected:
                stopped_at.append(time.monotonic())
                return
        try:
            for frame in audio:
                if stop.is_set() or not ws.connected:
                    break
                ws.send(bytes(frame))
        except BaseException as error:  # ffmpeg failed, or the connection went: said below
            sender_failed.append(error)
        try:
            if ws.connected:
                ws.send(json.dumps({"type": "stop"}))
                log.info("sent stop")
        except Exception as error:  # closed in between: the receiver says why
            log.info("stop not sent: %s", error)
        stopped_at.append(time.monotonic())

    sender = threading.Thread(target=send_all, name="live-sender", daemon=True)
    sender.start()
    try:
        _receive(ws, result, on_event, stopped_at, done_timeout, ready)
    finally:
        stop.set()
        if ws.connected:
            try:
                ws.close()
            except Exception:  # already closing
                pass
        sender.join(timeout=5)
    if result.url:
        result.url = base + result.url if result.url.startswith("/") else result.url
    if sender_failed and result.error is None and not isinstance(sender_failed[0], _closed_errors()):
        failure = sender_failed[0]
        result.error = failure if isinstance(failure, LiveError) else LiveError(str(failure))
    return result


def _closed_errors() -> tuple:
    import simple_websocket

    return (simple_websocket.ConnectionClosed, OSError)


def _receive(ws, result: LiveResult, on_event, stopped_at: List[float], done_timeout: float,
             ready: Optional[threading.Event] = None) -> None:
    import simple_websocket

    while True:
        if stopped_at and time.monotonic() - stopped_at[0] > done_timeout:
            raise LiveError(f"the server did not finish the session within {done_timeout:g} s of stop")
        try:
            message = ws.receive(timeout=0.5)
        except simple_websocket.ConnectionClosed as closed:
            if result.job is None:
                raise _closed_error(closed.reason, closed.message, result.error) from None
            return
        if message is None:
            continue
        if isinstance(message, bytes):
            log.info("ignored a binary frame of %d bytes", len(message))
            continue
        try:
            event = json.loads(message)
        except ValueError:
            log.warning("ignored a text frame that is not JSON: %.80r", message)
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        log.info("received %s", message if len(message) < 200 else message[:200] + "...")
        if kind == "ready":
            result.ready = event
            result.session = event.get("session")
            if ready is not None:
                ready.set()
        elif kind == "committed":
            result.committed.append(str(event.get("text", "")))
        elif kind == "error":
            code = str(event.get("code", "error"))
            error = LiveError(f"{event.get('message') or code} ({code})", code)
            if code in RECOVERABLE_ERRORS:
                log.warning("the server dropped audio: %s", error)
            else:
                result.error = error
        elif kind == "done":
            result.job = event.get("job")
            result.url = event.get("url") or (f"/jobs/{result.job}" if result.job else None)
            result.text = str(event.get("text", ""))
        if on_event is not None:
            on_event(event)
        if kind == "done":
            return


def _closed_error(code, message: Optional[str], error: Optional[LiveError]) -> LiveError:
    """The session closed without `done`: the server's error event if it sent one, else the close code."""
    if error is not None:
        return error
    number = int(code) if code is not None else None
    said = CLOSE_CODES.get(number, "the server closed the session before it finished")
    return LiveError(f"{said}" + (f": {message}" if message else "") + (f" (close code {number})" if number else ""))


# --- the terminal ----------------------------------------------------------------------------


class Captions:
    """Committed text on stdout, one line per utterance; the partial after it on stderr,
    redrawn in place, when stderr is a terminal."""

    def __init__(self, out: TextIO, err: TextIO):
        self.out = out
        self.err = err
        self.live = _is_tty(err)
        self.same_screen = self.live and _is_tty(out)  # the partial goes after the committed line
        self.line = ""  # committed text of the current utterance
        self.lines: List[str] = []  # finished utterances
        self.shown = False  # a partial is on the screen

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "partial":
            self.partial(str(event.get("text", "")))
        elif kind == "committed":
            self.commit(str(event.get("text", "")))
        elif kind in ("speech_stopped", "done"):
            self.end_line()

    def text(self) -> str:
        return "\n".join(self.lines + ([self.line] if self.line else []))

    def commit(self, text: str) -> None:
        if not text.strip():
            return
        self.clear()
        if not self.line:
            text = text.lstrip()
        self.line += text
        self.out.write(text)
        self.out.flush()

    def end_line(self) -> None:
        self.clear()
        if self.line:
            self.out.write("\n")
            self.out.flush()
            self.lines.append(self.line.strip())
            self.line = ""

    def partial(self, text: str) -> None:
        if not self.live:
            return
        self.clear()
        text = " ".join(text.split())
        if not text:
            return
        width = shutil.get_terminal_size((80, 24)).columns
        column = len(self.line) % width if self.same_screen else 0
        room = width - column - 2
        if room < 8:
            return
        if self.line or column:
            text = " " + text
        if len(text) > room:
            text = text[:room - 1] + "…"
        # save the cursor, the partial in grey italics; clear() puts the cursor back
        self.err.write("\0337" if self.same_screen else "\r")
        self.err.write(f"\033[2;3m{text}\033[0m")
        self.err.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.err.write("\0338\033[K" if self.same_screen else "\r\033[K")
            self.err.flush()
            self.shown = False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def fetch_transcript(base: str, job: str, fmt: str, api_key: Optional[str],
                     timeout: float = FETCH_TIMEOUT) -> bytes:
    """The job's transcript in `fmt`, as the API serves it (404 + Retry-After until ready)."""
    url = base + TRANSCRIPT_PATH.format(job=urllib.parse.quote(job, safe=""), fmt=fmt)
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url, headers=auth_headers(api_key))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError as error:
            retry = error.headers.get("Retry-After")
            if error.code == 404 and retry and time.monotonic() < deadline:
                time.sleep(min(float(retry) if retry.isdigit() else 1.0, 2.0))
                continue
            raise LiveError(f"cannot download the {fmt} transcript of job {job}: HTTP {error.code} "
                            f"{_api_message(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise LiveError(f"cannot download the {fmt} transcript of job {job}: {reason}") from None


def _api_message(error: "urllib.error.HTTPError") -> str:
    try:
        body = json.loads(error.read().decode("utf-8", "replace"))
        found = body.get("error", body) if isinstance(body, dict) else body
        message = found.get("message") if isinstance(found, dict) else None
        return f"({message})" if message else ""
    except (ValueError, OSError, AttributeError):
        return ""


# --- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-service live",
        description="Live captions from a running server: the microphone (or a media file at "
                    "real-time speed) streamed to /api/live, committed text printed as it comes. "
                    "Ctrl-C stops; the session is saved as a job.",
    )
    parser.add_argument("--server", required=True, metavar="URL",
                        help="the server, e.g. http://127.0.0.1:8000 (ws:// and wss:// too)")
    parser.add_argument("--api-key", metavar="KEY",
                        help=f"sent as Authorization: Bearer KEY (default: {API_KEY_VARIABLE})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--device", metavar="NAME",
                        help="the input to record: a PulseAudio source, else an ALSA device "
                             "(default: the default microphone)")
    source.add_argument("--file", metavar="PATH",
                        help="stream this audio or video file at real-time speed instead")
    parser.add_argument("--model", help="a model the server offers (default: the server's)")
    parser.add_argument("--language", help="spoken language, e.g. en or English (default: detected)")
    parser.add_argument("--task", choices=TASKS, help="transcribe (default) or translate to English")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="also save the transcript here when the session ends")
    parser.add_argument("--format", choices=DOWNLOAD_FORMATS,
                        help="save -o FILE as the job's download in this format, fetched from the "
                             "server (default: the committed text, one line per utterance; or "
                             "the format FILE's extension names)")
    parser.add_argument("--verbose", action="store_true", help="log what happens")
    return parser


def output_format(output: Optional[str], fmt: Optional[str]) -> Optional[str]:
    """The download to save as -o FILE: --format, else FILE's extension when it names a
    format other than txt, else None (the text the client printed)."""
    if fmt:
        return fmt
    extension = os.path.splitext(output or "")[1].lstrip(".").lower()
    return extension if extension in DOWNLOAD_FORMATS and extension != "txt" else None


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None,
         err: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    try:
        base = server_base(args.server)
        if args.format and not args.output:
            raise UsageError("--format saves a download: give -o FILE too")
        fmt = output_format(args.output, args.format)
        if args.output and os.path.isdir(args.output):
            raise UsageError(f"-o {args.output!r} is a folder; give a file name")
        audio = open_file(args.file) if args.file else open_microphone(args.device)
    except UsageError as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE
    except LiveError as error:
        print(f"error: {error}", file=err)
        return EXIT_FAILED

    captions = Captions(out, err)
    stop = threading.Event()
    interrupted = []

    def on_interrupt(signum, frame):
        if interrupted:  # the second Ctrl-C: leave now
            raise KeyboardInterrupt
        interrupted.append(True)
        print("\nstopping: the server commits the rest and saves the job (Ctrl-C again to leave now)",
              file=err, flush=True)
        stop.set()
        audio.close()  # the frames end; the sender sends `stop`

    previous = _install(signal.SIGINT, on_interrupt)
    try:
        result = stream(base, audio, api_key=api_key, model=args.model, language=args.language,
                        task=args.task, on_event=captions, stop=stop)
    except LiveError as error:
        captions.clear()
        print(f"error: {error}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        captions.clear()
        print("left without waiting for the job", file=err)
        return EXIT_INTERRUPTED
    finally:
        _install(signal.SIGINT, previous)
        audio.close()
    captions.end_line()

    if result.url:
        print(f"job: {result.url}", file=err)
    elif result.error is None:
        print("the server kept no job: it received no audio", file=err)
    code = EXIT_OK
    if args.output and result.job:
        try:
            if fmt:
                data = fetch_transcript(base, result.job, fmt, api_key)
            else:
                data = ((captions.text() or result.text.strip()) + "\n").encode("utf-8")
            with open(args.output, "wb") as target:
                target.write(data)
            print(f"wrote {args.output}", file=err)
        except LiveError as error:
            print(f"error: {error}", file=err)
            code = EXIT_FAILED
        except OSError as error:
            print(f"error: -o {args.output}: {error.strerror or error}", file=err)
            code = EXIT_FAILED
    if result.error is not None:
        print(f"error: {result.error}", file=err)
        code = EXIT_FAILED
    return code


def _install(signum, handler):
    """signal.signal where it may be called (the main thread); None elsewhere."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)
