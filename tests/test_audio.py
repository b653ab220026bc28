"""Decoding: every container equals whisper.load_audio; every bad input gets its own error."""

from __future__ import annotations

import http.server
import resource
import struct
import subprocess
import threading
import time

import numpy as np
import pytest
import whisper

from conftest import CONTAINERS, run_ffmpeg
from whisper_service.audio import SAMPLE_RATE, DecodeLimits, check_file, decode_file, format_duration
from whisper_service.config import bundled_ffmpeg
from whisper_service.errors import (
    DecodeTimeout,
    EmptyMedia,
    MediaTooLong,
    NoAudioStream,
    NotMedia,
    RefusedFormat,
    TruncatedMedia,
)

LIMITS = DecodeLimits(max_duration=600, timeout=60, ffmpeg=bundled_ffmpeg())


@pytest.mark.parametrize("name", ["speech.wav", *CONTAINERS])
def test_every_container_decodes_like_whisper_load_audio(media, name, ffmpeg_on_path, monkeypatch):
    samples = decode_file(str(media[name]), LIMITS)
    monkeypatch.setenv("PATH", ffmpeg_on_path)
    reference = whisper.load_audio(str(media[name]))
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert samples.shape == reference.shape
    assert np.allclose(samples, reference, atol=1e-6)
    assert 3.0 < len(samples) / SAMPLE_RATE < 15.0
    assert np.abs(samples).max() > 0.05  # speech, not silence


def test_client_name_never_reaches_ffmpeg(media, monkeypatch):
    seen = []
    real_popen = subprocess.Popen

    def spy(args, **kwargs):
        seen.append(list(args))
        return real_popen(args, **kwargs)

    monkeypatch.setattr("whisper_service.audio.subprocess.Popen", spy)
    decode_file(str(media["speech.mp3"]), LIMITS, display_name="-i file:/etc/passwd.mp3")
    argv = " ".join(seen[0])
    assert "passwd" not in argv and str(media["speech.mp3"]) not in argv
    assert "-protocol_whitelist fd" in argv
    assert "-i fd:" in argv
    assert "-vn" in argv and "-sn" in argv and "-dn" in argv


def test_text_file_renamed_mp3_is_not_media(media):
    with pytest.raises(NotMedia, match=r"'notes\.mp3' is not an audio or video file"):
        decode_file(str(media["notes.mp3"]), LIMITS)


def test_empty_file(media):
    with pytest.raises(EmptyMedia, match=r"'empty\.wav' is empty"):
        decode_file(str(media["empty.wav"]), LIMITS)


def test_truncated_mp3(media):
    with pytest.raises(TruncatedMedia, match=r"'truncated\.mp3' is truncated: it declares .* but only"):
        decode_file(str(media["truncated.mp3"]), LIMITS)


def test_truncated_wav_is_refused_from_its_header_at_upload(media, tmp_path):
    whole = media["speech.wav"].read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2])  # an upload that broke off half way
    words = r"'cut\.wav' is truncated: it declares \d+(\.\d)? s of audio, but only \d+(\.\d)? s"
    with pytest.raises(TruncatedMedia, match=words):
        check_file(str(cut), LIMITS)  # before the job waits in the queue
    with pytest.raises(TruncatedMedia, match=words):
        decode_file(str(cut), LIMITS)


def test_wav_written_to_a_pipe_has_no_size_and_decodes(media, tmp_path):
    whole = bytearray(media["speech.wav"].read_bytes())
    data = whole.index(b"data")
    whole[data + 4:data + 8] = b"\xff\xff\xff\xff"  # what a writer that cannot seek leaves
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(whole))
    expected = decode_file(str(media["speech.wav"]), LIMITS)
    assert len(decode_file(str(streamed), LIMITS)) == len(expected)


def test_video_without_audio_names_the_file(media):
    with pytest.raises(NoAudioStream, match=r"^no audio stream found in 'talk\.mp4'$"):
        decode_file(str(media["talk.mp4"]), LIMITS)


