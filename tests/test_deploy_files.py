"""Dockerfile, spec.yaml, docker-compose.yml, gunicorn.conf.py, the Makefile, the README and
the app's config must agree on the port, the health paths, the command and the env names."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from whisper_service.config import Settings, env_name

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["gunicorn", "-c", "gunicorn.conf.py"]


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load(read("spec.yaml"))


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(read("docker-compose.yml"))["services"]["whisper"]


def dockerfile_env() -> dict:
    """Names and values of the Dockerfile's ENV instructions (continuation lines joined)."""
    text = read("Dockerfile").replace("\\\n", " ")
    pairs = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            pairs.update(re.findall(r"(\w+)=(\S+)", line))
    return pairs


def known_variables() -> set:
    app = {env_name(f.name) for f in fields(Settings)}
    server = set(re.findall(r'os\.environ\.get\("(WHISPER_\w+)"', read("gunicorn.conf.py")))
    assert server, "gunicorn.conf.py reads its settings from WHISPER_* variables"
    return app | server


def test_one_port_everywhere(spec, compose):
    gunicorn_port = re.search(r'"WHISPER_PORT", "(\d+)"', read("gunicorn.conf.py")).group(1)
    expose = re.search(r"^EXPOSE (\d+)\b", read("Dockerfile"), re.M).group(1)
    healthcheck = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", read("Dockerfile")).group(1)
    ports = {
        "gunicorn.conf.py": gunicorn_port,
        "Dockerfile EXPOSE": expose,
        "Dockerfile HEALTHCHECK": healthcheck,
        "Dockerfile WHISPER_PORT": dockerfile_env()["WHISPER_PORT"],
        "spec.yaml port": str(spec["port"]),
        "spec.yaml resources.ports": str(spec["resources"]["ports"][0]),
        "compose container port": compose["ports"][0].rsplit(":", 1)[1],
        "compose WHISPER_PORT": str(compose["environment"]["WHISPER_PORT"]),
        **{f"spec.yaml {name} check": str(check["port"]) for name, check in spec["healthChecks"].items()},
    }
    assert set(ports.values()) == {"8000"}, ports


def test_health_paths_exist_and_agree(spec, app):
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    checks = spec["healthChecks"]
    assert checks["liveness"]["path"] == checks["startup"]["path"] == "/healthz"
    assert checks["readiness"]["path"] == "/readyz"
    assert "/healthz" in read("Dockerfile")
    assert {"/healthz", "/readyz"} <= routes
    assert spec["resources"]["machineType"] and spec["resources"]["replicas"] >= 1
    assert spec["image"] and spec["apiVersion"] == "v1"


def test_the_same_gunicorn_command_runs_everywhere():
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", read("Dockerfile"), re.M).group(1))
    assert cmd == COMMAND
    assert re.search(r"bin/gunicorn -c gunicorn\.conf\.py$", read("Makefile"), re.M)
    assert '"gunicorn", "-c", "gunicorn.conf.py"' in read("tests/e2e/server.py")
    assert "preload_app = False" in read("gunicorn.conf.py")


def compose_services() -> dict:
    return yaml.safe_load(read("docker-compose.yml"))["services"]


def test_env_names_are_one_set(spec):
    known = known_variables()
    documented = set(re.findall(r"^\| `(WHISPER_\w+)` \|", read("README.md"), re.M))
    assert documented == known, (sorted(known - documented), sorted(documented - known))
    sources = [
        ("Dockerfile", set(k for k in dockerfile_env() if k.startswith("WHISPER_"))),
        ("spec.yaml", {entry["name"] for entry in spec["env"]}),
    ]
    # every service of the compose file that runs this image: the single host, and the
    # many-hosts profile's web host and workers
    ours = {name: service for name, service in compose_services().items()
            if name == "whisper" or service.get("image") == "whisper-service"}
    assert {"whisper", "web", "worker"} <= set(ours), sorted(ours)
    sources += [(f"docker-compose.yml {name}", set(service["environment"]))
                for name, service in ours.items()]
    for source, names in sources:
        assert names, source
        assert names <= known, (source, sorted(names - known))


def test_the_many_hosts_profile_runs_roles_that_exist():
    from whisper_service.cli.main import WORKER

    services = compose_services()
    assert services["web"]["environment"]["WHISPER_ROLE"] == "web"
    assert "postgresql://" in services["worker"]["environment"]["WHISPER_DATABASE_URL"]
    assert services["worker"]["command"] == ["python", "-m", "whisper_service", WORKER]


SAGEMAKER_PORT = "8080"
FAKE_GUNICORN = """#!/bin/sh
echo "$WHISPER_HOST:$WHISPER_PORT gunicorn $*"
"""


def entrypoint(tmp_path, *args, **env):
    """Run the image's entrypoint with a stand-in gunicorn that prints what it was given."""
    (tmp_path / "gunicorn").write_text(FAKE_GUNICORN)
    (tmp_path / "gunicorn").chmod(0o755)
    environment = {"PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin", "WHISPER_HOST": "127.0.0.1",
                   "WHISPER_PORT": "8000", **env}
    done = subprocess.run([str(ROOT / "docker-entrypoint.sh"), *args], env=environment,
                          capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def test_sagemaker_serve_runs_the_same_server_on_8080(app, tmp_path):
    dockerfile = read("Dockerfile")
    assert json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1)) == [
        "./docker-entrypoint.sh"]
    assert re.search(r"^COPY .*\bdocker-entrypoint\.sh\b", dockerfile, re.M)
    assert SAGEMAKER_PORT in re.search(r"^EXPOSE (.*)$", dockerfile, re.M).group(1).split()
    assert f"http://127.0.0.1:{SAGEMAKER_PORT}/healthz" in dockerfile
    # `docker run IMAGE serve`, as SageMaker starts it: gunicorn on every address, port 8080
    assert entrypoint(tmp_path, "serve") == f"0.0.0.0:{SAGEMAKER_PORT} gunicorn -c gunicorn.conf.py"
    assert entrypoint(tmp_path, "serve", SAGEMAKER_BIND_TO_PORT="9090").startswith("0.0.0.0:9090 ")
    # the CMD, and any other command, runs as given
    assert entrypoint(tmp_path, *COMMAND) == "127.0.0.1:8000 gunicorn -c gunicorn.conf.py"
    assert entrypoint(tmp_path, "echo", "hello") == "hello"
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/ping", "/invocations"} <= routes


def test_nginx_never_reuses_a_connection_gunicorn_is_closing(tmp_path):
    """nginx keeps connections to gunicorn open between requests; one that gunicorn closes
    for idleness just as nginx sends on it is a 502 (seen in a two-worker run)."""
    from web.http import proxy

    config = proxy.ProxyConfig(host="127.0.0.1", port=8000, upstream_socket=str(tmp_path / "s"),
                               folder=str(tmp_path), max_upload_mb=10, read_timeout=60)
    upstream = re.search(r"upstream app \{(.*?)\}", proxy.render(config), re.S).group(1)
    nginx_idle = int(re.search(r"keepalive_timeout (\d+)s;", upstream).group(1))
    assert "keepalive 16;" in upstream
    assert "keepalive = proxy.GUNICORN_KEEPALIVE_SECONDS" in read("gunicorn.conf.py")
    assert nginx_idle < proxy.GUNICORN_KEEPALIVE_SECONDS
