"""values.yaml, values.schema.json and the service's settings agree, and the chart lints clean."""

from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path
from typing import Any

import annotated_types
import helm_python
import pytest
import yaml

from service.config import (
    ARGON2_MIN_MEMORY_KIB, ENV_PREFIX, OWASP_ARGON2ID_MINIMUMS, Settings, argon2_min_time_cost, load_settings,
)
from tests.helm.chart import CHART_DIR, NAMESPACE, VALUE_SETS, Rendered, render, set_path

VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
DOCUMENTED = re.findall(r"^\s*## @param (\S+) \S", VALUES_TEXT, flags=re.MULTILINE)

# Settings the chart sets itself or takes from the Secret, so config.* leaves them out.
# backup_dir: set on the backup Jobs only, to where the backup claim is mounted. The log
# file settings are left to extraEnv: pods log to stdout, which the cluster collects.
# password_blocklist_file: set where passwordBlocklist.configMap is mounted.
# The TLS files are mounted from mysqlTls.* and their paths set by the chart.
CHART_OWNED = {"bind", "keys_dir", "password_blocklist_file", "mysql_password", "redis_url", "redis_password",
               "redis_sentinel_password",
               "backup_dir", "log_file", "log_file_max_bytes",
               "log_file_rotate_when", "log_file_rotate_interval", "log_file_backups",
               "mysql_tls_ca", "mysql_tls_cert", "mysql_tls_key"}
# config.* defaults that differ from the service's on purpose: 127.0.0.1 means nothing in a pod.
# logFile is unset in the service and empty in the chart, which the service reads as unset.
CHART_DEFAULTS = {"mysqlHost": "", "logFile": ""}
LINT_WARNING = 2
# Valid non-default values of config strings that have a format.
OTHER_STRINGS = {"banAllowlist": "10.0.0.0/8,fd00::/8", "trustedProxyNetworks": "10.0.0.0/8",
                 "logFile": "/tmp/gatehouse.log", "rateLimitDefault": "500/minute", "rateLimitLogin": "10/minute;100/hour", "rateLimitLoginAccount": "5/minute",
                 "rateLimitRefresh": "30/minute", "rateLimitRegister": "5/minute;20/hour",
                 "redisSentinels": "sentinel-0:26379,sentinel-1:26379", "redisSentinelService": "mymaster"}


