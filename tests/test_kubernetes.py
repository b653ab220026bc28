"""deploy/kubernetes: every overlay renders with `kubectl kustomize`, validates against the
Kubernetes schemas (and KEDA's CRD for the ScaledObject), and agrees with the service: each
WHISPER_* name is a setting and the values parse, ports, probe paths, the image, the command
and the graceful drain are the app's, each worker holds one GPU, and the autoscaler's query
reads the queue that the store and /metrics really report."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Dict, List
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import make_app, wait_until
from test_jobs import Blocker, backend, make_queue, root, submit_bytes  # noqa: F401
from whisper_service import metrics
from whisper_service.cli.main import WORKER
from whisper_service.config import ConfigError, Settings, env_name
from whisper_service.queue.worker import DEFAULT_GRACEFUL_SECONDS, parse_devices

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
# an older release that managed clusters still run (everything the manifests use, such as
# PodDisruptionBudget policy/v1, is older still), and the newest release whose schemas
# kubernetes-validate carries
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KEDA_CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"
NAMESPACE = "whisper"
GPU = "nvidia.com/gpu"
GRACE_SLACK = 5  # seconds a pod needs past its drain to exit; more than 30 past it is waste
# the metadata each KEDA scaler reads (kedacore/keda v2.20.2, pkg/scalers): a misspelt key
# is ignored by KEDA, so it is refused here
KEDA_TRIGGERS = {
    "prometheus": {"required": {"serverAddress", "query", "threshold"},
                   "allowed": {"serverAddress", "query", "threshold", "activationThreshold",
                               "namespace", "ignoreNullValues", "unsafeSsl", "timeout"}},
    "postgresql": {"required": {"query", "targetQueryValue"},
                   "allowed": {"query", "targetQueryValue", "activationTargetQueryValue",
                               "connectionFromEnv", "host", "port", "userName", "dbName",
                               "sslmode", "passwordFromEnv"}},
}


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed: `make test-deps` installs Debian's "
                    "kubernetes-client, whose `kubectl kustomize` renders the manifests",
                    pytrace=False)
    return found


def render(folder: Path) -> List[dict]:
    done = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    """(name, the rendered resources) of each overlay."""
    return request.param, render(KUBERNETES / "overlays" / request.param)


def one(docs: List[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [(d["kind"], d["metadata"]["name"]) for d in docs])
    return found[0]


def deployment(docs: List[dict], name: str) -> dict:
    return one(docs, "Deployment", name)


def container(docs: List[dict], name: str) -> dict:
    (only,) = deployment(docs, name)["spec"]["template"]["spec"]["containers"]
    return only


def config_map(docs: List[dict], spec: dict) -> Dict[str, str]:
    """The data of the ConfigMap a container reads whole (envFrom)."""
    (name,) = [source["configMapRef"]["name"] for source in spec.get("envFrom", [])
               if "configMapRef" in source]
    return one(docs, "ConfigMap", name)["data"]


def environment(docs: List[dict], spec: dict) -> Dict[str, object]:
    """A container's variables: the ConfigMap's, then its own (a value, or its source)."""
    found: Dict[str, object] = dict(config_map(docs, spec))
    for entry in spec.get("env", []):
        found[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return found


def secret_data(docs: List[dict], name: str) -> Dict[str, str]:
    return (one(docs, "Secret", name).get("stringData") or {})


def known_variables() -> set:
    """The configuration table: the app's settings and the server's own (gunicorn.conf.py)."""
    server = set(re.findall(r'os\.environ\.get\("(WHISPER_\w+)"', read("gunicorn.conf.py")))
    assert "WHISPER_GRACEFUL_TIMEOUT" in server
    return {env_name(f.name) for f in fields(Settings)} | server


# --- rendering and schemas ----------------------------------------------------------------


def test_there_are_the_two_overlays_and_each_renders_the_whole_service(overlay):
    name, docs = overlay
    assert set(OVERLAYS) == {"one-gpu-node", "fleet"}
    kinds = sorted((d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])) for d in docs)
    assert kinds == sorted([
        ("ConfigMap", "whisper-config"), ("Deployment", "whisper-web"),
        ("Deployment", "whisper-worker"), ("PodDisruptionBudget", "whisper-web"),
        ("PodDisruptionBudget", "whisper-worker"), ("ScaledObject", "whisper-worker"),
        ("Secret", "whisper-object-store"), ("Secret", "whisper-secrets"),
        ("Service", "whisper-web"),
    ]), name
    assert {d["metadata"].get("namespace") for d in docs} == {NAMESPACE}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_validates_against_the_kubernetes_schemas(overlay, version):
    name, docs = overlay
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # not Kubernetes' own: its CRD's schema, below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} at "
                        f"{'.'.join(map(str, error.path))}: {error.message}", pytrace=False)
        checked += 1
    assert checked == len(docs) - 1


def strict(schema):
    """An openAPIV3Schema that refuses unknown fields, as the API server's strict field
    validation does (kubectl's default): every object with properties and no
    additionalProperties gets additionalProperties: false."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node \
                    and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def keda_schema():
    crd = next(d for d in yaml.safe_load_all(KEDA_CRD.read_text(encoding="utf-8")) if d)
    assert crd["spec"]["names"]["kind"] == "ScaledObject"
    (version,) = crd["spec"]["versions"]
    return f"{crd['spec']['group']}/{version['name']}", strict(version["schema"]["openAPIV3Schema"])


def test_the_keda_schema_check_can_fail(keda_schema):
    api_version, schema = keda_schema
    good = {"apiVersion": api_version, "kind": "ScaledObject", "metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"name": "x"},
                     "triggers": [{"type": "cpu", "metadata": {"value": "50"}}]}}
    jsonschema.validate(good, schema)
    misspelt = copy.deepcopy(good)
    misspelt["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        jsonschema.validate(misspelt, schema)
    unquoted = copy.deepcopy(good)
    unquoted["spec"]["triggers"][0]["metadata"]["value"] = 50
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(unquoted, schema)


def test_the_scaled_object_validates_against_kedas_crd_and_scaler(overlay, keda_schema):
    name, docs = overlay
    api_version, schema = keda_schema
    scaled = one(docs, "ScaledObject", "whisper-worker")
    assert scaled["apiVersion"] == api_version
    jsonschema.validate(scaled, schema)
    spec = scaled["spec"]
    # the CRD's CEL rule, which jsonschema does not run
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # it scales the worker Deployment, from zero: a queued job wakes one
    assert spec["scaleTargetRef"]["name"] == "whisper-worker"
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    deployment(docs, "whisper-worker")
    assert spec["minReplicaCount"] == 0
    (trigger,) = spec["triggers"]
    keys = KEDA_TRIGGERS[trigger["type"]]
    assert keys["required"] <= set(trigger["metadata"]) <= keys["allowed"], trigger
    assert float(trigger["metadata"].get("activationThreshold",
                                         trigger["metadata"].get("activationTargetQueryValue", 0))) == 0
    if trigger["type"] == "postgresql":  # the connection the workers themselves use
        source = trigger["metadata"]["connectionFromEnv"]
        assert source in environment(docs, container(docs, "whisper-worker"))
        assert source == env_name("database_url")


# --- the service's own settings -------------------------------------------------------------


def test_every_whisper_name_is_a_setting_in_the_configuration_table(overlay):
    name, docs = overlay
    known = known_variables()
    documented = set(re.findall(r"^\| `(WHISPER_\w+)` \|", read("README.md"), re.M))
    assert known <= documented
    text = json.dumps(docs)
    used = set(re.findall(r"\bWHISPER_[A-Z0-9_]+", text))
    assert {"WHISPER_ROLE", "WHISPER_DATABASE_URL", "WHISPER_GRACEFUL_TIMEOUT"} <= used
    assert used <= known, (name, sorted(used - known))
    # and the table is not read wider than it is: a name it lacks is caught
    assert "WHISPER_NOT_A_SETTING" not in known


def settings_of(docs: List[dict], name: str, tmp_path: Path) -> Settings:
    """Settings.from_env of a container's variables as its pod would see them: the Secret's
    files where they are mounted, the database URL left out (it is the Secret's)."""
    spec = container(docs, name)
    variables = {k: v for k, v in environment(docs, spec).items()
                 if k.startswith("WHISPER_") and isinstance(v, str)}
    mounts = {m["name"]: m["mountPath"] for m in spec.get("volumeMounts", [])}
    volumes = deployment(docs, name)["spec"]["template"]["spec"]["volumes"]
    for volume in volumes:
        source = volume.get("secret")
        if source is None or volume["name"] not in mounts:
            continue
        data = secret_data(docs, source["secretName"])
        for item in source["items"]:
            path = mounts[volume["name"]] + "/" + item["path"]
            local = tmp_path / volume["name"] / item["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(data[item["key"]], encoding="utf-8")
            variables = {k: (str(local) if v == path else v) for k, v in variables.items()}
    return Settings.from_env(variables)


def test_the_web_pods_settings_parse_and_refuse_to_start_without_an_api_key(overlay, tmp_path):
    name, docs = overlay
    # the Secret as shipped holds no key: the web pod stops at start, naming the setting
    with pytest.raises(ConfigError, match="WHISPER_API_KEY_FILE"):
        settings_of(docs, "whisper-web", tmp_path / "placeholder")
    docs = copy.deepcopy(docs)
    secret = one(docs, "Secret", "whisper-secrets")["stringData"]
    secret["api-keys"] += "a-real-key\n"
    settings = settings_of(docs, "whisper-web", tmp_path / "filled")
    assert settings.api_keys == ("a-real-key",)
    assert settings.role == "web" and settings.web_ui == "key"
    assert settings.data_dir == "/data"
    # the ingress, a pod, is believed about the client; the public internet is not
    assert any(ipaddress.ip_address("10.244.1.7") in ipaddress.ip_network(n)
               for n in settings.trusted_proxies)
    assert not any(ipaddress.ip_address("203.0.113.9") in ipaddress.ip_network(n)
                   for n in settings.trusted_proxies)


def test_the_database_url_placeholder_is_a_postgresql_url_that_fails_closed(overlay):
    name, docs = overlay
    url = secret_data(docs, "whisper-secrets")["database-url"]
    assert Settings.from_env({"WHISPER_DATABASE_URL": url}).database_url == url
    assert "REPLACE-ME" in url  # no password that could be the real one
    # KEDA runs in a namespace of its own and may read the queue over this URL: a host name
    # valid only inside the pods' namespace would not resolve there
    assert "." in urlsplit(url).hostname
    for part in ("whisper-web", "whisper-worker"):
        source = environment(docs, container(docs, part))["WHISPER_DATABASE_URL"]
        assert source == {"secretKeyRef": {"name": "whisper-secrets", "key": "database-url"}}


def test_object_store_credentials_are_optional(overlay):
    name, docs = overlay
    assert secret_data(docs, "whisper-object-store") == {}
    for part in ("whisper-web", "whisper-worker"):
        refs = [s["secretRef"] for s in container(docs, part)["envFrom"] if "secretRef" in s]
        assert refs == [{"name": "whisper-object-store", "optional": True}]


def test_the_worker_holds_one_gpu_and_runs_one_model_on_it(overlay, tmp_path):
    name, docs = overlay
    spec = container(docs, "whisper-worker")
    resources = spec["resources"]
    assert str(resources["limits"][GPU]) == "1" and str(resources["requests"][GPU]) == "1"
    settings = settings_of(docs, "whisper-worker", tmp_path)
    devices = parse_devices(environment(docs, spec)["WHISPER_DEVICES"], settings.device)
    assert devices == ["cuda:0"]
    assert settings.role == "all"
    # KEDA owns the count: a replicas field would be put back by every apply
    assert "replicas" not in deployment(docs, "whisper-worker")["spec"]
    web = container(docs, "whisper-web")
    assert GPU not in json.dumps(web["resources"])
    assert environment(docs, web)["WHISPER_DEVICES"] == "cpu"


def test_overlay_sizes(overlay):
    name, docs = overlay
    web = deployment(docs, "whisper-web")["spec"]["replicas"]
    most = one(docs, "ScaledObject", "whisper-worker")["spec"]["maxReplicaCount"]
    if name == "one-gpu-node":
        assert (web, most) == (1, 1)
    else:
        assert web >= 2 and most > 1


# --- the app: port, probes, image, command -----------------------------------------------------


def test_ports_and_probes_are_the_apps(overlay, app):
    name, docs = overlay
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    port = int(re.search(r'"WHISPER_PORT", "(\d+)"', read("gunicorn.conf.py")).group(1))
    assert port == int(re.search(r"^EXPOSE (\d+)\b", read("Dockerfile"), re.M).group(1))
    spec = container(docs, "whisper-web")
    (declared,) = spec["ports"]
    assert declared["containerPort"] == port
    assert environment(docs, spec)["WHISPER_PORT"] == str(port)
    probes = {kind: spec[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert {k: p["path"] for k, p in probes.items()} == {
        "startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"}
    assert {p["path"] for p in probes.values()} <= routes
    assert {p["port"] for p in probes.values()} == {declared["name"]}
    service = one(docs, "Service", "whisper-web")["spec"]
    (exposed,) = service["ports"]
    assert exposed["port"] == port and exposed["targetPort"] == declared["name"]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_web_pod_with_its_own_settings_passes_its_probes(checkpoint, backend, tmp_path):
    """The web container's variables as rendered (a key in the Secret, the pod's folders
    here, a real PostgreSQL): every probe path answers 200 with no worker running, and
    /metrics, which the autoscaler's Prometheus scrapes, asks for an API key."""
    docs = copy.deepcopy(render(KUBERNETES / "overlays" / "fleet"))
    one(docs, "Secret", "whisper-secrets")["stringData"]["api-keys"] += "scrape-key\n"
    spec = container(docs, "whisper-web")
    variables = {k: v for k, v in environment(docs, spec).items() if isinstance(v, str)}
    keys = tmp_path / "api-keys"
    keys.write_text(secret_data(docs, "whisper-secrets")["api-keys"], encoding="utf-8")
    variables.update(WHISPER_API_KEY_FILE=str(keys), WHISPER_DATA_DIR=str(tmp_path / "data"),
                     WHISPER_DATABASE_URL=backend.url)
    app = make_app(checkpoint, tmp_path, **variables)
    try:
        client = app.test_client()
        for kind in ("startup", "liveness", "readiness"):
            path = spec[f"{kind}Probe"]["httpGet"]["path"]
            answer = client.get(path)
            assert answer.status_code == 200, (kind, path, answer.get_json())
        assert client.get("/readyz").get_json()["role"] == "web"
        assert client.get("/metrics").status_code == 401
        scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
        assert scraped.status_code == 200
        assert evaluate(trigger_of("prometheus")["query"], scraped.get_data(as_text=True)) == 0.0
    finally:
        app.extensions["whisper_jobs"].store.close()


def test_selectors_find_their_pods(overlay):
    name, docs = overlay
    for part in ("whisper-web", "whisper-worker"):
        spec = deployment(docs, part)["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        budget = one(docs, "PodDisruptionBudget", part)["spec"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        assert budget["maxUnavailable"] == 1  # one pod of a kind still lets its node drain
        others = deployment(docs, ({"whisper-web", "whisper-worker"} - {part}).pop())
        assert not budget["selector"]["matchLabels"].items() <= \
            others["spec"]["template"]["metadata"]["labels"].items()
    web_labels = deployment(docs, "whisper-web")["spec"]["template"]["metadata"]["labels"]
    assert one(docs, "Service", "whisper-web")["spec"]["selector"].items() <= web_labels.items()


def test_the_image_command_and_user_are_the_dockerfiles(overlay):
    name, docs = overlay
    dockerfile = read("Dockerfile")
    built = re.search(r"docker build .*-t (\S+) \.", dockerfile).group(1)
    version = tomllib.loads(read("pyproject.toml"))["project"]["version"]
    scripts = tomllib.loads(read("pyproject.toml"))["project"]["scripts"]
    web, worker = container(docs, "whisper-web"), container(docs, "whisper-worker")
    assert web["image"] == worker["image"] == f"{built}:{version}"
    assert web["args"] == json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert worker["args"] == ["whisper-service", WORKER] and "whisper-service" in scripts
    assert "command" not in web and "command" not in worker  # the image's entrypoint runs them
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    for part in ("whisper-web", "whisper-worker"):
        pod = deployment(docs, part)["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsUser"] == uid and pod["runAsNonRoot"] is True
        assert deployment(docs, part)["spec"]["template"]["spec"][
            "automountServiceAccountToken"] is False
        mounts = {m["mountPath"] for m in container(docs, part)["volumeMounts"]}
        assert config_map(docs, container(docs, part))["WHISPER_DATA_DIR"] in mounts


def test_every_web_pod_signs_sessions_with_the_same_key(overlay):
    from flask import Flask

    from web.http.security import SECRET_FILE

    name, docs = overlay
    workdir = re.search(r"^WORKDIR (\S+)$", read("Dockerfile"), re.M).group(1)
    spec = container(docs, "whisper-web")
    (mount,) = [m for m in spec["volumeMounts"] if m["mountPath"] == f"{workdir}/instance"]
    (volume,) = [v for v in deployment(docs, "whisper-web")["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == mount["name"]]
    (item,) = volume["secret"]["items"]
    assert item["path"] == SECRET_FILE
    # Flask's instance folder of app.py, in the image where the Dockerfile copies app.py
    assert Path(Flask("app").instance_path) == ROOT / "instance"
    assert re.search(r"^COPY app\.py .*\./$", read("Dockerfile"), re.M)
    assert secret_data(docs, volume["secret"]["secretName"])[item["key"]]


# --- the graceful drain -------------------------------------------------------------------------


def test_the_grace_period_covers_the_drain(overlay):
    name, docs = overlay
    default = int(re.search(r'"WHISPER_GRACEFUL_TIMEOUT", "(\d+)"', read("gunicorn.conf.py")).group(1))
    assert default == DEFAULT_GRACEFUL_SECONDS  # the web server and the worker drain alike
    assert "jobs.stop(timeout=max(0, graceful_timeout - 5))" in read("gunicorn.conf.py")
    for part in ("whisper-web", "whisper-worker"):
        spec = container(docs, part)
        drain = int(environment(docs, spec)["WHISPER_GRACEFUL_TIMEOUT"])
        pause = 0
        stop_hook = spec.get("lifecycle", {}).get("preStop")
        if stop_hook:
            command = stop_hook["exec"]["command"]
            assert command[0] == "sleep", command
            pause = int(command[1])
        grace = deployment(docs, part)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert pause + drain + GRACE_SLACK <= grace <= pause + drain + 30, (part, grace)
    # the web pod keeps answering while the Service and the ingress forget it
    assert container(docs, "whisper-web")["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


# --- the autoscaler reads the real queue ------------------------------------------------------


def trigger_of(kind: str) -> dict:
    """The first trigger of this type in any overlay."""
    for name in OVERLAYS:
        for trigger in one(render(KUBERNETES / "overlays" / name), "ScaledObject",
                           "whisper-worker")["spec"]["triggers"]:
            if trigger["type"] == kind:
                return trigger["metadata"]
    pytest.fail(f"no overlay scales on {kind}")


def evaluate(query: str, exposition: str) -> float:
    """A PromQL sum of max(name{label="value"}) terms over one scrape's samples; each term
    must match at least one sample, as it would in Prometheus."""
    terms = re.findall(r'max\((\w+)\{(\w+)="(\w+)"\}\)', query)
    assert terms and re.sub(r'max\(\w+\{\w+="\w+"\}\)', "T", query).replace(" ", "") == \
        "+".join("T" * len(terms)), query
    total = 0.0
    for name, label, value in terms:
        samples = re.findall(rf'^{name}\{{[^}}]*\b{label}="{value}"[^}}]*\}} (\S+)$', exposition, re.M)
        assert samples, (name, label, value)
        total += max(float(s) for s in samples)
    return total


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_both_queue_queries_count_the_jobs_queued_and_running(make_queue, backend):
    """The query KEDA sends PostgreSQL, and the PromQL it sends Prometheus over /metrics,
    both give queued + running jobs of a real store: 3 waiting, then 1 running and 2
    waiting, then none."""
    import psycopg

    sql = trigger_of("postgresql")["query"]
    promql = trigger_of("prometheus")["query"]
    blocker = Blocker()
    queue = make_queue(blocker, shared_jobs=1)

    def both():
        with psycopg.connect(backend.url) as conn:
            (counted,) = conn.execute(sql).fetchone()
        scraped = metrics.render(queue.store.counts(), queue.store.counters(), [])
        return counted, evaluate(promql, scraped)

    assert both() == (0, 0.0)
    for n in range(3):
        submit_bytes(queue, f"talk-{n}.mp3")
    assert both() == (3, 3.0)
    queue.start()
    assert blocker.running.wait(10)
    assert queue.store.counts().get("running") == 1
    assert both() == (3, 3.0)  # a worker under a job is still wanted
    blocker.release.set()
    wait_until(lambda: both() == (0, 0.0), what="the three jobs done")
    assert queue.store.counts().get("done") == 3
