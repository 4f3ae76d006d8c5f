"""The alert rules: rendered through the chart, checked by promtool, each alert unit-tested.

Every alert has one bad case, where it must fire, and one normal case, where it must stay
silent. promtool compares the labels and the annotations of each firing alert.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

CHART = ROOT / "helm" / "gatehouse"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make test` installs it")


@dataclass(frozen=True)
class Case:
    alert: str
    bad: dict[str, str]
    normal: dict[str, str]
    eval_time: str
    interval: str = "1m"
    # Labels of the firing alert besides severity, for alerts per instance.
    labels: tuple[tuple[str, str], ...] = ()


CASES = [
    Case("GatehouseLoginFailureRateHigh",
         bad={'gatehouse_logins_total{result="invalid_credentials"}': "0+120x40",
              'gatehouse_logins_total{result="success"}': "0+60x40"},
         normal={'gatehouse_logins_total{result="invalid_credentials"}': "0+6x40",
                 'gatehouse_logins_total{result="success"}': "0+120x40"},
         eval_time="30m"),
    Case("GatehouseRefreshTokenReuse",
         bad={'gatehouse_refreshes_total{outcome="reuse_detected"}': "0 0 0 1 1 1 1 1 1 1"},
         normal={'gatehouse_refreshes_total{outcome="reuse_detected"}': "0x10"},
         eval_time="6m"),
    # Normal: one failed refresh at minute 5, as in a Redis restart of a second.
    Case("GatehouseTokenRotationErrors",
         bad={"gatehouse_token_rotation_errors_total": "0+1x20"},
         normal={"gatehouse_token_rotation_errors_total": "0x5 1x20"},
         eval_time="8m"),
    Case("GatehouseDown",
         bad={'up{job="gatehouse", namespace="monitoring", instance="a"}': "1 1 0 0 0 0 0 0 0",
              'up{job="gatehouse", namespace="monitoring", instance="b"}': "1 1 0 0 0 0 0 0 0",
              # Another release of the same name in another namespace does not count.
              'up{job="gatehouse", namespace="other", instance="c"}': "1x9"},
         normal={'up{job="gatehouse", namespace="monitoring", instance="a"}': "1 1 0 0 0 0 0 0 0",
                 'up{job="gatehouse", namespace="monitoring", instance="b"}': "1x9"},
         eval_time="8m"),
    Case("GatehouseWorkersMissing",
         bad={'gatehouse_workers{instance="a"}': "2 2 1 1 1 1 1 1 1 1 1 1 1 1 1",
              'gatehouse_workers_configured{instance="a"}': "2x15",
              'gatehouse_workers{instance="b"}': "2x15",
              'gatehouse_workers_configured{instance="b"}': "2x15"},
         # A worker that a crash took is back within minutes.
         normal={'gatehouse_workers{instance="a"}': "2 2 1 1 2 2 2 2 2 2 2 2 2 2 2",
                 'gatehouse_workers_configured{instance="a"}': "2x15"},
         eval_time="14m", labels=(("instance", "a"),)),
    Case("GatehouseRedisUnavailable",
         bad={'gatehouse_dependency_up{dependency="redis", instance="a"}': "1 1 0 0 0 0 0",
              'gatehouse_dependency_up{dependency="redis", instance="b"}': "1x7"},
         normal={'gatehouse_dependency_up{dependency="redis", instance="a"}': "1x7"},
         eval_time="5m"),
    Case("GatehouseMySQLUnavailable",
         bad={'gatehouse_dependency_up{dependency="mysql"}': "1 1 0 0 0 0 0"},
         normal={'gatehouse_dependency_up{dependency="mysql"}': "1x7"},
         eval_time="5m"),
    Case("GatehouseServerErrorRatioHigh",
         bad={'http_request_duration_seconds_count{job="gatehouse", namespace="monitoring", status="500"}': "0+60x20",
              'http_request_duration_seconds_count{job="gatehouse", namespace="monitoring", status="200"}': "0+60x20"},
         normal={'http_request_duration_seconds_count{job="gatehouse", namespace="monitoring", status="500"}': "0+1x20",
                 'http_request_duration_seconds_count{job="gatehouse", namespace="monitoring", status="200"}': "0+600x20",
                 # Another Flask service's errors, under the same metric name, are not Gatehouse's.
                 'http_request_duration_seconds_count{job="other", namespace="monitoring", status="500"}': "0+600x20",
                 # A client that sends an unsupported transfer coding gets 501, which is not the service's fault.
                 'http_request_duration_seconds_count{job="gatehouse", namespace="monitoring", status="501"}': "0+600x20"},
         eval_time="15m"),
    Case("GatehouseLatencyP99High",
         bad={'http_request_duration_seconds_bucket{job="gatehouse", namespace="monitoring", url_rule="/v1/auth/login", le="0.1"}': "0+10x30",
              'http_request_duration_seconds_bucket{job="gatehouse", namespace="monitoring", url_rule="/v1/auth/login", le="1"}': "0+100x30",
              'http_request_duration_seconds_bucket{job="gatehouse", namespace="monitoring", url_rule="/v1/auth/login", le="+Inf"}': "0+100x30"},
         normal={'http_request_duration_seconds_bucket{job="gatehouse", namespace="monitoring", url_rule="/v1/auth/login", le="0.1"}': "0+100x30",
                 'http_request_duration_seconds_bucket{job="gatehouse", namespace="monitoring", url_rule="/v1/auth/login", le="1"}': "0+100x30",
                 'http_request_duration_seconds_bucket{job="gatehouse", namespace="monitoring", url_rule="/v1/auth/login", le="+Inf"}': "0+100x30",
                 # Slow probes do not count.
                 'http_request_duration_seconds_bucket{job="gatehouse", namespace="monitoring", url_rule="/ready", le="0.1"}': "0x30",
                 'http_request_duration_seconds_bucket{job="gatehouse", namespace="monitoring", url_rule="/ready", le="+Inf"}': "0+100x30"},
         eval_time="20m"),
    Case("GatehouseRateLimitHitsSurging",
         bad={'gatehouse_rate_limit_hits_total{route="/v1/auth/login"}': "0+600x30"},
         normal={'gatehouse_rate_limit_hits_total{route="/v1/auth/login"}': "0+6x30"},
         eval_time="20m"),
    Case("GatehouseBanRateSurging",
         bad={'gatehouse_ip_bans_total{cause="failed_logins"}': "0+5x30"},
         normal={'gatehouse_ip_bans_total{cause="failed_logins"}': "0+0.1x30"},
         eval_time="20m"),
    Case("GatehouseTokenPurgeStale",
         bad={'gatehouse_job_last_success_timestamp_seconds{job_name="tokens_purge"}': "0x300"},
         normal={'gatehouse_job_last_success_timestamp_seconds{job_name="tokens_purge"}': "0+60x300"},
         eval_time="4h"),
    Case("GatehouseTokenPurgeFailing",
         bad={'gatehouse_job_last_success_timestamp_seconds{job_name="tokens_purge"}': "100x20",
              'gatehouse_job_last_failure_timestamp_seconds{job_name="tokens_purge"}': "200x20"},
         normal={'gatehouse_job_last_success_timestamp_seconds{job_name="tokens_purge"}': "300x20",
                 'gatehouse_job_last_failure_timestamp_seconds{job_name="tokens_purge"}': "200x20"},
         eval_time="10m"),
    Case("GatehouseBackupVerificationStale",
         bad={'gatehouse_job_last_success_timestamp_seconds{job_name="backup_verify"}': "0x700"},
         normal={'gatehouse_job_last_success_timestamp_seconds{job_name="backup_verify"}': "0+240x700"},
         eval_time="40h", interval="4m"),
    Case("GatehouseBackupVerificationFailing",
         bad={'gatehouse_job_last_success_timestamp_seconds{job_name="backup_verify"}': "100x20",
              'gatehouse_job_last_failure_timestamp_seconds{job_name="backup_verify"}': "200x20"},
         normal={'gatehouse_job_last_success_timestamp_seconds{job_name="backup_verify"}': "300x20",
                 'gatehouse_job_last_failure_timestamp_seconds{job_name="backup_verify"}': "200x20"},
         eval_time="10m"),
    Case("GatehouseMaintenanceJobFailing",
         bad={'gatehouse_job_last_success_timestamp_seconds{job_name="blacklist_rotate"}': "100x20",
              'gatehouse_job_last_failure_timestamp_seconds{job_name="blacklist_rotate"}': "200x20",
              # A job with alerts of its own is left to them.
              'gatehouse_job_last_success_timestamp_seconds{job_name="tokens_purge"}': "100x20",
              'gatehouse_job_last_failure_timestamp_seconds{job_name="tokens_purge"}': "200x20"},
         normal={'gatehouse_job_last_success_timestamp_seconds{job_name="backup_create"}': "300x20",
                 'gatehouse_job_last_failure_timestamp_seconds{job_name="backup_create"}': "200x20"},
         eval_time="10m", labels=(("job_name", "blacklist_rotate"),)),
]


def render_rules(values: dict | None = None) -> dict:
    """Render the chart's PrometheusRule and return its spec: the groups promtool reads."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    # With the chart's ServiceMonitor, whose job label GatehouseDown selects.
    base = {"prometheusRule": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}}
    rendered = chart.render({**base, **(values or {})}, name="gatehouse", namespace="monitoring")
    return yaml.safe_load(rendered["gatehouse/templates/prometheusrule.yaml"])["spec"]


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump(render_rules()))
    return path


