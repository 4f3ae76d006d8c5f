"""The migration hook and the maintenance CronJobs run real `gatehouse` commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from tests.helm.chart import KUBERNETES_VERSIONS, VALUE_SETS, containers, pod_specs, render

GATEHOUSE = Path(sys.executable).with_name("gatehouse")
# Every CronJob the chart can render: the production value set enables them all.
ALL_JOBS_SET = "production"


def commands(result) -> dict[str, list[list[str]]]:
    """Map each Job and CronJob to its command lines, init containers first."""
    return {f"{owner['kind']}/{owner['metadata']['name']}": [c["command"] for c in containers(spec)]
            for owner, spec in pod_specs(result) if owner["kind"] != "Deployment"}


def cli_has_command(command: list[str]) -> subprocess.CompletedProcess:
    """Run `gatehouse <args> --help` with the installed console script."""
    return subprocess.run([str(GATEHOUSE), *command[1:], "--help"], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def cli_answers(rendered) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Run `--help` of every command that a rendered Job or CronJob runs, once each."""
    requested = {tuple(command) for result in rendered.values()
              for lines in commands(result).values() for command in lines}
    return {command: cli_has_command(list(command)) for command in sorted(requested)}


def test_commands_start_with_gatehouse(rendered):
    others = [command for result in rendered.values() for lines in commands(result).values()
              for command in lines if command[0] != "gatehouse"]
    assert others == []


@pytest.mark.parametrize("value_set", ["default", "minimal", "existing-secret"])
def test_enabled_job_commands_exist(rendered, cli_answers, value_set):
    """Every command that an install with these values schedules is a real `gatehouse` command."""
    failing = {name: (command, cli_answers[tuple(command)].stderr.strip().splitlines()[-1:])
               for name, lines in commands(rendered[value_set]).items() for command in lines
               if cli_answers[tuple(command)].returncode != 0}
    assert failing == {}


def test_cronjob_on_when_command_exists(rendered, cli_answers):
    """A CronJob is on by default once its command exists, and off while it does not."""
    every_job = commands(rendered[ALL_JOBS_SET])
    default_jobs = commands(rendered["default"])
    wrong = {}
    for name, lines in every_job.items():
        if not name.startswith("CronJob/"):
            continue
        exists = all(cli_answers[tuple(command)].returncode == 0 for command in lines)
        if exists != (name in default_jobs):
            wrong[name] = f"command exists: {exists}, enabled by default: {name in default_jobs}"
    assert wrong == {}


def test_all_jobs_set_renders_every_cronjob(rendered):
    names = {name.split("/", 1)[1] for name in commands(rendered[ALL_JOBS_SET]) if name.startswith("CronJob/")}
    assert names == {"gh-gatehouse-tokens-purge", "gh-gatehouse-blacklist-rotate", "gh-gatehouse-backup"}


def test_help_probe_rejects_unknown_command():
    """The check above can fail: an unknown command makes `--help` exit non-zero."""
    assert cli_has_command(["gatehouse", "no-such-command"]).returncode != 0


@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_migration_runs_before_install_and_upgrade(rendered, value_set):
    result = rendered[value_set]
    job = result.one("Job")
    annotations = job["metadata"]["annotations"]

    assert commands(result)[f"Job/{job['metadata']['name']}"] == [["gatehouse", "migrate"]]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"].split(",")