def test_display_name_is_used_in_messages(media):
    with pytest.raises(NoAudioStream, match="my holiday.mp4"):
        decode_file(str(media["talk.mp4"]), LIMITS, display_name="my holiday.mp4")


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    requests: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        _RecordingHandler.requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"\x00" * 1024)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_server():
    _RecordingHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _hls_playlist(target: str) -> bytes:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n"
        f"#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n"
    ).encode()


@pytest.mark.parametrize("target", ["file:///etc/passwd", "/etc/hostname", "LOOPBACK/segment.ts"])
def test_hls_playlist_is_refused_and_fetches_nothing(tmp_path, loopback_server, target):
    playlist = tmp_path / "song.mp3"
    playlist.write_bytes(_hls_playlist(target.replace("LOOPBACK", loopback_server)))
    with pytest.raises(RefusedFormat, match=r"'song\.mp3' is an HLS/M3U playlist"):
        decode_file(str(playlist), LIMITS)
    time.sleep(0.2)
    assert _RecordingHandler.requests == []


def test_playlist_that_slips_past_the_signature_check_is_still_refused_by_ffmpeg(
    tmp_path, loopback_server
):
    # a leading comment hides the signature from our sniffing; ffmpeg's own whitelists refuse it
    playlist = tmp_path / "song.mp3"
    playlist.write_bytes(b"\n" * 600 + _hls_playlist(f"{loopback_server}/segment.ts"))
    with pytest.raises((NotMedia, RefusedFormat)):
        decode_file(str(playlist), LIMITS)
    time.sleep(0.2)
    assert _RecordingHandler.requests == []


def test_concat_script_is_refused(tmp_path):
    script = tmp_path / "voice.wav"
    script.write_text("ffconcat version 1.0\nfile /etc/passwd\n")
    with pytest.raises(RefusedFormat, match="concat script"):
        decode_file(str(script), LIMITS)


def test_container_outside_the_demuxer_list_is_refused(tmp_path):
    picture = tmp_path / "cover.mp3"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x32", "-frames:v", "1", "-f", "image2",
               "-c:v", "png", str(picture))
    with pytest.raises(RefusedFormat, match="container format this server does not accept"):
        decode_file(str(picture), LIMITS)


# "Quickly" in CPU seconds of the ffmpeg processes, which a loaded machine does not stretch
# as it does the wall clock: decoding the whole hour below takes ffmpeg about 3 s of CPU, ten
# minutes of it (the output cap) about 0.5 s, reading its header or its first 2 s 0.02 s.
QUICK_CPU_SECONDS = 0.25


def ffmpeg_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (the ffmpeg runs) so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