def rules_by_name(spec: dict) -> dict[str, dict]:
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}


def test_rules_pass_promtool_check(rules_file):
    result = subprocess.run([PROMTOOL, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_documented_and_labelled():
    runbooks = (ROOT / "docs" / "runbooks.md").read_text().lower()
    for name, rule in rules_by_name(render_rules()).items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
        assert rule["annotations"]["runbook_url"].endswith(f"#{name.lower()}"), name
        assert f"## {name.lower()}" in runbooks, name
        assert rule["for"], name


def test_every_alert_has_a_case():
    assert {case.alert for case in CASES} == set(rules_by_name(render_rules()))


def test_down_alert_needs_a_known_job():
    without_monitor = rules_by_name(render_rules({"metrics": {"serviceMonitor": {"enabled": False}}}))
    assert "GatehouseDown" not in without_monitor
    assert "GatehouseWorkersMissing" in without_monitor

    own_job = rules_by_name(render_rules({"metrics": {"serviceMonitor": {"enabled": False}},
                                          "alerts": {"upJob": "auth-gatehouse"}}))
    assert own_job["GatehouseDown"]["expr"] == 'absent(up{job="auth-gatehouse"} == 1)'


def test_rules_without_job_pass_promtool(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(render_rules({"metrics": {"serviceMonitor": {"enabled": False}}})))

    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr


def test_thresholds_come_from_values():
    spec = render_rules({"alerts": {"serverErrorRatio": 0.2, "runbookBaseUrl": "https://runbooks.test/gatehouse"}})
    rule = rules_by_name(spec)["GatehouseServerErrorRatioHigh"]
    assert "> 0.2" in rule["expr"]
    assert rule["annotations"]["summary"].startswith("More than 20%")
    assert rule["annotations"]["runbook_url"].startswith("https://runbooks.test/gatehouse#")


def promtool_test(case: Case, rule: dict) -> dict:
    def unit(series: dict[str, str], firing: bool) -> dict:
        expected = [{"exp_labels": {"severity": rule["labels"]["severity"], **dict(case.labels)},
                     "exp_annotations": rule["annotations"]}] if firing else []
        return {
            "interval": case.interval,
            "input_series": [{"series": name, "values": values} for name, values in series.items()],
            "alert_rule_test": [{"eval_time": case.eval_time, "alertname": case.alert, "exp_alerts": expected}],
        }

    return {"tests": [unit(case.bad, True), unit(case.normal, False)]}


@pytest.mark.parametrize("case", CASES, ids=[case.alert for case in CASES])
def test_alert_fires_on_bad_and_not_on_normal(case, rules_file, tmp_path):
    rule = rules_by_name(yaml.safe_load(rules_file.read_text()))[case.alert]
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m",
                                         **promtool_test(case, rule)}))
    result = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmap_carries_dashboard():
    import json

    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render({"grafanaDashboard": {"enabled": True}}, name="gatehouse", namespace="monitoring")
    config_map = yaml.safe_load(rendered["gatehouse/templates/dashboard-configmap.yaml"])
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["gatehouse.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboards" / "gatehouse.json").read_text())


