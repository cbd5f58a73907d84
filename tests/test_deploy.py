"""deploy/: the properties the Kubernetes objects and the compose file must keep, so an edit cannot silently drop
them. .ci/run validates the same files against the Kubernetes and compose schemas (kubernetes-validate,
check-jsonschema); this checks what a schema cannot: probes on the right paths, a grace period longer than the
gateway's own drain, the container locked down, ports that agree, every file listed, the config loading."""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.common.errors import ConfigError
from gateway.config import load_settings
from gateway.policy import POLICY_FILES, failing_cases, load_policy
from gateway.runtime.connections import ORPHAN_SHUTDOWN_SECONDS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose"
NOT_APPLIED = ".example.yaml"  # shipped examples (the Secret), deliberately not in the kustomization


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def objects() -> dict[str, dict[str, Any]]:
    """Every object of deploy/kubernetes by kind (one object a file)."""
    found = [load(p) for p in sorted(KUBE.glob("*.yaml")) if p.name != "kustomization.yaml"]
    return {o["kind"]: o for o in found}


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = objects()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod()["containers"]
    return dict(only)


def drain_seconds() -> float:
    """uvicorn's graceful shutdown as `agentgate serve` sets it."""
    found = re.search(r"timeout_graceful_shutdown=(\d+)", (ROOT / "gateway" / "cli" / "serve.py").read_text())
    assert found, "gateway/cli/serve.py no longer sets timeout_graceful_shutdown: update this test and the grace"
    return float(found.group(1))


def test_the_kustomization_lists_exactly_the_files_present() -> None:
    kustomization = load(KUBE / "kustomization.yaml")
    present = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == {n for n in present if not n.endswith(NOT_APPLIED)}
    assert len(kustomization["resources"]) == len(set(kustomization["resources"]))
    generated = {f for g in kustomization["configMapGenerator"] for f in g["files"]}
    on_disk = {p.relative_to(KUBE).as_posix() for folder in ("config", "policies") for p in (KUBE / folder).rglob("*")
               if p.is_file()}
    assert generated == on_disk
    assert {n for n in present if n.endswith(NOT_APPLIED)} == {"secret.example.yaml"}
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images", "configMapGenerator"}


def test_probes_grace_period_and_prestop_outlast_the_gateways_drain() -> None:
    c = container()
    port = c["ports"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and 2 <= float(command[1]) <= 15  # the endpoints removed before the drain
    # preStop, then uvicorn's drain, then the lifespan's shutdown (the records still queued written).
    needed = float(command[1]) + drain_seconds() + ORPHAN_SHUTDOWN_SECONDS
    assert pod()["terminationGracePeriodSeconds"] > needed


def test_the_container_runs_locked_down() -> None:
    c, spec = container(), pod()
    uid = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert uid and spec["securityContext"]["runAsUser"] == int(uid.group(1))
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc.get("privileged", False) is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # the one writable place
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")
    assert not any("subPath" in m for m in mounts.values())  # a subPath mount never sees a ConfigMap update
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}


def test_service_and_network_policy_ports_are_the_containers() -> None:
    found, c = objects(), container()
    (port,) = c["ports"]
    assert port["containerPort"] == 8080 and c["args"][c["args"].index("--port") + 1] == "8080"
    assert re.search(r"^EXPOSE 8080$", (ROOT / "Dockerfile").read_text(), re.M)
    (service_port,) = found["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    ingress = found["NetworkPolicy"]["spec"]["ingress"]
    assert [p["port"] for rule in ingress for p in rule["ports"]] == [port["containerPort"]]
    assert all("from" not in rule or rule["from"] for rule in ingress)
    egress = {p["port"] for rule in found["NetworkPolicy"]["spec"]["egress"] for p in rule["ports"]}
    assert {53, 5432} <= egress
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (found["Service"]["spec"]["selector"], found["PodDisruptionBudget"]["spec"]["selector"]
                     ["matchLabels"], found["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    hpa = found["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == "agentgate"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def secret_environment(values: dict[str, str]) -> dict[str, str]:
    """The environment the Deployment gives the container: its env entries, from the Secret's keys."""
    env = {}
    for entry in container()["env"]:
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "agentgate"
        env[entry["name"]] = values[ref["key"]]
    return env


def test_the_config_and_policies_load_and_the_example_secret_fails_closed() -> None:
    example = load(KUBE / "secret.example.yaml")["stringData"]
    config = KUBE / "config" / "agentgate.toml"
    with pytest.raises(ConfigError, match="at least 32 bytes"):  # placeholders never start a gateway
        load_settings(config, secret_environment(example))
    real = {key: ("x" * 64 if "url" not in key else value.replace("REPLACE-ME", "pw"))
            for key, value in example.items()}
    settings = load_settings(config, secret_environment(real))
    assert settings.store.url.startswith("postgresql+asyncpg://")
    args = container()["args"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert args[args.index("--config") + 1] == f"{mounts['config']}/agentgate.toml"
    assert settings.policy.dir == Path(mounts["policies"])
    policy = load_policy(KUBE / "policies", settings.sources)
    assert not asyncio.run(failing_cases(policy))
    assert {p.name for p in (KUBE / "policies").iterdir()} <= set(POLICY_FILES)


def test_compose_runs_the_same_replicas_behind_haproxy() -> None:
    compose = load(COMPOSE / "compose.yaml")
    services = compose["services"]
    replicas = [s for name, s in services.items() if name.startswith("agentgate-")]
    assert len(replicas) == 2 and "haproxy" in services and "postgres" in services
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    for service in replicas:
        assert service["command"] == container()["args"] and service["build"]["context"] == "../.."
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        binds = {v["target"]: v for v in service["volumes"]}
        assert {binds[mounts["config"]]["source"], binds[mounts["policies"]]["source"]} == {
            "../kubernetes/config", "../kubernetes/policies"}
        assert all(v["read_only"] for v in binds.values())
        assert set(service["environment"]) == {e["name"] for e in container()["env"]}
    cfg = (COMPOSE / "haproxy.cfg").read_text()
    for line in ("http-check send meth GET uri /readyz", "option redispatch", "retry-on conn-failure"):
        assert line in cfg
    servers = re.findall(r"^\s*server (\S+) ", cfg, re.M)
    assert sorted(servers) == sorted(name for name in services if name.startswith("agentgate-"))


def test_the_readmes_replica_config_is_the_deployed_one() -> None:
    """README "Running several replicas" shows deploy/kubernetes/config/agentgate.toml, key for key."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running several replicas"):]
    section = section[:section.index("\n## ", 1)]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block, "README's Running several replicas shows no agentgate.toml"
    assert tomllib.loads(block.group(1)) == tomllib.loads((KUBE / "config" / "agentgate.toml").read_text())
    assert "CREATE DATABASE agentgate OWNER agentgate;" in section
