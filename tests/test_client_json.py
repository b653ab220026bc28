"""Client JSON goes through one guarded parser (web/http/client_json.py): JSON nested
thousands deep in a live WebSocket text frame is answered with the protocol's error event
(`bad_frame` on /api/live, `invalid_json` on /v1/realtime) and the session goes on; in an
HTTP body it is 400 in the API's error shape; and no other parser of client JSON is left."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from websockets.sync.client import connect

from conftest import make_app, serving
from web.http.client_json import MAX_DEPTH, BadJson, parse_client_json

ROOT = Path(__file__).resolve().parents[1]
DEEP = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"type": ' * 3000 + '"stop"' + "}" * 3000


def nested(depth: int) -> str:
    return "[" * (depth - 1) + "{}" + "]" * (depth - 1)


def test_the_parser_takes_json_up_to_the_depth_and_refuses_deeper_or_broken():
    assert parse_client_json('{"type": "stop", "a": [1, {"b": null}]}') == {
        "type": "stop", "a": [1, {"b": None}]}
    assert parse_client_json(b'[1, 2]') == [1, 2]
    assert parse_client_json(nested(MAX_DEPTH)) is not None
    for text in (nested(MAX_DEPTH + 1), DEEP, DEEP_OBJECT, "[" * 200_000):
        with pytest.raises(BadJson, match=f"nested too deeply \\(more than {MAX_DEPTH} levels"):
            parse_client_json(text)
    for text in ("{", "stop", b"\xff\xfe\xfa", "1" * 5000, ""):
        with pytest.raises(BadJson, match="not valid JSON"):
            parse_client_json(text)


@pytest.mark.parametrize("url,shape", [("/api/v1/transcriptions", "field"),
                                       ("/api/v1/detect-language", "field"),
                                       ("/invocations", "field")])
def test_an_http_body_nested_past_the_depth_is_400_in_the_apis_shape(client, url, shape):
    for body in (nested(MAX_DEPTH + 1), DEEP_OBJECT):
        answer = client.post(url, data=body, content_type="application/json")
        assert answer.status_code == 400, answer.data[:300]
        error = answer.get_json()["error"]
        assert shape in error
        assert "nested too deeply (more than 32 levels" in error["message"]


def test_no_other_parser_of_json_in_the_web_layer():
    """The web layer parses JSON only in client_json.py (request.get_json() goes there
    through the app's JSON provider)."""
    found = []
    for path in sorted((ROOT / "web").rglob("*.py")):
        if path.name == "client_json.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr in ("loads", "load", "JSONDecoder")
                    and isinstance(node.value, ast.Name) and node.value.id in ("json", "simplejson")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "json":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


@pytest.fixture(scope="module")
def live_base(checkpoint, tmp_path_factory):
    """The app in-process (no model is loaded: the sessions are told nothing is said)."""
    app = make_app(checkpoint, tmp_path_factory.mktemp("live-json"))
    with serving(app) as base:
        yield base.replace("http://", "ws://")


def test_native_frames_nested_thousands_deep_are_bad_frames_and_the_session_goes_on(live_base):
    with connect(live_base + "/api/live") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        for frame in (DEEP, DEEP_OBJECT, nested(MAX_DEPTH + 1)):
            ws.send(frame)
            error = json.loads(ws.recv(timeout=30))
            assert (error["type"], error["code"]) == ("error", "bad_frame"), error
            assert "nested too deeply" in error["message"]
        ws.send(json.dumps({"type": "commit"}))  # still open, and still taking messages
        ws.send(json.dumps({"type": "stop"}))
        done = json.loads(ws.recv(timeout=30))
        assert done["type"] == "done" and done["job"] is None


def test_realtime_events_nested_thousands_deep_are_invalid_json_and_the_session_goes_on(
        live_base):
    with connect(live_base + "/v1/realtime?intent=transcription") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        for frame in (DEEP, DEEP_OBJECT):
            ws.send(frame)
            event = json.loads(ws.recv(timeout=30))
            assert event["type"] == "error", event
            assert event["error"]["code"] == "invalid_json"
            assert "nested too deeply" in event["error"]["message"]
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "input_audio_buffer.cleared"
