"""The official `openai` client against the app served for real on loopback."""

from __future__ import annotations

import re

import openai
import pytest
from openai import OpenAI

from conftest import make_app, serving

API_KEY = "k1"
# temperature 0 alone means the fallback schedule (OpenAI's semantics), through which a
# random-weight model falls every time; one greedy decode keeps each call well under a second
FAST = {"temperature_increment_on_fallback": 0, "beam_size": "greedy"}
SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n.+", re.S)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    app = make_app(checkpoint, tmp_path_factory.mktemp("openai-e2e"), WHISPER_API_KEYS=API_KEY)
    with serving(app) as base:
        yield app, base


@pytest.fixture(scope="module")
def client(server):
    # no retries: a refused request must fail once, and fast
    return OpenAI(base_url=f"{server[1]}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def transcribe(client, path, **kwargs):
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", temperature=0,
            extra_body={**FAST, **kwargs.pop("extra_body", {})}, **kwargs,
        )


def test_json(client, media):
    result = transcribe(client, media["speech.mp3"], response_format="json")
    assert isinstance(result, openai.types.audio.Transcription)
    assert result.text.strip() and result.usage.type == "duration" and result.usage.seconds >= 8


def test_text_srt_vtt_are_strings(client, media):
    text = transcribe(client, media["speech.wav"], response_format="text")
    assert isinstance(text, str) and text.endswith("\n") and text.strip()
    srt = transcribe(client, media["speech.wav"], response_format="srt")
    cues = srt.strip().split("\n\n")
    assert cues and all(SRT_CUE.match(cue) for cue in cues)
    vtt = transcribe(client, media["speech.wav"], response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(cues)


def test_verbose_json_with_words_and_segments(client, media):
    result = transcribe(client, media["speech.wav"], response_format="verbose_json",
                        timestamp_granularities=["word", "segment"])
    assert isinstance(result, openai.types.audio.TranscriptionVerbose)
    assert result.language == "english"
    assert result.duration == pytest.approx(8.0, abs=0.5)
    assert result.segments and result.segments[0].id == 0
    assert all(s.start <= s.end and isinstance(s.tokens, list) for s in result.segments)
    assert result.words and all(w.start <= w.end and w.word for w in result.words)
    plain = transcribe(client, media["speech.wav"], response_format="verbose_json")
    assert plain.segments and plain.words is None  # segments only, as OpenAI's default


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # whisper-1 is, at OpenAI
def test_translation(client, media):
    with open(media["speech.wav"], "rb") as f:
        result = client.audio.translations.create(
            model="whisper-1", file=f, response_format="verbose_json", temperature=0,
            extra_body=FAST,
        )
    assert isinstance(result, openai.types.audio.TranslationVerbose)
    assert result.language == "english" and result.task == "translate"
    assert result.text.strip()


def test_our_decoding_options_reach_the_job(client, server, media):
    with open(media["speech.wav"], "rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=f, language="en", temperature=0,
            extra_body={"beam_size": 2, "patience": 2, "temperature_increment_on_fallback": 0},
        )
    assert raw.parse().text.strip()
    job = server[0].extensions["whisper_jobs"].get(raw.headers["X-Job-Id"])
    assert (job.options.beam_size, job.options.patience) == (2, 2.0)
    assert job.options.temperature == (0.0,)
    assert job.options.model == server[0].extensions["whisper_service"].models.default


def test_models(client, server):
    ids = [model.id for model in client.models.list()]
    assert ids[:2] == ["whisper-1", server[0].extensions["whisper_service"].models.default]
    assert client.models.retrieve("whisper-1").owned_by == "whisper-service"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-transcribe")


def test_wrong_key(server, media):
    wrong = OpenAI(base_url=f"{server[1]}/v1", api_key="k2", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "api_key_required"


def test_errors_carry_our_message_and_field(client, media):
    with pytest.raises(openai.BadRequestError) as caught:  # 400, as OpenAI's own API
        transcribe(client, media["notes.mp3"])
    error = caught.value
    assert error.status_code == 400
    assert (error.param, error.code) == ("file", "not_media")
    assert "'notes.mp3' is not an audio or video file" in error.message
    with pytest.raises(openai.BadRequestError) as caught:
        transcribe(client, media["speech.wav"], extra_body={"beamsize": 2})  # a typo
    assert caught.value.param == "beamsize"
    with pytest.raises(openai.BadRequestError) as caught, open(media["speech.wav"], "rb") as f:
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=f)
    assert caught.value.param == "model" and "whisper-1" in caught.value.message
