"""The Kubernetes recipe (deploy/k8s): every resource is valid for the Kubernetes API
(kubernetes-validate --strict, offline), and the manifests keep their promises: the grace
period covers the preStop wait and the drain, the probes ask the right paths, the
preStop and sidecar commands are ones flowcat-ft takes, and the metric the autoscalers
name is one the server exports.

The kustomizations only list files and folders (no patches, no generators), so they are
rendered here without kubectl, by following their ``resources``."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from fleet import ROOT
from helpers import http_get, metric_samples

from flowcat_ft.cli import command_line
from flowcat_ft.server.config import Config, load_config

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["base", "hpa", "keda"]
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
"""The oldest Kubernetes still supported by managed clouds' extended support, the newest."""


def render(folder: Path) -> list[dict]:
    """The resources a kustomization lists, its folders' recursively."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "resources"}, "beyond what render() does"
    resources: list[dict] = []
    for entry in kustomization["resources"]:
        path = (folder / entry).resolve()
        if path.is_dir():
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return resources


def one(resources: list[dict], kind: str) -> dict:
    [found] = [r for r in resources if r["kind"] == kind]
    return found


BASE = render(K8S / "base")
DEPLOYMENT = one(BASE, "Deployment")
POD = DEPLOYMENT["spec"]["template"]
CONTAINERS = {c["name"]: c for c in POD["spec"]["containers"]}
SERVER = CONTAINERS["server"]


@pytest.fixture(scope="module")
def agent_config(tmp_path_factory) -> Config:
    """The agent.yaml of the ConfigMap, loaded as the server loads it."""
    path = tmp_path_factory.mktemp("k8s") / "agent.yaml"
    path.write_text(one(BASE, "ConfigMap")["data"]["agent.yaml"])
    return load_config(path)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_is_valid_kubernetes(overlay, version):
    resources = render(K8S / overlay)
    built_in = [r for r in resources if not r["apiVersion"].startswith("keda.sh/")]
    assert len(built_in) >= 7
    for resource in built_in:
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_grace_period_covers_the_prestop_wait_and_the_drain(agent_config):
    prestop = command_line().parse_args(SERVER["lifecycle"]["preStop"]["exec"]["command"][1:])
    grace = POD["spec"]["terminationGracePeriodSeconds"]
    assert agent_config.limits.shutdown_grace >= 3600  # the recipe gives calls an hour
    assert grace > prestop.wait + agent_config.limits.shutdown_grace
    assert grace - prestop.wait - agent_config.limits.shutdown_grace >= 30  # time to close


def test_the_prestop_hook_drains_this_server(agent_config):
    program, *argv = SERVER["lifecycle"]["preStop"]["exec"]["command"]
    prestop = command_line().parse_args(argv)
    assert program == "flowcat-ft" and prestop.command == "drain"
    assert prestop.pid == 1  # the server is the container's first process: its command
    assert SERVER["command"][:2] == ["flowcat-ft", "serve"]
    assert prestop.port == agent_config.server.port
    assert prestop.wait > 0  # endpoints and load balancers need a moment to drop the pod


def test_the_server_reads_the_mounted_config_and_the_probes_ask_the_right_paths(agent_config):
    args = command_line().parse_args(SERVER["command"][1:])
    [mount] = SERVER["volumeMounts"]
    [volume] = [v for v in POD["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == one(BASE, "ConfigMap")["metadata"]["name"]
    assert args.config == f"{mount['mountPath']}/agent.yaml"
    assert agent_config.server.host == "0.0.0.0"  # the kubelet's probes come from outside
    [port] = SERVER["ports"]
    assert port["containerPort"] == agent_config.server.port
    probes = {name: SERVER[name]["httpGet"] for name in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"] == {"path": "/ready", "port": port["name"]}
    assert probes["livenessProbe"] == {"path": "/health", "port": port["name"]}
    assert SERVER["startupProbe"]["httpGet"]["path"] == "/health"
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_a_rolling_update_never_takes_a_pod_away_first():
    strategy = DEPLOYMENT["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_service_and_budget_select_the_pods():
    labels = POD["metadata"]["labels"]
    service, budget = one(BASE, "Service"), one(BASE, "PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == SERVER["ports"][0]["name"]


def test_the_pod_cost_sidecar_may_patch_its_own_pod(agent_config):
    sidecar = CONTAINERS["pod-cost"]
    args = command_line().parse_args(sidecar["command"][1:])
    assert sidecar["command"][0] == "flowcat-ft" and args.command == "pod-cost"
    assert args.port == agent_config.server.port
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in sidecar["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    account = POD["spec"]["serviceAccountName"]
    assert one(BASE, "ServiceAccount")["metadata"]["name"] == account
    binding, role = one(BASE, "RoleBinding"), one(BASE, "Role")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert any("pods" in r["resources"] and "patch" in r["verbs"] for r in role["rules"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """The names of the metrics a running server exports on /metrics."""
    from flowcat_ft import Runtime
    from flowcat_ft.agents.echo import echo_pipeline
    from flowcat_ft.transports.load import LoadBounds
    from flowcat_ft.transports.server import WebSocketServer

    runtime = Runtime(threads=1)
    server = WebSocketServer(
        runtime, echo_pipeline(), port=0, loops=1, max_calls=10, load=LoadBounds()
    ).start()
    try:
        status, text = http_get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop(grace=0)
        runtime.stop()
    assert status == 200
    return {sample.split("{")[0] for sample in metric_samples(text)}


def test_the_hpa_scales_on_a_metric_the_server_exports(exported, agent_config):
    hpa = one(render(K8S / "hpa"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name in exported
    assert 0 < int(metric["pods"]["target"]["averageValue"]) < agent_config.limits.max_calls
    adapter = yaml.safe_load((K8S / "hpa" / "prometheus-adapter-values.yaml").read_text())
    [rule] = adapter["rules"]["custom"]
    assert rule["seriesQuery"].split("{")[0] == name
    assert rule["name"]["as"] == name


def test_keda_scales_on_a_metric_the_server_exports(exported, agent_config):
    scaled = one(render(K8S / "keda"), "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    names = set(re.findall(r"\bflowcat_\w+", trigger["metadata"]["query"]))
    assert names and names <= exported
    assert 0 < int(trigger["metadata"]["threshold"]) < agent_config.limits.max_calls
    assert not [r for r in render(K8S / "keda") if r["kind"] == "HorizontalPodAutoscaler"]
