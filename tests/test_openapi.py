"""The OpenAPI document: valid, the same as the app's routes, true to the code's answers."""

from __future__ import annotations

import io
import re

import jsonschema_rs
import pytest
import schemathesis
from openapi_spec_validator import validate

from web.api import openai_compat
from web.api.openapi import document
from whisper_service.options import OPTION_NAMES, TranscribeOptions

API_PREFIXES = ("/api/", "/v1/", "/invocations", "/readyz", "/healthz", "/ping")
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}  # Flask adds them to every route
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
FAST = {"temperature": "0", "beam_size": "greedy", "language": "en"}


def documented(path, method, status, content_type="application/json"):
    """A validator for the schema the document gives this answer."""
    response = document()["paths"][path][method]["responses"][str(status)]
    schema = response["content"][content_type]["schema"]
    # the whole document rides along, so "#/components/..." references resolve
    return jsonschema_rs.Draft202012Validator({**schema, "components": document()["components"]})


def test_document_is_valid_openapi():
    schemathesis.openapi.from_dict(document()).validate()  # the OpenAPI 3.1 meta-schema
    for name, schema in document()["components"]["schemas"].items():
        jsonschema_rs.meta.validate({"$schema": DRAFT_2020_12, **schema})


def test_document_passes_openapi_spec_validator():
    # the validator client generators use; it reported OpenAIUpload.prompt (a string with a
    # null default) before
    validate(document())


def test_interactive_docs_are_served_from_the_package_without_inline_script(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/' in attributes and not body.strip()
                           for attributes, body in scripts)  # files of this server, no inline
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', html))  # no CDN
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', html):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/docs/assets/index.html").status_code == 404  # only what the page uses


def test_document_is_served_without_a_key(checkpoint, tmp_path):
    from conftest import make_app

    app = make_app(checkpoint, tmp_path, WHISPER_API_KEYS="k1")
    try:
        response = app.test_client().get("/api/openapi.json")
        assert response.status_code == 200
        assert response.get_json() == document()
    finally:
        app.extensions["whisper_jobs"].stop()


def test_document_names_every_route_and_no_other(app):
    served = set()
    for rule in app.url_map.iter_rules():
        # WebSockets (live captions) are no HTTP API: the README documents their protocols
        if rule.rule.startswith(API_PREFIXES) and not rule.websocket:
            path = re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule.rule)
            served |= {(path, method.lower()) for method in rule.methods - IMPLICIT_METHODS}
    described = {
        (path, method)
        for path, item in document()["paths"].items()
        for method in item if method != "parameters"
    }
    assert served == described


def test_options_schema_is_every_option_with_the_real_defaults():
    properties = document()["components"]["schemas"]["TranscriptionUpload"]["properties"]
    assert set(properties) == {"file", *OPTION_NAMES}
    assert all(properties[name].get("description") for name in OPTION_NAMES)
    defaults = {name: p["default"] for name, p in properties.items() if "default" in p}
    assert TranscribeOptions.from_mapping(defaults) == TranscribeOptions()
    assert properties["beam_size"]["type"] == ["integer", "null", "string"]
    assert properties["temperature"]["default"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_openai_fields_are_those_the_endpoint_reads():
    upload = document()["components"]["schemas"]["OpenAIUpload"]["properties"]
    assert set(upload) == {*openai_compat.OPENAI_FIELDS, *openai_compat.EXTRA_FIELDS}
    assert upload["response_format"]["enum"] == ["json", "text", "srt", "verbose_json", "vtt",
                                                 "diarized_json"]


def test_answers_match_their_documented_schemas(client, media):
    with open(media["speech.wav"], "rb") as f:
        data = {"file": (io.BytesIO(f.read()), "speech.wav"), **FAST}
    answer = client.post("/api/v1/transcriptions", data=data)
    assert answer.status_code == 200
    documented("/api/v1/transcriptions", "post", 200).validate(answer.get_json())
    job_url = "/api/v1/jobs/" + answer.get_json()["job_id"]
    documented("/api/v1/jobs/{job_id}", "get", 200).validate(client.get(job_url).get_json())
    documented("/api/v1/jobs/{job_id}/transcript.{fmt}", "get", 200,
               "application/json; charset=utf-8").validate(
        client.get(job_url + "/transcript.json").get_json())
    with open(media["speech.wav"], "rb") as f:
        detected = client.post("/api/v1/detect-language",
                               data={"file": (io.BytesIO(f.read()), "speech.wav")})
    documented("/api/v1/detect-language", "post", 200).validate(detected.get_json())
    documented("/api/v1/models", "get", 200).validate(client.get("/api/v1/models").get_json())
    documented("/readyz", "get", 200).validate(client.get("/readyz").get_json())
    documented("/healthz", "get", 200).validate(client.get("/healthz").get_json())
    documented("/v1/models", "get", 200).validate(client.get("/v1/models").get_json())
    missing = client.get("/api/v1/jobs/" + "A" * 22)
    documented("/api/v1/jobs/{job_id}", "get", 404).validate(missing.get_json())


@pytest.mark.parametrize("answer", [
    {"error": {"code": "x", "message": "y"}},  # no field
    {"status": "ok"},
])
def test_the_checks_can_fail(answer):
    with pytest.raises(jsonschema_rs.ValidationError):
        documented("/api/v1/jobs/{job_id}", "get", 404).validate(answer)
