"""Decode any uploaded audio or video to 16 kHz mono float32, safely.

ffmpeg reads the file from its standard input through the `fd:` protocol (seekable when
stdin is a regular file, so MP4s with the index at the end still work). No client-supplied
name or path ever reaches ffmpeg's argv. Only the `fd` protocol and a list of real media
demuxers are allowed, so a playlist disguised as `.mp3` cannot make ffmpeg open local files
or URLs. Output is capped in duration and in bytes, and a wall-clock timer kills ffmpeg.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from typing import Optional, Tuple

import ffmpeg
import numpy as np

from whisper_service import cancel
from whisper_service.errors import (
    DecodeTimeout,
    EmptyMedia,
    MediaTooLong,
    NoAudioStream,
    NotMedia,
    RefusedFormat,
    TruncatedMedia,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what every Whisper model expects
BYTES_PER_SAMPLE = 2  # signed 16-bit, as whisper.load_audio reads ffmpeg's output
READ_CHUNK = 1 << 20
STDERR_LINES_KEPT = 200
# Demuxers of real audio and video containers. Playlist and script demuxers (hls, concat,
# dash, image sequences, ...) are left out: they open other files or URLs.
ALLOWED_DEMUXERS = (
    "aac", "ac3", "aiff", "amr", "ape", "asf", "au", "avi", "caf", "eac3", "flac", "flv",
    "matroska", "mov", "mp3", "mpeg", "mpegts", "ogg", "tta", "w64", "wav", "wv",
)
# Text signatures of playlists and scripts, refused before ffmpeg sees them.
PLAYLIST_SIGNATURES = {
    b"#EXTM3U": "an HLS/M3U playlist",
    b"ffconcat": "an ffmpeg concat script",
    b"[playlist]": "a PLS playlist",
    b"<?xml": "an XML document (such as a DASH manifest)",
}
CHECK_SECONDS = 2.0  # audio decoded to tell whether an upload is usable media at all
PLAYLIST_HEAD_BYTES = 512  # a playlist's signature is at its start
URL_PROTOCOLS = "http,https,tcp,tls"  # what ffmpeg may use to read an object store's URL
WAV_HEADER_SEARCH = 64 * 1024  # the data chunk's header lies within this many bytes
WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what a writer that could not seek back leaves there
# A container may round its declared duration; less than this missing is not truncation.
TRUNCATION_TOLERANCE_S = 0.5
TRUNCATION_TOLERANCE_FRACTION = 0.02

_INPUT_LINE = re.compile(r"^Input #0, (.+), from ")  # the demuxer(s) that read the file
_DURATION_LINE = re.compile(r"^\s*Duration:\s*(\d+):(\d\d):(\d\d(?:\.\d+)?)")
_VIDEO_STREAM_LINE = re.compile(r"^\s*Stream #\d+:\d+.*: Video: ")


@dataclass(frozen=True)
class DecodeLimits:
    max_duration: float  # seconds of audio accepted
    timeout: float  # wall-clock seconds ffmpeg may run
    ffmpeg: str  # path of the ffmpeg binary

    @property
    def max_output_bytes(self) -> int:
        # one second of slack past the cap tells "exactly at the cap" from "over it"
        return int((self.max_duration + 1) * SAMPLE_RATE) * BYTES_PER_SAMPLE


# What a browser may be told an upload is, by the demuxer that read it (never by its name):
# (audio type, video type). Served inline only when the type is one a player plays; anything
# else is a download. Demuxers missing here are served as application/octet-stream.
MEDIA_TYPES = {
    "wav": ("audio/wav", "audio/wav"),
    "mp3": ("audio/mpeg", "audio/mpeg"),
    "flac": ("audio/flac", "audio/flac"),
    "ogg": ("audio/ogg", "video/ogg"),
    "mov": ("audio/mp4", "video/mp4"),
    "matroska": ("audio/webm", "video/webm"),
    "aac": ("audio/aac", "audio/aac"),
    "aiff": ("audio/aiff", "audio/aiff"),
    "amr": ("audio/amr", "audio/amr"),
    "ac3": ("audio/ac3", "audio/ac3"),
    "eac3": ("audio/eac3", "audio/eac3"),
    "asf": ("audio/x-ms-wma", "video/x-ms-asf"),
    "avi": ("video/x-msvideo", "video/x-msvideo"),
    "flv": ("video/x-flv", "video/x-flv"),
    "mpeg": ("audio/mpeg", "video/mpeg"),
    "mpegts": ("video/mp2t", "video/mp2t"),
    "caf": ("audio/x-caf", "audio/x-caf"),
    "au": ("audio/basic", "audio/basic"),
}
PLAYABLE_TYPES = frozenset({
    "audio/wav", "audio/mpeg", "audio/flac", "audio/ogg", "video/ogg", "audio/mp4",
    "video/mp4", "audio/webm", "video/webm", "audio/aac",
})
UNKNOWN_MEDIA_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class MediaInfo:
    """What ffmpeg found in an upload's content."""

    container: Optional[str]  # the demuxer that read it ("wav", "mov", "matroska"), if known
    has_video: bool  # a picture track besides the audio (not a cover image)

    @property
    def media_type(self) -> str:
        """The Content-Type to serve it with: from the content, never from a file name."""
        types = MEDIA_TYPES.get(self.container or "")
        return types[self.has_video] if types else UNKNOWN_MEDIA_TYPE

    @property
    def playable(self) -> bool:
        """Whether a browser's player takes it inline; anything else is a download."""
        return self.media_type in PLAYABLE_TYPES


