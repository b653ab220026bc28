"""The first start without internet: the bundled models stand in for configured ones that
cannot be downloaded, so every task and language the service offers works, on real words.

A host without internet is made by pointing the official models' URLs at a closed port.
The speech is espeak-ng's French and Spanish voices; the bundled base (multilingual) detects
both, transcribes them in their language and translates Spanish into English, through the
service, the native API and the OpenAI API. (Its translation of espeak-ng's French is
unreliable: repeated phrases, at temperature 0 as with the fallback; of its Spanish, right.) The menus list what can run and mark what cannot, and /readyz says "loading"
while the stand-in loads, then why the configured model is missing.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
from pathlib import Path

import pytest
import whisper

from conftest import make_app
from whisper_service import model_menu, stand_ins
from whisper_service.checkpoints import BUNDLED, BUNDLED_BASE, CTRANSLATE2, bundled, kind_of
from whisper_service.config import Settings
from whisper_service.models import ModelRegistry
from whisper_service.options import TranscribeOptions
from whisper_service.service import WhisperService

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

FRENCH = ("Bonjour à tous. Aujourd'hui il fait beau, et nous allons au marché pour acheter "
          "du pain, du fromage et des pommes.")
FRENCH_WORDS = ("bonjour", "tous", "acheter", "pain", "pommes")  # three at least in the transcript
SPANISH = "Buenos días a todos. Hoy hace buen tiempo y vamos al mercado a comprar pan, queso y manzanas."
SPANISH_WORDS = ("buenos", "días", "todos", "tiempo", "mercado", "comprar")  # three at least
ENGLISH_WORDS = ("good morning", "today", "market", "buy", "bread")  # in the translation: three
UNREACHABLE = "http://127.0.0.1:9/0000/{}.pt"  # a closed port: the download fails at once
TRANSLATE = {"task": "translate", "beam_size": "5"}


def offline(patch: pytest.MonkeyPatch) -> None:
    """No official model can be downloaded (as on a host without internet)."""
    for name in ("turbo", "large-v3"):
        patch.setitem(whisper._MODELS, name, UNREACHABLE.format(name))


def found(words, text: str) -> list:
    lowered = text.lower()
    return [word for word in words if word in lowered]


def spoken(folder: Path, voice: str, text: str) -> Path:
    path = folder / f"{voice}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "130", "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="module")
def french(tmp_path_factory) -> Path:
    return spoken(tmp_path_factory.mktemp("french"), "fr", FRENCH)


@pytest.fixture(scope="module")
def spanish(tmp_path_factory) -> Path:
    return spoken(tmp_path_factory.mktemp("spanish"), "es", SPANISH)


# --- the base's two halves, joined once -----------------------------------------------------


def test_the_base_is_joined_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = bundled.folder(BUNDLED_BASE)

    assert folder == str(tmp_path / "cache" / "whisper-service" / "bundled-base-1.0.0")
    weights = Path(folder) / "model.bin"
    first, second = bundled._parts(bundled.BASE)
    assert weights.stat().st_size == first.stat().st_size + second.stat().st_size
    with open(weights, "rb") as joined, open(first, "rb") as a, open(second, "rb") as b:
        assert joined.read(4096) == a.read(4096)  # part1 first ...
        joined.seek(-4096, os.SEEK_END)
        b.seek(-4096, os.SEEK_END)
        assert joined.read() == b.read()  # ... part2 last
    assert sorted(os.listdir(folder)) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert os.listdir(tmp_path / "cache" / "whisper-service") == ["bundled-base-1.0.0"]  # no leftovers
    assert kind_of(folder) == CTRANSLATE2
    written = weights.stat().st_mtime_ns
    assert bundled.folder(BUNDLED_BASE) == folder and weights.stat().st_mtime_ns == written  # once


def test_a_cache_that_cannot_be_written_falls_back_to_the_temporary_folder(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert bundled.folder(BUNDLED_BASE) == str(tmp_path / "tmp" / "whisper-service" / "bundled-base-1.0.0")


# --- which bundled model stands in for what -------------------------------------------------


@pytest.mark.parametrize("task, language, expected", [
    ("transcribe", "en", stand_ins.ENGLISH_TRANSCRIPTION),
    ("transcribe", None, BUNDLED_BASE),  # a language to detect: tiny.en cannot
    ("transcribe", "fr", BUNDLED_BASE),
    ("translate", "fr", BUNDLED_BASE),
    ("translate", None, BUNDLED_BASE),
])
def test_the_stand_in_follows_task_and_language(task, language, expected):
    assert stand_ins.choose(task, language) == expected


def test_english_transcription_falls_back_to_tiny_en_without_the_base(monkeypatch):
    monkeypatch.setattr(bundled, "installed", lambda name: name == BUNDLED)
    assert stand_ins.choose("transcribe", "en") == BUNDLED
    assert stand_ins.choose("translate", "fr") is None  # tiny.en cannot: the error stays


# --- the service offline: real words --------------------------------------------------------


@pytest.fixture(scope="module")
def offline_service(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        offline(patch)
        folder = tmp_path_factory.mktemp("offline")
        yield WhisperService(Settings(model="turbo", device="cpu", model_dir=str(folder / "models")))


def test_languages_are_detected_transcribed_and_translated_offline(offline_service, french, spanish):
    for path, code in ((french, "fr"), (spanish, "es")):
        probabilities = offline_service.detect_language_file(str(path))
        assert next(iter(probabilities)) == code, list(probabilities.items())[:3]

    heard = offline_service.transcribe_file(str(french), TranscribeOptions(beam_size=5))
    assert (heard.language, heard.model) == ("fr", BUNDLED_BASE)
    assert len(found(FRENCH_WORDS, heard.text)) >= 3, heard.text
    spoken_es = offline_service.transcribe_file(str(spanish), TranscribeOptions(beam_size=5))
    assert spoken_es.language == "es" and len(found(SPANISH_WORDS, spoken_es.text)) >= 3, spoken_es.text

    english = offline_service.transcribe_file(str(spanish), TranscribeOptions(task="translate", beam_size=5))
    assert (english.task, english.language, english.model) == ("translate", "es", BUNDLED_BASE)
    assert len(found(ENGLISH_WORDS, english.text)) >= 3, english.text
    assert not found(SPANISH_WORDS, english.text), english.text  # English, not Spanish

    registry = offline_service.models
    assert registry.missing().keys() == {"turbo"}  # tried once; large-v3 never needed
    assert registry.loaded() == [BUNDLED_BASE]


# --- the web offline: readiness, menus, APIs ------------------------------------------------


@pytest.fixture(scope="module")
def offline_app(tmp_path_factory):
    """The app as a fresh clone starts it offline: the default model (turbo) and the
    translation model (large-v3) cannot be downloaded."""
    with pytest.MonkeyPatch.context() as patch:
        offline(patch)
        app = make_app("turbo", tmp_path_factory.mktemp("offline-app"), WHISPER_MAX_UPLOAD_MB="20")
        yield app
        app.extensions["whisper_jobs"].stop()


def test_readyz_says_loading_while_the_stand_in_loads_then_why_the_model_is_missing(offline_app):
    client = offline_app.test_client()
    registry: ModelRegistry = offline_app.extensions["whisper_service"].models
    before = client.get("/readyz")
    assert (before.status_code, before.get_json()["status"]) == (503, "loading")
    assert "error" not in before.get_json()

    let_go, loading = threading.Event(), threading.Event()
    real_load = registry._load

    def slow_load(name):
        if name == BUNDLED_BASE:
            loading.set()
            assert let_go.wait(120)
        return real_load(name)

    registry._load = slow_load
    try:
        preload = threading.Thread(target=registry.preload)
        preload.start()
        assert loading.wait(60)  # turbo failed; the stand-in is loading
        during = client.get("/readyz")
        body = during.get_json()
        assert (during.status_code, body["status"]) == (503, "loading"), body
        assert "error" not in body
        assert body["missing"] == [{"model": "turbo", "reason": model_menu.MISSING_REASON,
                                    "stand_in": BUNDLED_BASE}]
    finally:
        let_go.set()
        preload.join(120)
        del registry._load

    ready = client.get("/readyz")
    body = ready.get_json()
    assert (ready.status_code, body["status"]) == (200, "ready"), body
    assert body["notice"].startswith("The model turbo could not be downloaded, so base (bundled, "
                                     "multilingual) transcribes and translates instead")
    assert body["missing"] == [{"model": "turbo", "reason": model_menu.MISSING_REASON,
                                "stand_in": BUNDLED_BASE}]
    assert "/" not in body["notice"] + body["missing"][0]["reason"]  # no server path, no URL


def test_the_menus_list_what_can_run_and_mark_what_cannot(offline_app):
    client = offline_app.test_client()
    offline_app.extensions["whisper_service"].models.preload()  # turbo found missing
    listing = client.get("/api/v1/models").get_json()
    by_id = {m["id"]: m for m in listing["models"]}
    assert list(by_id) == ["turbo", "bundled-base", "bundled"]
    assert by_id["turbo"] == {
        "id": "turbo", "label": "turbo", "available": False, "reason": model_menu.MISSING_REASON,
        "stand_in": BUNDLED_BASE, "download_gb": None, "english_only": False, "translates": False}
    assert by_id["bundled-base"]["available"] and by_id["bundled-base"]["translates"]
    assert by_id["bundled"]["english_only"] is True and by_id["bundled"]["translates"] is False
    assert listing["missing"][0]["model"] == "turbo"

    openai = {m["id"]: m for m in client.get("/v1/models").get_json()["data"]}
    assert list(openai) == ["whisper-1", "turbo", "bundled-base", "bundled"]
    assert (openai["whisper-1"]["available"], openai["whisper-1"]["stand_in"]) == (False, BUNDLED_BASE)
    assert openai["bundled-base"]["label"] == "base (bundled, multilingual)"

    for page in (client.get("/").get_data(as_text=True), client.get("/live").get_data(as_text=True)):
        assert ('<option value="turbo" disabled data-english-only="false">turbo (not on this '
                'server: base (bundled, multilingual) runs instead)</option>') in page
        assert ('<option value="bundled-base" selected data-english-only="false">base (bundled, '
                'multilingual)</option>') in page
        assert ('<option value="bundled" data-english-only="true">tiny.en (bundled, English '
                'only)</option>') in page
        assert "first use downloads" not in page
        assert "choices.js" in page  # the language list follows the chosen model
    script = client.get("/static/choices.js").get_data(as_text=True)
    assert 'dataset.englishOnly === "true"' in script


def test_translation_through_the_openai_api_gives_english_words(offline_app, spanish):
    client = offline_app.test_client()
    with open(spanish, "rb") as f:
        response = client.post("/v1/audio/translations", content_type="multipart/form-data",
                               data={"file": (f, "spanish.wav"), "model": "whisper-1",
                                     "beam_size": "5"})
    assert response.status_code == 200, response.get_data(as_text=True)
    text = response.get_json()["text"]
    assert len(found(ENGLISH_WORDS, text)) >= 3, text


def test_the_native_api_transcribes_french_and_says_which_model_stood_in(offline_app, french, spanish):
    client = offline_app.test_client()
    response = client.post("/api/v1/transcriptions", data={
        "file": (io.BytesIO(french.read_bytes()), "french.wav"), "language": "French",
        "beam_size": "5"})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["language"], body["model"]) == ("fr", BUNDLED_BASE)
    assert len(found(FRENCH_WORDS, body["text"])) >= 3, body["text"]
    job = client.get(f"/api/v1/jobs/{body['job_id']}").get_json()
    assert job["model_label"] == "base (bundled, multilingual)"
    assert job["stand_in"] == ("base (bundled, multilingual) stood in for turbo, which this "
                               "server could not download.")

    detected = client.post("/api/v1/detect-language", data={
        "file": (io.BytesIO(spanish.read_bytes()), "spanish.wav")}).get_json()
    assert (detected["language"], detected["language_name"]) == ("es", "spanish")
