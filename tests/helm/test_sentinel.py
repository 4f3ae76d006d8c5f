"""Sentinel mode in the chart: the settings, the Secret entries, the checks and the network policy."""

from __future__ import annotations

import base64
import os

import pytest
from helm_python import HelmRenderError

from service.config import ENV_PREFIX, load_settings
from tests.helm.chart import containers, pod_specs, render, set_path
from tests.helm.test_values import environment_of

SENTINEL_SECRETS = {"mysql-password": "mysql-secret", "redis-password": "redis-secret",
                    "redis-sentinel-password": "sentinel-secret"}


def secret_references(container: dict) -> dict[str, str]:
    return {item["name"]: item["valueFrom"]["secretKeyRef"]["key"] for item in container["env"]
            if "secretKeyRef" in item.get("valueFrom", {})}


def test_sentinel_settings_load(rendered, monkeypatch, tmp_path):
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in environment_of(rendered["sentinel"], SENTINEL_SECRETS).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEHOUSE_KEYS_DIR", str(tmp_path))

    settings = load_settings()

    assert settings.redis_mode == "sentinel"
    assert len(settings.sentinel_addresses) == 3
    assert settings.redis_sentinel_service == "mymaster"
    assert settings.redis_db == 2
    assert settings.redis_wait_replicas == 1
    assert settings.redis_password.get_secret_value() == "redis-secret"
    assert settings.redis_sentinel_password.get_secret_value() == "sentinel-secret"


def test_sentinel_passwords_reach_every_container(rendered):
    for _, spec in pod_specs(rendered["sentinel"]):
        for container in containers(spec):
            references = secret_references(container)
            assert references.get("GATEHOUSE_REDIS_PASSWORD") == "redis-password"
            assert references.get("GATEHOUSE_REDIS_SENTINEL_PASSWORD") == "redis-sentinel-password"
            assert "GATEHOUSE_REDIS_URL" not in references


def test_sentinel_passwords_optional_in_secret(rendered):
    container = rendered["sentinel"].one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    optional = {item["name"]: item["valueFrom"]["secretKeyRef"].get("optional") for item in container["env"]
                if "secretKeyRef" in item.get("valueFrom", {})}

    assert optional["GATEHOUSE_REDIS_PASSWORD"] is True
    assert optional["GATEHOUSE_REDIS_SENTINEL_PASSWORD"] is True
    assert optional["GATEHOUSE_MYSQL_PASSWORD"] is None


def test_sentinel_secret_holds_passwords(rendered, value_sets):
    secret = rendered["sentinel"].one("Secret", "gh-gatehouse")
    data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}

    assert data["redis-password"] == value_sets["sentinel"]["secret"]["redisPassword"]
    assert data["redis-sentinel-password"] == value_sets["sentinel"]["secret"]["redisSentinelPassword"]
    assert "redis-url" not in data


def test_standalone_env_has_no_sentinel_passwords(rendered):
    container = rendered["minimal"].one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    references = secret_references(container)

    assert references["GATEHOUSE_REDIS_URL"] == "redis-url"
    assert "GATEHOUSE_REDIS_PASSWORD" not in references


@pytest.mark.parametrize("missing", ["config.redisSentinels", "config.redisSentinelService"])
def test_sentinel_without_address_fails_rendering(value_sets, missing):
    values = set_path(value_sets["sentinel"], missing, "")

    with pytest.raises(HelmRenderError) as excinfo:
        render(values)

    assert "config.redisSentinels" in str(excinfo.value)
    assert "config.redisSentinelService" in str(excinfo.value)


def test_network_policy_opens_sentinel_port(rendered):
    policy = rendered["sentinel"].one("NetworkPolicy")
    ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule.get("ports", [])}

    assert 26379 in ports
    assert 6379 in ports
