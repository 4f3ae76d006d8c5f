"""The Ingress publishes the public API only, and /metrics and the probes stay inside the cluster."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.helm.chart import render

# Routes that only the cluster may reach: Prometheus scrapes /metrics and the kubelet
# probes /health and /ready on the pod itself, never through the Ingress.
INTERNAL_ROUTES = ("/metrics", "/health", "/ready", "/openapi.json")
PUBLIC_ROUTES = ("/v1/auth/login", "/v1/users/me", "/.well-known/jwks.json")
CUSTOM_PATHS = [{"path": "/v1/auth", "pathType": "Prefix"}, {"path": "/openapi.json", "pathType": "Exact"}]


def with_ingress(**ingress: Any) -> dict[str, Any]:
    """Values with the Ingress on, behind one trusted proxy as the chart requires."""
    return {"ingress": {"enabled": True, **ingress}, "config": {"trustedProxyCount": 1}}


def ingress_paths(result) -> list[dict[str, Any]]:
    """Return every path of every rule of the one Ingress."""
    ingress = result.one("Ingress")
    return [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]


def is_routed(paths: list[dict[str, Any]], request_path: str) -> bool:
    """Return whether a request path matches one of the Ingress paths under the Kubernetes rules.

    Exact matches the same path. Prefix matches whole path segments, so /v1 matches /v1
    and /v1/users but not /v1x. ImplementationSpecific is taken as Prefix, the widest reading.
    """
    for entry in paths:
        if entry["pathType"] == "Exact":
            if request_path == entry["path"]:
                return True
            continue

        prefix = entry["path"].rstrip("/")
        if prefix == "" or request_path == prefix or request_path.startswith(prefix + "/"):
            return True
    return False


@pytest.fixture(scope="module")
def default_ingress():
    return render(with_ingress())


def test_ingress_off_by_default(rendered):
    assert rendered["default"].of_kind("Ingress") == []


def test_default_paths_have_no_root_prefix(default_ingress):
    paths = ingress_paths(default_ingress)
    assert paths
    for entry in paths:
        assert entry["path"].rstrip("/") != "", entry


@pytest.mark.parametrize("route", INTERNAL_ROUTES)
def test_default_paths_keep_route_internal(default_ingress, route):
    paths = ingress_paths(default_ingress)
    assert route not in [entry["path"] for entry in paths]
    assert not is_routed(paths, route)


@pytest.mark.parametrize("route", PUBLIC_ROUTES)
def test_default_paths_publish_api(default_ingress, route):
    assert is_routed(ingress_paths(default_ingress), route)


def test_default_paths_point_at_http_port(default_ingress):
    service = default_ingress.one("Service")
    for entry in ingress_paths(default_ingress):
        backend = entry["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"] == {"name": "http"}


def test_custom_paths_honoured():
    result = render(with_ingress(paths=CUSTOM_PATHS))
    assert [(p["path"], p["pathType"]) for p in ingress_paths(result)] == \
        [("/v1/auth", "Prefix"), ("/openapi.json", "Exact")]


def test_host_paths_replace_default():
    hosts = [{"host": "api.example.com"},
             {"host": "keys.example.com", "paths": [{"path": "/.well-known/jwks.json", "pathType": "Exact"}]}]
    rules = render(with_ingress(hosts=hosts)).one("Ingress")["spec"]["rules"]

    assert [rule["host"] for rule in rules] == ["api.example.com", "keys.example.com"]
    assert [p["path"] for p in rules[0]["http"]["paths"]] == ["/v1", "/.well-known/jwks.json"]
    assert [p["path"] for p in rules[1]["http"]["paths"]] == ["/.well-known/jwks.json"]


def test_notes_quiet_with_default_paths(default_ingress):
    assert "meant for the cluster only" not in default_ingress.notes


@pytest.mark.parametrize(("paths", "published"), [
    ([{"path": "/", "pathType": "Prefix"}], "/metrics, /health, /ready, /openapi.json"),
    ([{"path": "/", "pathType": "ImplementationSpecific"}], "/metrics, /health, /ready, /openapi.json"),
    ([{"path": "/metrics/", "pathType": "Prefix"}], "/metrics"),
    ([{"path": "/v1", "pathType": "Prefix"}, {"path": "/openapi.json", "pathType": "Exact"}], "/openapi.json"),
])
def test_notes_warn_about_internal_routes(paths, published):
    notes = render(with_ingress(paths=paths)).notes
    assert f"meant for the cluster only:\n  {published}\n" in notes


def test_notes_ignore_paths_when_ingress_off():
    notes = render({"ingress": {"paths": [{"path": "/", "pathType": "Prefix"}]}}).notes
    assert "meant for the cluster only" not in notes


def test_prometheus_scrapes_service_not_ingress(rendered):
    """The ServiceMonitor reaches /metrics through the Service's http port, which the NetworkPolicy admits."""
    result = rendered["production"]
    endpoint = result.one("ServiceMonitor")["spec"]["endpoints"][0]
    service_ports = [port["name"] for port in result.one("Service")["spec"]["ports"]]
    policy_rules = result.one("NetworkPolicy")["spec"]["ingress"]
    monitoring_rules = [rule for rule in policy_rules
                        if {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                        in rule.get("from", [])]

    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in service_ports
    assert not is_routed(ingress_paths(result), "/metrics")
    assert len(monitoring_rules) == 1
    assert {"port": endpoint["port"], "protocol": "TCP"} in monitoring_rules[0]["ports"]


def test_network_policy_open_to_cluster_by_default():
    """With allowExternal (the default), any pod, Prometheus included, may connect to the http port."""
    policy = render({**with_ingress(), "networkPolicy": {"enabled": True}}).one("NetworkPolicy")
    http_rule = policy["spec"]["ingress"][0]

    assert http_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "from" not in http_rule


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_probes_target_pod_port(default_ingress, probe):
    """The kubelet probes the pod's own port, so the probes need no Ingress path."""
    container = default_ingress.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    port_names = [port["name"] for port in container["ports"]]

    assert container[probe]["httpGet"]["port"] in port_names
    assert not is_routed(ingress_paths(default_ingress), container[probe]["httpGet"]["path"])


def test_ingress_without_trusted_proxy_fails():
    with pytest.raises(helm_python.HelmRenderError) as failure:
        render({"ingress": {"enabled": True}})

    assert "config.trustedProxyCount" in str(failure.value)
    assert "one automatic ban would block them all" in str(failure.value)