def format_duration(seconds: float) -> str:
    """3 h 12 min, 45 min 3 s, 12.5 s: how a person says a length of audio."""
    if seconds >= 3600:
        hours, rest = divmod(int(round(seconds)), 3600)
        minutes = rest // 60
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if seconds >= 60:
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{seconds:.1f} s"


def decode_file(path: str, limits: DecodeLimits, display_name: Optional[str] = None) -> np.ndarray:
    """Return the first audio stream of the file at `path` as 16 kHz mono float32 in [-1, 1).

    `path` is a server-side file (an upload saved under a random name); `display_name` is
    the client's file name, used only in error messages.
    """
    return _decode(path, limits, display_name, whole=True)[0]


def check_file(path, limits: DecodeLimits, display_name: Optional[str] = None) -> MediaInfo:
    """Refuse at once what decode_file would refuse, decoding only the first seconds:
    for uploads, before they wait in a queue. (Truncation shows only at the end, except in
    a WAV file, whose header says how long it should be.) Returns what the content is.
    path: a local file, or an upload kept in an object store (queue/store/spool.py's
    RemoteMedia: url, size, head), which ffmpeg reads through its short-lived URL with HTTP
    Range requests, so it seeks as in a file (an MP4 whose index is at its end works)."""
    if getattr(path, "url", None) is not None:
        name = display_name or "upload"
        _refuse_head(path.head, path.size, name)
        run = _FfmpegRun(limits, CHECK_SECONDS, url=path.url)
        pcm = run.decode(subprocess.DEVNULL)
        samples = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
        _check_outcome(run, samples, name, limits, whole=False)
    else:
        run = _decode(path, limits, display_name, whole=False)[1]
    return MediaInfo(container=run.container, has_video=run.has_video)


def _decode(
    path: str, limits: DecodeLimits, display_name: Optional[str], whole: bool
) -> Tuple[np.ndarray, "_FfmpegRun"]:
    name = display_name or os.path.basename(path)
    _refuse_by_head(path, name)
    run = _FfmpegRun(limits, limits.max_duration + 1 if whole else CHECK_SECONDS)
    with open(path, "rb") as media:
        pcm = run.decode(media)
    samples = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
    _check_outcome(run, samples, name, limits, whole)
    return samples, run


def _refuse_by_head(path: str, name: str) -> None:
    """What the file's first bytes give away: nothing at all, a playlist, a WAV cut short."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(WAV_HEADER_SEARCH)
    _refuse_head(head, size, name)


def _refuse_head(head: bytes, size: int, name: str) -> None:
    if size == 0:
        raise EmptyMedia(f"'{name}' is empty (0 bytes)")
    _refuse_playlist(head, name)
    _refuse_truncated_wav(head, size, name)


def _refuse_playlist(head: bytes, name: str) -> None:
    text = head[:PLAYLIST_HEAD_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n")
    for signature, what in PLAYLIST_SIGNATURES.items():
        if text.startswith(signature):
            raise RefusedFormat(
                f"'{name}' is {what}, not audio or video; playlists are refused, "
                "upload the media file itself"
            )


def _refuse_truncated_wav(head: bytes, size: int, name: str) -> None:
    """ffmpeg decodes a WAV file cut short without a word (it trusts the bytes there are);
    its header's data size tells what is missing."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    byte_rate, offset = 0, 12
    while offset + 8 <= len(head):
        chunk, chunk_size = head[offset:offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        if chunk == b"fmt " and offset + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, offset + 16)[0]
        if chunk == b"data":
            if byte_rate and chunk_size not in WAV_UNKNOWN_SIZES:
                present = size - (offset + 8)
                declared, decodable = chunk_size / byte_rate, max(0, present) / byte_rate
                missing = declared - decodable
                if missing > max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRACTION * declared):
                    raise TruncatedMedia(
                        f"'{name}' is truncated: it declares {format_duration(declared)} of "
                        f"audio, but only {format_duration(decodable)} could be decoded"
                    )
            return
        offset += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size


def _ffmpeg_args(limits: DecodeLimits, output_seconds: float, url: Optional[str] = None) -> list:
    source = ffmpeg.input(
        # standard input, seekable when it is a regular file; or the short-lived URL of an
        # upload in the object store (ours, never a client's), read with Range requests
        url or "fd:",
        protocol_whitelist=URL_PROTOCOLS if url else "fd",
        format_whitelist=",".join(ALLOWED_DEMUXERS),
        threads=0,
    )
    output = source["a:0"].output(
        "pipe:",
        format="s16le",
        acodec="pcm_s16le",
        ac=1,
        ar=SAMPLE_RATE,
        t=output_seconds,
        vn=None,
        sn=None,
        dn=None,
    )
    return output.global_args("-nostdin", "-hide_banner", "-nostats").compile(cmd=limits.ffmpeg)