@pytest.fixture(scope="session")
def hour_of_opus(tmp_path_factory):
    """One hour of silence as 6 kb/s Opus: under a megabyte that decodes to 115 MB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.opus"
    run_ffmpeg("-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "3600", "-c:a", "libopus",
               "-b:a", "6k", "-frame_duration", "120", "-compression_level", "0", str(path))
    return path


def test_duration_bomb_is_refused_quickly_with_bounded_memory(hour_of_opus):
    limits = DecodeLimits(max_duration=600, timeout=60, ffmpeg=bundled_ffmpeg())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ffmpeg_before = ffmpeg_cpu_seconds()
    with pytest.raises(MediaTooLong) as error:
        decode_file(str(hour_of_opus), limits, display_name="bomb.opus")
    # refused from the header, not at the output cap
    assert ffmpeg_cpu_seconds() - ffmpeg_before < QUICK_CPU_SECONDS
    assert str(error.value) == "audio in 'bomb.opus' is 1 h; this server accepts up to 10 min"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 100 * 1024  # far below the 115 MB the whole hour would take


def test_audio_over_the_cap_without_a_declared_duration_is_cut_at_the_cap(media, tmp_path):
    # WebM written to a pipe carries no duration: only the output cap can catch it
    streamed = subprocess.run(
        [bundled_ffmpeg(), "-nostdin", "-loglevel", "error", "-i", str(media["speech.wav"]),
         "-c:a", "libopus", "-f", "webm", "pipe:"],
        check=True, stdout=subprocess.PIPE,
    ).stdout
    recording = tmp_path / "recording.webm"
    recording.write_bytes(streamed)
    limits = DecodeLimits(max_duration=3, timeout=60, ffmpeg=bundled_ffmpeg())
    with pytest.raises(MediaTooLong) as error:
        decode_file(str(recording), limits)
    assert str(error.value) == (
        "audio in 'recording.webm' is longer than 3.0 s; this server accepts up to 3.0 s"
    )
    assert len(decode_file(str(recording), LIMITS)) > 3 * SAMPLE_RATE


def test_declared_duration_over_the_cap_is_refused_with_its_length(media):
    limits = DecodeLimits(max_duration=3, timeout=60, ffmpeg=bundled_ffmpeg())
    with pytest.raises(MediaTooLong, match=r"audio in 'speech\.wav' is \d\.\d s; this server accepts up to 3\.0 s"):
        decode_file(str(media["speech.wav"]), limits)


def test_wall_clock_timeout_kills_ffmpeg(hour_of_opus):
    limits = DecodeLimits(max_duration=7200, timeout=0.05, ffmpeg=bundled_ffmpeg())
    with pytest.raises(DecodeTimeout, match="took longer than 0.05 s"):
        decode_file(str(hour_of_opus), limits, display_name="bomb.opus")


@pytest.mark.parametrize(
    "seconds, said",
    [(11520, "3 h 12 min"), (7200, "2 h"), (600, "10 min"), (61, "1 min 1 s"), (12.5, "12.5 s")],
)
def test_format_duration(seconds, said):
    assert format_duration(seconds) == said


@pytest.mark.parametrize("name, error", [
    ("notes.mp3", NotMedia), ("empty.wav", EmptyMedia), ("talk.mp4", NoAudioStream),
])
def test_quick_check_refuses_what_decoding_would(media, name, error):
    with pytest.raises(error):
        check_file(str(media[name]), LIMITS)


def test_quick_check_passes_media_and_reads_only_the_start(media, hour_of_opus):
    check_file(str(media["speech.mp4"]), LIMITS)
    ffmpeg_before = ffmpeg_cpu_seconds()
    with pytest.raises(MediaTooLong, match="is 1 h"):
        check_file(str(hour_of_opus), LIMITS)
    limits = DecodeLimits(max_duration=7200, timeout=60, ffmpeg=bundled_ffmpeg())
    check_file(str(hour_of_opus), limits)  # an hour is fine here, and only 2 s are decoded
    assert ffmpeg_cpu_seconds() - ffmpeg_before < QUICK_CPU_SECONDS


def _mp3_that_claims_one_second(folder, seconds: int):
    """`seconds` of MP3 behind the Xing/Info header of a 1 s one (its byte count set to the
    whole file's, so ffmpeg believes its frame count): ffmpeg says 'Duration: 00:00:01'."""
    short, long = folder / "short.mp3", folder / "long-frames.mp3"
    run_ffmpeg("-f", "lavfi", "-i", "sine=f=440:d=1", "-ac", "1", "-b:a", "32k", str(short))
    run_ffmpeg("-f", "lavfi", "-i", f"sine=f=440:d={seconds}", "-ac", "1", "-b:a", "32k",
               "-write_xing", "0", str(long))
    head, frames = bytearray(short.read_bytes()), long.read_bytes()
    info = head.find(b"Info")
    flags, = struct.unpack(">I", head[info + 4:info + 8])
    assert info > 0 and flags & 0x3 == 0x3  # frame count, then byte count
    head[info + 12:info + 16] = struct.pack(">I", len(head) + len(frames))
    spliced = folder / "claims-1s.mp3"
    spliced.write_bytes(bytes(head) + frames)
    return spliced


def test_a_header_that_understates_the_length_is_refused_by_the_decoded_length(tmp_path):
    spliced = _mp3_that_claims_one_second(tmp_path, 150)
    limits = DecodeLimits(max_duration=60, timeout=60, ffmpeg=bundled_ffmpeg())
    with pytest.raises(MediaTooLong) as error:
        decode_file(str(spliced), limits, "talk.mp3")
    # not "is 1.0 s", the header's claim: what decoding found
    assert str(error.value) == "audio in 'talk.mp3' is longer than 1 min; this server accepts up to 1 min"
