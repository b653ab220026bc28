"""Settings from WHISPER_* variables; a bad value names its variable."""

from __future__ import annotations

import pytest

from whisper_service.config import Settings, bundled_ffmpeg

BUNDLED_ONES = ("bundled-base", "bundled")  # installed by requirements.txt: on hand, offered
from whisper_service.errors import ConfigError


def test_defaults(monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/srv/cache")
    settings = Settings.from_env({})
    assert settings.model == "turbo"
    assert settings.models == ("turbo", *BUNDLED_ONES)  # large-v3 (3 GB) is not on hand: not offered
    assert settings.translate_model == "large-v3"
    assert settings.model_dir == "/srv/cache/whisper"
    assert settings.device == "auto"
    assert settings.batch_windows == 0  # chosen from free GPU memory
    assert settings.shared_jobs == 8
    assert settings.max_duration == 7200
    assert settings.max_upload_bytes == 1024 * 1024 * 1024
    assert settings.ffmpeg == bundled_ffmpeg()
    assert "9.0" in settings.ffmpeg  # the pinned imageio-ffmpeg wheel carries ffmpeg 9.0.x


def test_the_translation_model_is_offered_by_default_only_when_on_hand(tmp_path, checkpoint):
    folder = tmp_path / "models"
    folder.mkdir()
    assert Settings.from_env({"WHISPER_MODEL_DIR": str(folder)}).models == ("turbo", *BUNDLED_ONES)
    (folder / "large-v3.pt").write_bytes(b"weights")  # whisper's file name for large-v3
    assert Settings.from_env({"WHISPER_MODEL_DIR": str(folder)}).models == ("turbo", "large-v3", *BUNDLED_ONES)
    local = Settings.from_env({"WHISPER_MODEL_DIR": str(folder), "WHISPER_TRANSLATE_MODEL": checkpoint})
    assert local.models == ("turbo", checkpoint, *BUNDLED_ONES)  # a checkpoint on this machine is on hand
    hub = Settings.from_env({"WHISPER_MODEL_DIR": str(folder),
                             "WHISPER_TRANSLATE_MODEL": "openai/whisper-large-v3"})
    assert hub.models == ("turbo", *BUNDLED_ONES)  # a Hugging Face id downloads
    listed = Settings.from_env({"WHISPER_MODEL_DIR": str(folder / "none"), "WHISPER_MODELS": "large-v3"})
    assert listed.models == ("turbo", "large-v3")  # listed by the operator: allowed


def test_values_from_the_environment(checkpoint):
    settings = Settings.from_env({
        "WHISPER_MODEL": checkpoint, "WHISPER_MODELS": "tiny, base ,tiny",
        "WHISPER_TRANSLATE_MODEL": "medium", "WHISPER_MODEL_DIR": "/models",
        "WHISPER_DEVICE": "CUDA:1", "WHISPER_MAX_DURATION": "90", "WHISPER_MAX_UPLOAD_MB": "20",
        "WHISPER_FFMPEG": bundled_ffmpeg(), "WHISPER_DECODE_TIMEOUT": "30",
        "WHISPER_BATCH_WINDOWS": "16",
    })
    assert settings.batch_windows == 16
    assert settings.models == (checkpoint, "tiny", "base")  # the default model is always allowed
    assert (settings.translate_model, settings.model_dir, settings.device) == ("medium", "/models", "cuda:1")
    assert (settings.max_duration, settings.max_upload_mb, settings.decode_timeout) == (90, 20, 30)


@pytest.mark.parametrize("variable, value, words", [
    ("WHISPER_DEVICE", "gpu", "WHISPER_DEVICE must be auto, cpu, cuda or cuda:N; got 'gpu'"),
    ("WHISPER_MAX_DURATION", "two hours", "WHISPER_MAX_DURATION must be a positive number"),
    ("WHISPER_MAX_DURATION", "-5", "WHISPER_MAX_DURATION must be a positive number; got '-5'"),
    ("WHISPER_MAX_UPLOAD_MB", "1.5", "WHISPER_MAX_UPLOAD_MB must be a positive number"),
    ("WHISPER_DECODE_TIMEOUT", "inf", "WHISPER_DECODE_TIMEOUT must be a positive number"),
    ("WHISPER_MODEL", "huge", "WHISPER_MODEL: 'huge' is neither a checkpoint file nor one of"),
    ("WHISPER_MODELS", "tiny,nope", "WHISPER_MODELS: 'nope' is neither"),
    ("WHISPER_TRANSLATE_MODEL", "x.pt", "WHISPER_TRANSLATE_MODEL: 'x.pt' is neither"),
    ("WHISPER_FFMPEG", "/no/such/ffmpeg", "WHISPER_FFMPEG '/no/such/ffmpeg' is not an executable"),
    ("WHISPER_BATCH_WINDOWS", "-1", "WHISPER_BATCH_WINDOWS must be a whole number, 0 or more; got '-1'"),
    ("WHISPER_BATCH_WINDOWS", "many", "WHISPER_BATCH_WINDOWS must be a whole number, 0 or more"),
    ("WHISPER_SHARED_JOBS", "0", "WHISPER_SHARED_JOBS must be a positive number; got '0'"),
])
def test_a_bad_value_stops_start_up_naming_the_variable(variable, value, words):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({variable: value})
    assert words in str(error.value)


def test_a_model_can_go_by_a_short_name(checkpoint):
    from whisper_service.config import split_alias

    settings = Settings.from_env({"WHISPER_MODEL": f"meetings={checkpoint}",
                                  "WHISPER_MODELS": "tiny, fast=turbo"})
    assert settings.models == (f"meetings={checkpoint}", "tiny", "fast=turbo")
    assert split_alias(settings.model) == ("meetings", checkpoint)
    assert split_alias("turbo") == ("turbo", "turbo")
    assert split_alias("/models/a=b.pt") == ("a=b", "/models/a=b.pt")  # a path: its file name
    assert split_alias("/models/whisper-small-ja/") == ("whisper-small-ja", "/models/whisper-small-ja/")
    assert split_alias("openai/whisper-small") == ("openai/whisper-small", "openai/whisper-small")


@pytest.mark.parametrize("entries, words", [
    ("tiny=/no/such.pt", "WHISPER_MODELS: 'tiny' names an official model; choose another name"),
    ("x=/no/such.pt", "WHISPER_MODELS: '/no/such.pt' is neither a checkpoint file nor one of"),
    ("x=tiny,x=base", "WHISPER_MODELS: the name 'x' is given to two models"),
])
def test_bad_short_names_stop_start_up(entries, words):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"WHISPER_MODEL": "tiny", "WHISPER_MODELS": entries})
    assert words in str(error.value)