def leaf_paths(node: Any, prefix: str = "") -> list[str]:
    """List the dotted paths of every value that is not a non-empty map."""
    if isinstance(node, dict) and node:
        return [path for key, child in node.items() for path in leaf_paths(child, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def schema_node(path: str) -> dict[str, Any] | None:
    """Return the schema of a dotted values path, or None when no property describes it."""
    node = SCHEMA
    for part in path.split("."):
        properties = node.get("properties")
        if properties is None or part not in properties:
            return None
        node = properties[part]
    return node


def schema_paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    """List the dotted paths of every schema property that is not an object with properties."""
    if "properties" in node:
        return [path for key, child in node["properties"].items()
                for path in schema_paths(child, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def setting_name(config_key: str) -> str:
    """Convert a config key to its Settings field: mysqlPoolSize is mysql_pool_size (GATEHOUSE_MYSQL_POOL_SIZE)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", config_key).lower()


@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_lint_has_no_warnings(value_sets, value_set):
    report = helm_python.lint(CHART_DIR, value_sets[value_set], strict=True, namespace=NAMESPACE)
    findings = [message for message in report["messages"] if message["severity"] >= LINT_WARNING]
    assert report["errors"] == []
    assert findings == []


def test_every_value_documented():
    undocumented = [path for path in leaf_paths(VALUES)
                    if not any(path == doc or path.startswith(doc + ".") for doc in DOCUMENTED)]
    assert undocumented == []


def test_documented_values_exist():
    missing = [path for path in DOCUMENTED if path not in leaf_paths(VALUES)
               and not any(leaf.startswith(path + ".") for leaf in leaf_paths(VALUES))]
    assert missing == []


def test_schema_describes_every_value():
    undescribed = [path for path in leaf_paths(VALUES)
                   if schema_node(path) is None and not any(
                       schema_node(doc) is not None and path.startswith(doc + ".") for doc in DOCUMENTED)]
    assert undescribed == []


def test_schema_has_no_unknown_values():
    """Every schema property is a value in values.yaml, so the two cannot drift apart."""
    values_paths = leaf_paths(VALUES)
    unknown = [path for path in schema_paths(SCHEMA)
               if path not in values_paths and not any(leaf.startswith(path + ".") for leaf in values_paths)]
    assert unknown == []


def test_schema_descriptions_match_comments():
    comments = dict(re.findall(r"^\s*## @param (\S+) (.+)$", VALUES_TEXT, flags=re.MULTILINE))
    differing = {path: text for path, text in comments.items()
                 if (schema_node(path) or {}).get("description") != text}
    assert differing == {}


def test_default_values_pass_schema():
    with helm_python.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(VALUES)


@pytest.mark.parametrize(("path", "value", "complaint"), [
    ("config.workers", 0, "at '/config/workers': minimum: got 0"),
    ("config.logLevel", "verbose", "at '/config/logLevel': value must be one of"),
    ("config.jwtAlgorithm", "HS256", "at '/config/jwtAlgorithm': value must be one of"),
    ("config.argon2MemoryKib", 1024, "at '/config/argon2MemoryKib': minimum: got 1,024"),
    ("containerPorts.http", 80, "at '/containerPorts/http': minimum: got 80"),
    ("secret.signingKeys", {"signing.key": "PEM"}, "invalid propertyName 'signing.key'"),
    ("image.digest", "latest", "at '/image/digest': 'latest' does not match pattern"),
    ("autoscaling.minReplica", 2, "additional properties 'minReplica' not allowed"),
    ("ingress.paths", [{"path": "v1", "pathType": "Prefix"}], "at '/ingress/paths/0/path': 'v1' does not match"),
    ("ingress.paths", [], "at '/ingress/paths': minItems: got 0"),
    ("cronJobs.backup.schedule", "daily at 02:30", "at '/cronJobs/backup/schedule': 'daily at 02:30' does not match"),
])
def test_schema_rejects_bad_value(path, value, complaint):
    with helm_python.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm_python.HelmValuesError) as failure:
            chart.validate_schema(set_path({}, path, value))

    assert complaint in str(failure.value)


ARGON2_PAIRS = sorted({pair for memory, passes in OWASP_ARGON2ID_MINIMUMS
                       for pair in ((memory, passes), (memory - 1, passes), (memory, passes - 1)) if pair[1] >= 1})


@pytest.mark.parametrize(("memory_kib", "time_cost"), ARGON2_PAIRS)
def test_schema_checks_argon2_passes_as_the_service_does(memory_kib, time_cost):
    """The chart refuses the argon2 pairs that would stop the service at start, and only those."""
    least = argon2_min_time_cost(memory_kib)
    service_accepts = memory_kib >= ARGON2_MIN_MEMORY_KIB and least is not None and time_cost >= least
    values = {"config": {"argon2MemoryKib": memory_kib, "argon2TimeCost": time_cost}}

    with helm_python.Chart.load(CHART_DIR) as chart:
        try:
            chart.validate_schema(values)
        except helm_python.HelmValuesError as failure:
            assert not service_accepts, str(failure)
            assert "/config/argon2" in str(failure)
        else:
            assert service_accepts


def test_config_values_are_settings():
    unknown = [key for key in VALUES["config"] if setting_name(key) not in Settings.model_fields]
    assert unknown == []


def test_every_setting_reachable_from_values():
    """Each setting of service/config.py is a config value or one the chart fills in itself."""
    from_values = {setting_name(key) for key in VALUES["config"]}
    unreachable = sorted(set(Settings.model_fields) - from_values - CHART_OWNED)
    assert unreachable == []


@pytest.mark.parametrize("key", sorted(VALUES["config"]))
def test_config_default_matches_service(key):
    field = Settings.model_fields[setting_name(key)]
    expected = CHART_DEFAULTS.get(key, field.default)
    assert VALUES["config"][key] == expected


@pytest.mark.parametrize("key", sorted(VALUES["config"]))
def test_config_schema_matches_setting_range(key):
    field = Settings.model_fields[setting_name(key)]
    node = schema_node(f"config.{key}")
    bounds = {"minimum": None, "exclusiveMinimum": None, "maximum": None}
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Ge):
            bounds["minimum"] = constraint.ge
        elif isinstance(constraint, annotated_types.Gt):
            bounds["exclusiveMinimum"] = constraint.gt
        elif isinstance(constraint, annotated_types.Le):
            bounds["maximum"] = constraint.le
    choices = list(typing.get_args(field.annotation)) if typing.get_origin(field.annotation) is typing.Literal else None

    assert {name: node.get(name) for name in bounds} == bounds
    assert node.get("enum") == choices
    assert node["type"] == {bool: "boolean", int: "integer", float: "number"}.get(field.annotation, "string")


def other_value(key: str, default: Any) -> Any:
    """Return a valid value of config.<key> that differs from its default."""
    field = Settings.model_fields[setting_name(key)]
    if typing.get_origin(field.annotation) is typing.Literal:
        return next(choice for choice in typing.get_args(field.annotation) if choice != default)
    if isinstance(default, bool):
        return not default
    if key in OTHER_STRINGS:
        return OTHER_STRINGS[key]
    if isinstance(default, str):
        return f"{default}_2" if default else "mariadb.databases.svc"

    step = 1 if isinstance(default, int) else 0.5
    maximum = next((c.le for c in field.metadata if isinstance(c, annotated_types.Le)), None)
    return default - step if maximum is not None and default + step > maximum else default + step


def environment_of(result: Rendered, secret_entries: dict[str, str]) -> dict[str, str]:
    """Build the environment the Gatehouse container starts with from its ConfigMap and its env list."""
    container = result.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    environment = dict(result.one("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"])
    for variable in container["env"]:
        if "valueFrom" in variable:
            environment[variable["name"]] = secret_entries[variable["valueFrom"]["secretKeyRef"]["key"]]
        else:
            environment[variable["name"]] = variable["value"]
    return environment


def test_config_values_reach_settings(value_sets, monkeypatch, tmp_path):
    """Every config value, changed from its default, arrives in the settings that service/config.py loads."""
    changed = {key: other_value(key, default) for key, default in VALUES["config"].items()}
    values = {**value_sets["minimal"], "config": changed}
    # Every changed value includes config.redisMode, which is sentinel then: the Redis passwords replace the URL.
    secret_entries = {"mysql-password": values["secret"]["mysqlPassword"], "redis-password": "redis-secret",
                      "redis-sentinel-password": "sentinel-secret"}
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in environment_of(render(values), secret_entries).items():
        monkeypatch.setenv(name, value)
    # In the pod the keys directory is a mounted Secret, and config.py only checks that it exists.
    monkeypatch.setenv("GATEHOUSE_KEYS_DIR", str(tmp_path))

    settings = load_settings()

    # A path setting arrives as a Path; compare it as the string the chart wrote.
    loaded = {key: getattr(settings, setting_name(key)) for key in changed}
    loaded = {key: str(value) if isinstance(value, Path) else value for key, value in loaded.items()}
    mismatched = {key: (value, loaded[key]) for key, value in changed.items() if loaded[key] != value}
    assert mismatched == {}
    assert settings.mysql_password.get_secret_value() == secret_entries["mysql-password"]
    assert settings.redis_url is None
    assert settings.redis_password.get_secret_value() == secret_entries["redis-password"]
    assert settings.redis_sentinel_password.get_secret_value() == secret_entries["redis-sentinel-password"]


def test_bind_port_is_container_port(rendered):
    container = rendered["minimal"].one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    environment = environment_of(rendered["minimal"], {"mysql-password": "", "redis-url": ""})
    host, _, port = environment["GATEHOUSE_BIND"].rpartition(":")

    assert host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"] if p["name"] == "http"] == [int(port)]


def test_app_version_is_package_version():
    """image.tag defaults to appVersion, so it must name the image built from this package."""
    from importlib.metadata import version

    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["appVersion"] == version("gatehouse")


@pytest.mark.parametrize(("extra_env", "named"), [
    ({"GATEHOUSE_WORKERS": "8"}, "GATEHOUSE_WORKERS (set it through config.workers)"),
    ({"GATEHOUSE_TRUSTED_PROXY_COUNT": "0"}, "GATEHOUSE_TRUSTED_PROXY_COUNT (set it through config.trustedProxyCount)"),
    ({"GATEHOUSE_BIND": "0.0.0.0:9000"}, "GATEHOUSE_BIND (set it through service.port)"),
    ({"GATEHOUSE_REDIS_URL": "redis://redis:6379/0"}, "GATEHOUSE_REDIS_URL (set it through secret or secret.existingSecret)"),
    ({"PROMETHEUS_MULTIPROC_DIR": "/tmp/metrics"}, "PROMETHEUS_MULTIPROC_DIR (set it through the chart's metrics volume)"),
])
def test_extra_env_repeating_chart_variable_fails(extra_env, named):
    """A repeated name would give the ConfigMap two values for one key."""
    with pytest.raises(helm_python.HelmRenderError) as failure:
        render({"extraEnv": extra_env})

    assert named in str(failure.value)


def test_extra_env_of_other_settings_renders():
    rendered = render({"extraEnv": {"GATEHOUSE_LOG_FILE": "/var/log/gatehouse/gatehouse.log"}})

    config_map = rendered.one("ConfigMap", "gh-gatehouse")
    assert config_map["data"]["GATEHOUSE_LOG_FILE"] == "/var/log/gatehouse/gatehouse.log"


def service_monitor(interval: str, timeout: str) -> dict[str, Any]:
    return {"metrics": {"serviceMonitor": {"enabled": True, "interval": interval, "scrapeTimeout": timeout}}}


@pytest.mark.parametrize(("interval", "timeout"), [("10s", "30s"), ("1m", "90s"), ("500ms", "1s"), ("1h", "1d"),
                                                   ("1m30s", "2m")])
def test_scrape_timeout_above_interval_fails(interval, timeout):
    with pytest.raises(helm_python.HelmRenderError) as failure:
        render(service_monitor(interval, timeout))

    assert f"metrics.serviceMonitor.scrapeTimeout ({timeout}) is longer than" in str(failure.value)


@pytest.mark.parametrize(("interval", "timeout"), [("30s", "30s"), ("1m", "10s"), ("2m", "1m30s"), ("1h", "59m59s")])
def test_scrape_timeout_within_interval_renders(interval, timeout):
    monitor = render(service_monitor(interval, timeout)).one("ServiceMonitor")

    assert monitor["spec"]["endpoints"][0]["scrapeTimeout"] == timeout
