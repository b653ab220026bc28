"""Property-based fuzzing: schemathesis drives every documented operation from the OpenAPI
document, and hypothesis sends option values with a real recording; nothing may answer 5xx.

Both are bounded to stay under a minute on two cores: few examples per operation, greedy
decoding at temperature 0 wherever the model runs, and no models that would be downloaded.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.checks import not_a_server_error

from conftest import make_app
from web.api.openapi import document
from whisper_service.options import OPTION_NAMES
from whisper_service.writers import FORMATS

SCHEMA_EXAMPLES = 15  # per operation
OPTION_EXAMPLES = 40
schema = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def fuzz_app(checkpoint, tmp_path_factory):
    app = make_app(checkpoint, tmp_path_factory.mktemp("fuzz"))
    models = app.extensions["whisper_service"].models
    models.get(models.default)  # loaded, so /readyz answers 200 rather than 503 "loading"
    yield app
    app.extensions["whisper_jobs"].stop()


@schema.parametrize()
@settings(max_examples=SCHEMA_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case, fuzz_app):
    # generated files are never usable audio, so no operation here reaches the model
    case.call_and_validate(app=fuzz_app, checks=[not_a_server_error])


# --- options with a real recording ---------------------------------------------------------

WORDS = st.sampled_from(["", "none", "auto", "greedy", "true", "off", "1e400", "nan", "-0", " 2 "])
BY_TYPE = {
    "integer": st.integers(-1, 3),  # mostly in range, so the model runs
    "number": st.floats(-1.5, 3.0) | st.sampled_from([float("nan"), float("inf"), 1e300]),
    "boolean": st.booleans(),
    "string": st.text(max_size=6) | WORDS,
    "null": st.none(),
    "array": st.lists(st.floats(0, 1), max_size=2),
}
# where random values would be slow (a download, a long fallback schedule) or never valid
CHOSEN = {"model": st.sampled_from(["", "tiny", "../etc/passwd"]),
          "task": st.sampled_from(["transcribe", "translate", "TRANSCRIBE", "sing"]),
          "language": st.sampled_from(["en", "English", "ko", "auto", "", "xx"])}
ALWAYS = {"temperature": st.just("0")}  # no fallback schedule: the model runs once
SKIPPED = {"temperature_increment_on_fallback", *ALWAYS}


def option_values() -> st.SearchStrategy:
    """Any subset of the options, each valued after the types the document gives it."""
    properties = document()["components"]["schemas"]["TranscriptionBody"]["properties"]
    by_type = {
        name: st.one_of(*(BY_TYPE[t] for t in properties[name]["type"]))
        for name in OPTION_NAMES if name not in SKIPPED
    }
    return st.fixed_dictionaries(ALWAYS, optional={**by_type, **CHOSEN})


def as_form(value) -> str:
    return json.dumps(value) if isinstance(value, (bool, list)) else str(value)


@given(options=option_values(), as_json=st.booleans())
@settings(max_examples=OPTION_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_options_with_real_media_never_answer_5xx(fuzz_app, media, options, as_json):
    client = fuzz_app.test_client()
    audio = media["speech.wav"].read_bytes()
    if as_json:
        body = {"audio": base64.b64encode(audio).decode(), **options}
        response = client.post("/api/v1/transcriptions", json=body)
    else:
        form = {k: as_form(v) for k, v in options.items() if v is not None}
        response = client.post("/api/v1/transcriptions",
                               data={"file": (io.BytesIO(audio), "speech.wav"), **form})
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    if response.status_code == 400:
        assert response.get_json()["error"]["field"], response.get_json()
        return
    # the subtitle layout options show only in the files: write every format
    job_url = "/api/v1/jobs/" + response.get_json()["job_id"]
    for fmt in FORMATS:
        assert client.get(f"{job_url}/transcript.{fmt}").status_code == 200
