"""TLS to MySQL in the chart: the mounted CA bundle and client certificate, their settings, and the checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helm_python import HelmRenderError

from service.config import ENV_PREFIX, load_settings
from tests.helm.chart import containers, pod_specs, render, set_path
from tests.helm.test_values import environment_of
from tests.tls_mariadb import CertificateAuthority

TLS_VARIABLES = ("GATEHOUSE_MYSQL_TLS_CA", "GATEHOUSE_MYSQL_TLS_CERT", "GATEHOUSE_MYSQL_TLS_KEY")


def tls_volume(pod_spec: dict) -> dict | None:
    return next((volume for volume in pod_spec["volumes"] if volume["name"] == "mysql-tls"), None)


def projected_files(volume: dict) -> dict[str, tuple[str, str, str]]:
    """Map each file of the projected volume to the kind, name and entry of the object it comes from."""
    files = {}
    for source in volume["projected"]["sources"]:
        kind, reference = next(iter(source.items()))
        for item in reference["items"]:
            files[item["path"]] = (kind, reference["name"], item["key"])
    return files


def config_data(rendered, name: str = "gh-gatehouse") -> dict[str, str]:
    return rendered.one("ConfigMap", name)["data"]


def test_default_mounts_nothing(rendered):
    for _, spec in pod_specs(rendered["minimal"]):
        assert tls_volume(spec) is None
    data = config_data(rendered["minimal"])
    assert data["GATEHOUSE_MYSQL_TLS_MODE"] == "preferred"
    assert not set(TLS_VARIABLES) & set(data)


def test_files_mounted_in_every_pod(rendered):
    pods = list(pod_specs(rendered["production"]))

    assert {obj["kind"] for obj, _ in pods} == {"Deployment", "Job", "CronJob"}
    for obj, spec in pods:
        volume = tls_volume(spec)
        assert volume is not None, obj["metadata"]["name"]
        assert projected_files(volume) == {
            "ca.pem": ("configMap", "mariadb-ca", "ca.crt"),
            "client.pem": ("secret", "gatehouse-mysql-client", "tls.crt"),
            "client.key": ("secret", "gatehouse-mysql-client", "tls.key"),
        }
        assert volume["projected"]["defaultMode"] == 0o440
        for container in containers(spec):
            mounts = [mount for mount in container["volumeMounts"] if mount["name"] == "mysql-tls"]
            assert mounts == [{"name": "mysql-tls", "mountPath": "/etc/gatehouse/mysql-tls", "readOnly": True}]


@pytest.mark.parametrize("config_map", ["gh-gatehouse", "gh-gatehouse-migrate"])
def test_paths_name_mounted_files(rendered, config_map):
    data = config_data(rendered["production"], config_map)
    volume = tls_volume(rendered["production"].one("Deployment")["spec"]["template"]["spec"])
    files = projected_files(volume)

    assert data["GATEHOUSE_MYSQL_TLS_MODE"] == "verify_identity"
    for variable in TLS_VARIABLES:
        path = Path(data[variable])
        assert str(path.parent) == "/etc/gatehouse/mysql-tls"
        assert path.name in files


def test_ca_from_secret(value_sets):
    values = set_path(value_sets["minimal"], "config.mysqlTlsMode", "verify_ca")
    values = set_path(values, "mysqlTls.ca", {"secretName": "mariadb-tls", "key": "ca.pem"})

    result = render(values)

    volume = tls_volume(result.one("Deployment")["spec"]["template"]["spec"])
    assert projected_files(volume) == {"ca.pem": ("secret", "mariadb-tls", "ca.pem")}
    assert "GATEHOUSE_MYSQL_TLS_CERT" not in config_data(result)


def test_rendered_environment_loads(value_sets, monkeypatch, tmp_path):
    """The settings load from the rendered environment, with the files where the volume puts them."""
    values = set_path(value_sets["minimal"], "config.mysqlTlsMode", "verify_identity")
    values = set_path(values, "mysqlTls", {"ca": {"secretName": "mariadb-tls"},
                                           "clientCertificate": {"secretName": "mariadb-tls"}})
    result = render(values)
    ca = CertificateAuthority(tmp_path, "chart")
    certificate, key = ca.issue("gatehouse")
    # The volume's files, written to tmp_path under the names the chart gives them.
    mounted = tmp_path / "mysql-tls"
    mounted.mkdir()
    contents = {"ca.pem": ca.certificate_path, "client.pem": certificate, "client.key": key}
    for name in projected_files(tls_volume(result.one("Deployment")["spec"]["template"]["spec"])):
        (mounted / name).write_bytes(contents[name].read_bytes())
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    environment = environment_of(result, {"mysql-password": "mysql-secret", "redis-url": "redis://redis:6379/0"})
    for name, value in environment.items():
        if name in TLS_VARIABLES:
            value = str(mounted / Path(value).relative_to("/etc/gatehouse/mysql-tls"))
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEHOUSE_KEYS_DIR", str(tmp_path))

    settings = load_settings()

    assert settings.mysql_tls_mode == "verify_identity"
    assert settings.mysql_tls_ca == mounted / "ca.pem"
    assert settings.mysql_tls_cert == mounted / "client.pem"
    assert settings.mysql_tls_key == mounted / "client.key"


@pytest.mark.parametrize(("changes", "complaint"), [
    ({"config.mysqlTlsMode": "verify_ca"}, "neither mysqlTls.ca.secretName nor mysqlTls.ca.configMapName is set"),
    ({"config.mysqlTlsMode": "verify_identity"}, "config.mysqlTlsMode is verify_identity, which checks"),
    ({"mysqlTls.ca.secretName": "mariadb-tls"}, "config.mysqlTlsMode is preferred, which checks no certificate"),
    ({"config.mysqlTlsMode": "verify_ca", "mysqlTls.ca.secretName": "mariadb-tls",
      "mysqlTls.ca.configMapName": "mariadb-ca"}, "are both set"),
    ({"config.mysqlTlsMode": "disabled", "mysqlTls.clientCertificate.secretName": "client"},
     "config.mysqlTlsMode is disabled, which may connect without TLS"),
])
def test_invalid_combination_fails_rendering(value_sets, changes, complaint):
    values = value_sets["minimal"]
    for path, value in changes.items():
        values = set_path(values, path, value)

    with pytest.raises(HelmRenderError) as excinfo:
        render(values)

    assert complaint in str(excinfo.value)


def test_client_certificate_with_required_mode(value_sets):
    values = set_path(value_sets["minimal"], "config.mysqlTlsMode", "required")
    values = set_path(values, "mysqlTls.clientCertificate.secretName", "client")

    data = config_data(render(values))

    assert data["GATEHOUSE_MYSQL_TLS_CERT"] == "/etc/gatehouse/mysql-tls/client.pem"
    assert "GATEHOUSE_MYSQL_TLS_CA" not in data
