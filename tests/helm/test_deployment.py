"""The Deployment and its neighbours: probes against the real routes, shutdown timing, hardening, secrets."""

from __future__ import annotations

import base64

import helm_python
import pytest

from tests.helm.chart import CHART_DIR, VALUE_SETS, containers, pod_specs, render, set_path


@pytest.fixture(scope="module")
def app(settings):
    """The real Flask app, with its routes and dependencies."""
    from service.app import close_app, create_app

    app = create_app()
    try:
        yield app
    finally:
        close_app(app)


def server_container(result) -> dict:
    return result.one("Deployment")["spec"]["template"]["spec"]["containers"][0]


def route_rule(app, path: str) -> str:
    """Return the app's route rule that serves GET path. Raise NotFound when there is none."""
    rule, _ = app.url_map.bind("gatehouse.local").match(path, method="GET", return_rule=True)
    return rule.rule


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe"])
def test_liveness_probes_use_health(rendered, app, probe):
    """Startup and liveness probe /health, not /ready, so a database outage restarts no pod."""
    path = server_container(rendered["default"])[probe]["httpGet"]["path"]
    response = app.test_client().get(path)

    assert route_rule(app, path) == path
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readiness_probe_checks_dependencies(rendered, app):
    path = server_container(rendered["default"])["readinessProbe"]["httpGet"]["path"]
    response = app.test_client().get(path)

    assert route_rule(app, path) == path
    assert response.status_code == 200
    assert {"mysql", "redis"} <= set(response.get_json()["checks"])


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_probe_port_is_bind_port(rendered, value_set, probe):
    result = rendered[value_set]
    container = server_container(result)
    config_map = result.one("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])
    bind_port = int(config_map["data"]["GATEHOUSE_BIND"].rpartition(":")[2])
    named_ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert named_ports[container[probe]["httpGet"]["port"]] == bind_port


def test_probe_port_follows_container_port(secret_values):
    values = set_path({"secret": secret_values}, "containerPorts.http", 9100)
    result = render(values)
    container = server_container(result)

    assert result.one("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]["GATEHOUSE_BIND"] \
        == "0.0.0.0:9100"
    assert container["ports"] == [{"name": "http", "containerPort": 9100, "protocol": "TCP"}]


def test_service_targets_http_port(rendered):
    service = rendered["default"].one("Service")
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_metrics_path_is_app_route(rendered, app):
    path = rendered["production"].one("ServiceMonitor")["spec"]["endpoints"][0]["path"]
    response = app.test_client().get(path)

    assert route_rule(app, path) == path
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert "# TYPE" in response.get_data(as_text=True)


def test_grace_period_covers_pause_and_drain(rendered):
    spec = rendered["default"].one("Deployment")["spec"]["template"]["spec"]
    pause = int(spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    config_map = rendered["default"].one("ConfigMap", "gh-gatehouse")
    drain = float(config_map["data"]["GATEHOUSE_SHUTDOWN_DRAIN_SECONDS"])
    graceful = int(config_map["data"]["GATEHOUSE_GRACEFUL_TIMEOUT"])

    assert spec["terminationGracePeriodSeconds"] > pause + drain + graceful


@pytest.mark.parametrize(("grace", "pause", "drain", "graceful", "shown_drain", "least"), [
    (35, 5, 0.0, 30, "0", 36),
    (30, 5, 0.0, 30, "0", 36),
    (20, 0, 0.0, 30, "0", 31),
    (45, 5, 10.0, 30, "10", 46),
    (38, 5, 2.5, 30, "2.5", 39),
])
def test_grace_period_rule_fails_rendering(grace, pause, drain, graceful, shown_drain, least):
    values = {"terminationGracePeriodSeconds": grace, "lifecycle": {"preStopSleepSeconds": pause},
              "config": {"shutdownDrainSeconds": drain, "gracefulTimeout": graceful}}

    with pytest.raises(helm_python.HelmRenderError) as failure:
        render(values)

    message = str(failure.value)
    assert f"terminationGracePeriodSeconds ({grace}) must be greater than" in message
    assert (f"lifecycle.preStopSleepSeconds ({pause}) + config.shutdownDrainSeconds ({shown_drain}) "
            f"+ config.gracefulTimeout ({graceful})") in message
    assert f"at least {least}" in message


@pytest.mark.parametrize(("grace", "drain"), [(36, 0.0), (46, 10.0), (39, 2.5)])
def test_grace_period_one_second_more(grace, drain):
    values = {"terminationGracePeriodSeconds": grace, "lifecycle": {"preStopSleepSeconds": 5},
              "config": {"shutdownDrainSeconds": drain, "gracefulTimeout": 30}}
    assert render(values).one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace


def test_short_startup_probe_fails_rendering():
    values = {"startupProbe": {"initialDelaySeconds": 0, "periodSeconds": 2, "failureThreshold": 10},
              "config": {"startupTimeoutSeconds": 30.0}}

    with pytest.raises(helm_python.HelmRenderError) as failure:
        render(values)

    assert "startupProbe allows 20 seconds" in str(failure.value)
    assert "config.startupTimeoutSeconds (30)" in str(failure.value)


def test_pdb_with_both_limits_fails_rendering():
    with pytest.raises(helm_python.HelmRenderError) as failure:
        render({"pdb": {"minAvailable": 1, "maxUnavailable": 1}})

    assert "pdb.minAvailable (1) and pdb.maxUnavailable (1) are both set" in str(failure.value)


def test_pre_stop_pause_can_be_disabled():
    values = {"lifecycle": {"preStopSleepSeconds": 0}, "terminationGracePeriodSeconds": 31}
    assert "lifecycle" not in server_container(render(values))


@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_pods_hardened(rendered, value_set):
    """Every pod, Jobs included: non-root, read-only root, no capabilities, RuntimeDefault seccomp."""
    for owner, spec in pod_specs(rendered[value_set]):
        name = f"{owner['kind']}/{owner['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        for container in containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name


@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_writable_paths_are_volumes(rendered, value_set):
    """With a read-only root, /tmp, the metrics directory and the log file's directory are emptyDir mounts."""
    result = rendered[value_set]
    for owner, spec in pod_specs(result):
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in containers(spec):
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            environment = {item["name"]: item.get("value") for item in container["env"]}
            for source in container["envFrom"]:
                environment.update(result.one("ConfigMap", source["configMapRef"]["name"])["data"])
            writable = ["/tmp"]
            if "PROMETHEUS_MULTIPROC_DIR" in environment:
                writable.append(environment["PROMETHEUS_MULTIPROC_DIR"])
            if environment.get("GATEHOUSE_LOG_FILE"):
                # config.py requires the directory itself to exist, so it must be the mount point.
                log_dir = environment["GATEHOUSE_LOG_FILE"].rpartition("/")[0]
                assert log_dir in mounts, f"{owner['metadata']['name']}: {log_dir} is not a mount point"
                writable.append(log_dir)
            for path in writable:
                mount = next((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), None)
                assert mount is not None, f"{owner['metadata']['name']}: {path} is not on a volume"
                assert "emptyDir" in volumes[mounts[mount]], f"{owner['metadata']['name']}: {path}"


def test_metrics_directory_only_in_server(rendered):
    """The CLI jobs write no multiprocess metric files: only gunicorn's workers do."""
    for owner, spec in pod_specs(rendered["production"]):
        names = [item["name"] for container in containers(spec) for item in container["env"]]
        assert ("PROMETHEUS_MULTIPROC_DIR" in names) == (owner["kind"] == "Deployment"), owner["metadata"]["name"]


@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_keys_dir_is_secret_volume(rendered, value_set):
    result = rendered[value_set]
    for owner, spec in pod_specs(result):
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        config_map_names = {source["configMapRef"]["name"] for c in containers(spec) for source in c["envFrom"]}
        keys_dirs = {result.one("ConfigMap", name)["data"]["GATEHOUSE_KEYS_DIR"] for name in config_map_names}
        for container in containers(spec):
            mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
            for keys_dir in keys_dirs:
                assert mounts[keys_dir]["readOnly"] is True
                assert "secret" in volumes[mounts[keys_dir]["name"]], owner["metadata"]["name"]


def test_chart_secret_holds_values(rendered, value_sets):
    secret = rendered["minimal"].one("Secret", "gh-gatehouse")
    data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    expected = value_sets["minimal"]["secret"]

    assert data["mysql-password"] == expected["mysqlPassword"]
    assert data["redis-url"] == expected["redisUrl"]
    assert {key: data[key] for key in expected["signingKeys"]} == expected["signingKeys"]


def test_existing_secret_replaces_chart_secret(rendered):
    result = rendered["existing-secret"]
    referenced = set()
    for _, spec in pod_specs(result):
        referenced |= {volume["secret"]["secretName"] for volume in spec["volumes"] if "secret" in volume}
        for container in containers(spec):
            referenced |= {item["valueFrom"]["secretKeyRef"]["name"] for item in container["env"]
                           if "secretKeyRef" in item.get("valueFrom", {})}

    assert result.of_kind("Secret") == []
    assert referenced == {"gatehouse-credentials"}


def test_secret_change_rolls_pods(rendered, value_sets):
    changed = set_path(value_sets["minimal"], "secret.mysqlPassword", "another password")
    before = rendered["minimal"].one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    after = render(changed).one("Deployment")["spec"]["template"]["metadata"]["annotations"]

    assert before["checksum/secret"] != after["checksum/secret"]
    assert before["checksum/config"] == after["checksum/config"]


def test_config_change_rolls_pods(rendered, value_sets):
    changed = set_path(value_sets["minimal"], "config.workers", 3)
    before = rendered["minimal"].one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    after = render(changed).one("Deployment")["spec"]["template"]["metadata"]["annotations"]

    assert before["checksum/config"] != after["checksum/config"]


def test_autoscaler_owns_replicas(rendered):
    deployment = rendered["default"].one("Deployment")
    autoscaler = rendered["default"].one("HorizontalPodAutoscaler")

    assert "replicas" not in deployment["spec"]
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert autoscaler["spec"]["minReplicas"] >= 2


def test_fixed_replicas_without_autoscaler():
    result = render({"autoscaling": {"enabled": False}, "replicaCount": 3})
    assert result.one("Deployment")["spec"]["replicas"] == 3
    assert result.of_kind("HorizontalPodAutoscaler") == []


def selector_labels(obj: dict) -> dict[str, str]:
    """Return the labels a Service, PodDisruptionBudget or NetworkPolicy selects pods by."""
    if obj["kind"] == "Service":
        return obj["spec"]["selector"]
    if obj["kind"] == "NetworkPolicy":
        return obj["spec"]["podSelector"]["matchLabels"]
    return obj["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("kind", ["Service", "PodDisruptionBudget", "NetworkPolicy"])
def test_selectors_pick_server_pods_only(rendered, kind):
    """Job pods share the release labels, so a selector without the component would pick them too."""
    result = rendered["production"]
    selector = selector_labels(result.one(kind))
    server_labels = result.one("Deployment")["spec"]["template"]["metadata"]["labels"]

    assert selector.items() <= server_labels.items()
    for owner, _ in pod_specs(result):
        if owner["kind"] == "Deployment":
            continue
        template = owner["spec"]["template"] if owner["kind"] == "Job" \
            else owner["spec"]["jobTemplate"]["spec"]["template"]
        assert not selector.items() <= template["metadata"]["labels"].items(), owner["metadata"]["name"]


def test_topology_spread_across_nodes(rendered):
    spec = rendered["default"].one("Deployment")["spec"]["template"]["spec"]
    labels = rendered["default"].one("Deployment")["spec"]["selector"]["matchLabels"]

    assert [c["topologyKey"] for c in spec["topologySpreadConstraints"]] == ["kubernetes.io/hostname"]
    assert spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] == labels


def test_network_policy_limits_egress(rendered):
    policy = rendered["production"].one("NetworkPolicy")
    ports = {(port["port"], port["protocol"]) for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (3306, "TCP"), (6379, "TCP")}


def test_notes_tell_how_to_create_admin(rendered):
    notes = rendered["minimal"].notes
    assert "kubectl -n auth exec -i deployment/gh-gatehouse -- \\" in notes
    assert "gatehouse users create --email admin@example.com --role admin < password.txt" in notes
    assert "port-forward service/gh-gatehouse" in notes


def test_notes_list_missing_values(rendered):
    assert "WARNING" not in rendered["minimal"].notes
    assert "WARNING" not in rendered["existing-secret"].notes
    for value in ("config.mysqlHost", "secret.mysqlPassword", "secret.redisUrl", "secret.signingKeys"):
        assert f"  - {value}" in rendered["default"].notes


def test_notes_show_ingress_url(rendered):
    assert "https://auth.example.com, paths /v1 (Prefix), /.well-known/jwks.json (Exact)" in rendered["production"].notes


@pytest.mark.parametrize(("publish", "max_age"), [(60, 300), (299, 300), (1, 5)])
def test_key_publish_below_jwks_max_age_fails_rendering(publish, max_age):
    with pytest.raises(helm_python.HelmRenderError) as failure:
        render({"config": {"keyPublishSeconds": publish, "jwksMaxAgeSeconds": max_age}})

    message = str(failure.value)
    assert f"config.keyPublishSeconds ({publish}) is below config.jwksMaxAgeSeconds ({max_age})" in message
    assert f"at least {max_age}, or to 0" in message


@pytest.mark.parametrize(("publish", "max_age"), [(0, 300), (300, 300), (900, 300), (60, 0)])
def test_key_publish_settings_render(publish, max_age):
    rendered = render({"config": {"keyPublishSeconds": publish, "jwksMaxAgeSeconds": max_age}})
    config_map = rendered.one("ConfigMap", "gh-gatehouse")

    assert config_map["data"]["GATEHOUSE_KEY_PUBLISH_SECONDS"] == str(publish)
    assert config_map["data"]["GATEHOUSE_JWKS_MAX_AGE_SECONDS"] == str(max_age)


def test_password_blocklist_mounted_from_config_map():
    result = render({"passwordBlocklist": {"configMap": "acme-passwords", "key": "blocked.txt"}})
    pod = result.one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}

    path = env["GATEHOUSE_PASSWORD_BLOCKLIST_FILE"]
    mount = mounts["password-blocklist"]
    assert mount["readOnly"] is True
    assert path == mount["mountPath"] + "/" + volumes["password-blocklist"]["configMap"]["items"][0]["path"]
    assert volumes["password-blocklist"]["configMap"] == {
        "name": "acme-passwords", "items": [{"key": "blocked.txt", "path": "passwords.txt"}]}


def test_no_password_blocklist_by_default(rendered):
    pod = rendered["default"].one("Deployment")["spec"]["template"]["spec"]

    assert "GATEHOUSE_PASSWORD_BLOCKLIST_FILE" not in {item["name"] for item in pod["containers"][0]["env"]}
    assert "password-blocklist" not in {volume["name"] for volume in pod["volumes"]}


@pytest.mark.parametrize("blocklist", [{"configMap": "Not_A_Name", "key": "passwords.txt"},
                                       {"configMap": "acme", "key": "../passwords"},
                                       {"configMap": "acme", "key": ""}])
def test_password_blocklist_values_checked(blocklist):
    with helm_python.Chart.load(CHART_DIR) as chart, pytest.raises(helm_python.HelmValuesError) as failure:
        chart.validate_schema({"passwordBlocklist": blocklist})

    assert "passwordBlocklist" in str(failure.value)