@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_migration_uses_hook_objects(rendered, value_set):
    """Hooks run before the release's objects exist, so the Job refers only to hooks or to existing objects."""
    result = rendered[value_set]
    job = result.one("Job")
    spec = job["spec"]["template"]["spec"]
    job_weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    hooks = {(obj["kind"], obj["metadata"]["name"]): int(obj["metadata"]["annotations"]["helm.sh/hook-weight"])
             for obj in result.objects if "helm.sh/hook" in obj["metadata"].get("annotations", {})}
    chart_objects = {(obj["kind"], obj["metadata"]["name"]) for obj in result.objects} - set(hooks)
    references = {("ServiceAccount", spec["serviceAccountName"])}
    references |= {("ConfigMap", source["configMapRef"]["name"]) for source in spec["containers"][0]["envFrom"]}
    references |= {("Secret", volume["secret"]["secretName"]) for volume in spec["volumes"] if "secret" in volume}
    references |= {("Secret", item["valueFrom"]["secretKeyRef"]["name"]) for item in spec["containers"][0]["env"]
                   if "secretKeyRef" in item.get("valueFrom", {})}

    assert references & chart_objects == set()
    for reference in references & set(hooks):
        assert hooks[reference] < job_weight, reference


def test_hook_copies_match_release(rendered):
    result = rendered["minimal"]
    assert result.one("ConfigMap", "gh-gatehouse-migrate")["data"] == result.one("ConfigMap", "gh-gatehouse")["data"]
    assert result.one("Secret", "gh-gatehouse-migrate")["data"] == result.one("Secret", "gh-gatehouse")["data"]


def test_migration_can_be_disabled():
    assert render({"migrations": {"enabled": False}}).of_kind("Job") == []


def test_cronjobs_forbid_overlap_and_keep_history(rendered):
    cronjobs = rendered[ALL_JOBS_SET].of_kind("CronJob")
    assert len(cronjobs) == 3
    for cronjob in cronjobs:
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", cronjob["metadata"]["name"]
        assert spec["successfulJobsHistoryLimit"] >= 1, cronjob["metadata"]["name"]
        assert spec["failedJobsHistoryLimit"] >= 1, cronjob["metadata"]["name"]
        assert spec["timeZone"] == "Europe/Berlin", cronjob["metadata"]["name"]


def test_backup_verifies_what_it_created(rendered):
    cronjob = rendered[ALL_JOBS_SET].one("CronJob", "gh-gatehouse-backup")
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    claim = rendered[ALL_JOBS_SET].one("PersistentVolumeClaim")
    volumes = {volume["name"]: volume for volume in spec["volumes"]}

    assert [c["command"] for c in spec["initContainers"]] == [["gatehouse", "backup", "create"]]
    assert [c["command"] for c in spec["containers"]] == [["gatehouse", "backup", "verify", "--latest"]]
    for container in containers(spec):
        mount = next(m for m in container["volumeMounts"] if m["name"] == "backups")
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_backup_claim_survives_uninstall(rendered):
    claim = rendered[ALL_JOBS_SET].one("PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def backup_cronjob(result) -> dict:
    """Return the one CronJob of the backup component; the purge CronJob is on by default too."""
    matches = [cronjob for cronjob in result.of_kind("CronJob")
               if cronjob["metadata"]["labels"]["app.kubernetes.io/component"] == "backup"]
    assert len(matches) == 1, f"expected one backup CronJob, found {len(matches)}"
    return matches[0]


def test_backup_uses_existing_claim(value_sets):
    values = {**value_sets["existing-secret"],
              "cronJobs": {"backup": {"enabled": True, "persistence": {"existingClaim": "gatehouse-backups"}}}}
    result = render(values)
    cronjob = backup_cronjob(result)
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    claims = [volume["persistentVolumeClaim"]["claimName"] for volume in spec["volumes"]
              if "persistentVolumeClaim" in volume]

    assert result.of_kind("PersistentVolumeClaim") == []
    assert claims == ["gatehouse-backups"]
    kubernetes_validate.validate(cronjob, KUBERNETES_VERSIONS[0], strict=True)


def test_backup_without_verify_only_creates(value_sets):
    values = {**value_sets["minimal"], "cronJobs": {"backup": {"enabled": True, "verify": False}}}
    spec = backup_cronjob(render(values))["spec"]["jobTemplate"]["spec"]["template"]["spec"]

    assert "initContainers" not in spec
    assert [c["command"] for c in spec["containers"]] == [["gatehouse", "backup", "create"]]