@pytest.mark.parametrize(("values", "left_out", "failing_jobs"), [
    ({"cronJobs": {"tokensPurge": {"enabled": False}}},
     {"GatehouseTokenPurgeStale", "GatehouseTokenPurgeFailing"}, "backup_create|blacklist_rotate"),
    ({"cronJobs": {"backup": {"verify": False}}},
     {"GatehouseBackupVerificationStale", "GatehouseBackupVerificationFailing"}, "backup_create|blacklist_rotate"),
    ({"cronJobs": {"backup": {"enabled": False}, "blacklistRotate": {"enabled": False}}},
     {"GatehouseBackupVerificationStale", "GatehouseBackupVerificationFailing", "GatehouseMaintenanceJobFailing"},
     None),
    ({"cronJobs": {"backup": {"enabled": False}}, "alerts": {"externalJobs": ["backup_create", "backup_verify"]}},
     set(), "backup_create|blacklist_rotate"),
], ids=["purge_off", "verify_off", "backup_and_rotation_off", "backup_run_elsewhere"])
def test_disabled_job_alerts_left_out(values, left_out, failing_jobs):
    """A job that never runs would fire its staleness alert forever, so its alerts go with its CronJob."""
    rules = rules_by_name(render_rules(values))

    assert not left_out & set(rules)
    assert set(rules_by_name(render_rules())) - set(rules) == left_out
    if failing_jobs is not None:
        assert f'job_name=~"{failing_jobs}"' in rules["GatehouseMaintenanceJobFailing"]["expr"]