class _FfmpegRun:
    """One ffmpeg process: feeds stdin, reads capped stdout, watches stderr and the clock."""

    def __init__(self, limits: DecodeLimits, output_seconds: float, url: Optional[str] = None):
        self.limits = limits
        self.output_seconds = output_seconds
        self.url = url  # read this instead of stdin (an upload in the object store)
        self.stderr_tail: deque = deque(maxlen=STDERR_LINES_KEPT)
        self.declared_duration: Optional[float] = None
        self.has_video = False
        self.container: Optional[str] = None  # the first name of the demuxer that read it
        self.timed_out = False
        self.too_long = False
        self.returncode: Optional[int] = None

    def decode(self, media) -> bytes:
        proc = subprocess.Popen(
            _ffmpeg_args(self.limits, self.output_seconds, self.url), stdin=media, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        timer = threading.Timer(self.limits.timeout, self._on_timeout, args=(proc,))
        stderr_reader = threading.Thread(target=self._watch_stderr, args=(proc,), daemon=True)
        timer.start()
        stderr_reader.start()
        pcm = bytearray()
        try:
            while True:
                cancel.checkpoint()  # a cancelled job's ffmpeg is killed, not waited for
                chunk = proc.stdout.read(READ_CHUNK)
                if not chunk:
                    break
                pcm += chunk
                if len(pcm) > self.limits.max_output_bytes:
                    self.too_long = True
                    proc.kill()
                    break
        except BaseException:
            proc.kill()
            raise
        finally:
            timer.cancel()
            if self.too_long or self.timed_out:
                proc.kill()
            self.returncode = proc.wait()
            stderr_reader.join(timeout=5)
            proc.stdout.close()
        return bytes(pcm[: self.limits.max_output_bytes])

    def _on_timeout(self, proc: subprocess.Popen) -> None:
        self.timed_out = True
        proc.kill()

    def _watch_stderr(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(line)
            duration = _DURATION_LINE.match(line)
            source = _INPUT_LINE.match(line)
            if source and self.container is None:
                self.container = source.group(1).split(",")[0]
            elif duration and self.declared_duration is None:
                h, m, s = duration.groups()
                self.declared_duration = int(h) * 3600 + int(m) * 60 + float(s)
                # refuse at once from the header rather than decode hours of audio first
                if self.declared_duration > self.limits.max_duration + 1:
                    self.too_long = True
                    proc.kill()
            elif _VIDEO_STREAM_LINE.match(line) and "(attached pic)" not in line:
                self.has_video = True
        proc.stderr.close()

    def error_line(self) -> str:
        """ffmpeg's last line that says what went wrong, for the log and the message."""
        for line in reversed(self.stderr_tail):
            if "rror" in line or "Invalid" in line or "not" in line:
                return line.strip()
        return self.stderr_tail[-1].strip() if self.stderr_tail else "no output"


def _check_outcome(
    run: _FfmpegRun, samples: np.ndarray, name: str, limits: DecodeLimits, whole: bool
) -> None:
    decoded = len(samples) / SAMPLE_RATE
    if run.timed_out:
        raise DecodeTimeout(
            f"decoding '{name}' took longer than {limits.timeout:g} s and was stopped; "
            "try a shorter or simpler file"
        )
    if run.too_long or decoded > limits.max_duration:
        # the header's length only where it is what refused the file: a header may also
        # understate, and then decoding found the audio longer than the cap
        declared = run.declared_duration
        said = (f"is {format_duration(declared)}" if declared and declared > limits.max_duration
                else f"is longer than {format_duration(limits.max_duration)}")
        raise MediaTooLong(
            f"audio in '{name}' {said}; this server accepts up to {format_duration(limits.max_duration)}"
        )
    stderr = "\n".join(run.stderr_tail)
    if run.returncode != 0:
        log.info("ffmpeg refused %r: %s", name, run.error_line())
        if "not on whitelist" in stderr:
            raise RefusedFormat(
                f"'{name}' is in a container format this server does not accept; "
                f"accepted: {', '.join(ALLOWED_DEMUXERS)}"
            )
        if "matches no streams" in stderr:
            raise NoAudioStream(f"no audio stream found in '{name}'")
        raise NotMedia(
            f"'{name}' is not an audio or video file that can be decoded "
            f"(ffmpeg: {run.error_line()})"
        )
    if len(samples) == 0:
        raise NotMedia(f"'{name}' holds no decodable audio")
    declared = run.declared_duration
    if whole and declared and not run.has_video:
        missing = declared - decoded
        if missing > max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRACTION * declared):
            raise TruncatedMedia(
                f"'{name}' is truncated: it declares {format_duration(declared)} of audio, "
                f"but only {format_duration(decoded)} could be decoded"
            )
