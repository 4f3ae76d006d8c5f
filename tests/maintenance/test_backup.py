"""backup create, verify and restore against the real test MariaDB and Redis, through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest

from service.config import InvalidConfiguration, Settings
from service.database import connect_args
from service.maintenance.backup import (
    CANARY_EMAIL,
    CANARY_USER_ID,
    LAST_VERIFIED_KEY,
    claim,
    claim_key,
    require_backup_dir,
)
from service.maintenance.dumps import DUMP_NAME, MANIFEST_NAME, RDB_NAME, BackupFailed, sha256_of, write_manifest
from service.maintenance.jobs import EXIT_LOCKED, EXIT_USAGE, lock_key, read_record
from service.redis_store import KEY_PREFIX
from service.sessions import session_key, user_sessions_key
from tests.helpers import ROOT, call_under_modes, directory_for_modes, free_port, full_tmpfs
from tests.tls_mariadb import CertificateAuthority

PASSWORD = "correct horse battery staple"
USERS = ("ann@example.com", "ben@example.com", "cid@example.com")
JOBS = ("backup_create", "backup_verify", "backup_restore")


def split_output(stdout: str, stderr: str) -> tuple[list[dict], str]:
    """Return the JSON log events and the other lines of both streams.

    Log lines may go to either stream, so both are read.
    """
    lines = stdout.splitlines() + stderr.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    messages = "\n".join(line for line in lines if not line.startswith("{"))
    return events, messages


def gatehouse(backup_dir: Path, *args: str, **env: str) -> tuple[int, list[dict], str]:
    """Run `gatehouse ARGS` with the backup directory; return the exit code, the log events and the other lines."""
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "GATEHOUSE_BACKUP_DIR": str(backup_dir), **env},
    )
    events, messages = split_output(result.stdout, result.stderr)
    return result.returncode, events, messages


def start_gatehouse(backup_dir: Path, temp_dir: Path, *args: str) -> subprocess.Popen:
    """Start `gatehouse ARGS` in the background, with its temporary files in temp_dir."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "GATEHOUSE_BACKUP_DIR": str(backup_dir), "TMPDIR": str(temp_dir)},
    )


def processes_mentioning(text: str) -> dict[int, str]:
    """Return the command line of every running process whose command line contains text, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if text in command:
            found[int(entry.name)] = command
    return found


def is_running(pid: int) -> bool:
    """Return whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition: Callable[[], Any], description: str, timeout: float = 120.0) -> Any:
    """Poll condition every 5 ms until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        time.sleep(0.005)
    return result


def only_event(events: list[dict], name: str) -> dict:
    matching = [event for event in events if event["event"] == name]
    assert len(matching) == 1, events
    return matching[0]


def count_users(settings) -> int:
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) AS n FROM users")
            return cursor.fetchone()["n"]
    finally:
        connection.close()


@pytest.fixture
def data(client) -> dict[str, str]:
    """Three users, each logged in once; returns their ids by email."""
    ids = {}
    for email in USERS:
        registered = client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
        assert registered.status_code == 201
        ids[email] = registered.get_json()["id"]
        assert client.post("/v1/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
    return ids


@pytest.fixture
def temp_dir():
    """An empty directory for a job's temporary files, with a path short enough for Unix sockets inside it."""
    with tempfile.TemporaryDirectory(prefix="gh-test-") as directory:
        yield Path(directory)


@pytest.fixture
def backup(tmp_path, data) -> Path:
    """A backup of the data, made by `gatehouse backup create`."""
    code, events, messages = gatehouse(tmp_path, "backup", "create")
    assert code == 0, (events, messages)
    return Path(only_event(events, "job_succeeded")["backup"])


def edit_manifest(backup: Path, change) -> None:
    manifest = json.loads((backup / MANIFEST_NAME).read_text())
    change(manifest)
    (backup / MANIFEST_NAME).write_text(json.dumps(manifest))


def verify_error(backup: Path) -> str:
    code, events, messages = gatehouse(backup.parent, "backup", "verify", str(backup))
    assert code == 1, (events, messages)
    return only_event(events, "job_failed")["error"]


def fix_dump_checksum(backup: Path) -> None:
    """Make the manifest agree with the dump as it is now, so that only loading the dump can find a change."""
    dump = backup / DUMP_NAME

    def fix_checksum(manifest: dict) -> None:
        manifest["files"][DUMP_NAME] = {"sha256": sha256_of(dump), "bytes": dump.stat().st_size}

    edit_manifest(backup, fix_checksum)


def duplicate_email(lines: list[str], row: int) -> None:
    """Insert a copy of a users row with a new id, which fails on the unique email."""
    lines.insert(row + 1, lines[row].replace("VALUES ('", "VALUES ('x", 1))


def break_syntax(lines: list[str], row: int) -> None:
    """Cut the row's statement after its password hash, so that the client reports the text near the cut."""
    lines[row] = lines[row][: lines[row].index("$argon2") + 40] + ";\n"


def damage_user_row(backup: Path, damage: Callable[[list[str], int], None]) -> None:
    """Apply damage to the dump at the first user's row, and make the manifest's checksum agree."""
    dump = backup / DUMP_NAME
    lines = dump.read_text().splitlines(keepends=True)
    row = next(index for index, line in enumerate(lines)
               if line.startswith("INSERT INTO `users`") and USERS[0] in line)
    damage(lines, row)
    dump.write_text("".join(lines))
    fix_dump_checksum(backup)


def assert_no_row_content(text: str) -> None:
    assert USERS[0] not in text
    assert "$argon2" not in text


def test_create_writes_files_and_manifest(backup, redis_client):
    manifest = json.loads((backup / MANIFEST_NAME).read_text())

    for name in (DUMP_NAME, RDB_NAME):
        assert manifest["files"][name]["sha256"] == sha256_of(backup / name)
        assert (backup / name).stat().st_mode & 0o777 == 0o600
    # Three users and the canary.
    assert manifest["mysql"]["rows"]["users"] == len(USERS) + 1
    assert manifest["mysql"]["rows"]["roles"] >= 1
    # Three sessions and the canary's, each with its token set.
    assert manifest["redis"]["prefixes"]["gh:sess"]["keys"] == 2 * (len(USERS) + 1)
    assert manifest["redis"]["prefixes"]["gh:rt"]["keys"] == len(USERS) + 1
    assert manifest["canary"]["user_id"] == CANARY_USER_ID
    assert set(manifest["versions"]) == {"gatehouse", "mysql_server", "redis_server", "mysql_dump", "redis_cli"}
    assert read_record(redis_client, "backup_create").last_success_at is not None
    assert not redis_client.exists(lock_key("backup"))


def test_verify_accepts_good_backup(backup, redis_client):
    code, events, messages = gatehouse(backup.parent, "backup", "verify", "--latest")

    assert code == 0, (events, messages)
    assert only_event(events, "job_succeeded")["backup"] == str(backup)
    assert read_record(redis_client, "backup_verify").last_success_at is not None
    assert redis_client.get(LAST_VERIFIED_KEY) == backup.name


def test_verify_of_named_backup_is_not_recorded(backup, tmp_path, redis_client):
    """Verifying a chosen backup by hand, as the restore runbook does, leaves the scheduled job's record alone."""
    damaged = tmp_path / "copy" / backup.name
    shutil.copytree(backup, damaged)
    damage_user_row(damaged, break_syntax)

    failed, failed_events, messages = gatehouse(backup.parent, "backup", "verify", str(damaged))
    passed, passed_events, _ = gatehouse(backup.parent, "backup", "verify", str(backup))

    assert failed == 1, (failed_events, messages)
    assert only_event(failed_events, "job_failed")["recorded"] is False
    assert passed == 0
    assert only_event(passed_events, "job_succeeded")["recorded"] is False
    record = read_record(redis_client, "backup_verify")
    assert (record.last_failure_at, record.last_success_at) == (None, None)
    # A backup in GATEHOUSE_BACKUP_DIR that passed counts for retention all the same.
    assert redis_client.get(LAST_VERIFIED_KEY) == backup.name


def test_verify_ignores_mysql_tls_settings(backup, tmp_path):
    # The test MariaDB offers no TLS, so these settings would fail any connection to it:
    # verify loads the dump into its own scratch server, which they must not reach.
    ca = CertificateAuthority(tmp_path, "unused").certificate_path
    code, events, messages = gatehouse(backup.parent, "backup", "verify", "--latest",
                                       GATEHOUSE_MYSQL_TLS_MODE="verify_identity", GATEHOUSE_MYSQL_TLS_CA=str(ca))

    assert code == 0, (events, messages)
    assert only_event(events, "job_succeeded")["backup"] == str(backup)


def test_verify_rejects_truncated_dump(backup):
    dump = backup / DUMP_NAME
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])

    error = verify_error(backup)

    assert f"{DUMP_NAME} has {dump.stat().st_size} bytes" in error
    # Loading what is left fails or loses rows; either way some table is reported.
    assert "does not load" in error or "rows, the manifest says" in error or "is missing" in error


def test_verify_counts_rows_of_truncated_dump(backup):
    # Cut the dump after the second user's row, then make the checksums agree: only loading it can
    # tell. The table's rows are one transaction in the dump, and the cut one never commits.
    dump = backup / DUMP_NAME
    lines = dump.read_text().splitlines(keepends=True)
    user_rows = [index for index, line in enumerate(lines) if line.startswith("INSERT INTO `users`")]
    dump.write_text("".join(lines[: user_rows[1] + 1]))
    fix_dump_checksum(backup)

    error = verify_error(backup)

    assert "SHA-256" not in error
    assert f"table users has 0 rows, the manifest says {len(USERS) + 1}" in error, error


def test_verify_rejects_flipped_rdb_byte(backup):
    rdb = backup / RDB_NAME
    content = bytearray(rdb.read_bytes())
    content[len(content) // 2] ^= 0xFF
    rdb.write_bytes(bytes(content))

    error = verify_error(backup)

    assert f"{RDB_NAME} SHA-256 does not match the manifest" in error
    # redis-check-rdb's report (on its stdout) without the key it was reading.
    assert f"redis-check-rdb rejects {RDB_NAME}: redis-check-rdb exited with 1: [offset " in error, error
    assert "Reading key" not in error
    assert "gh:sess:" not in error


def test_verify_rejects_mismatched_manifest(backup):
    def inflate(manifest: dict) -> None:
        manifest["mysql"]["rows"]["users"] += 1
        manifest["redis"]["prefixes"]["gh:rt"]["persistent"] += 5
        manifest["redis"]["prefixes"]["gh:rt"]["keys"] += 5
        manifest["canary"]["updated_at"] = "2000-01-01 00:00:00"

    edit_manifest(backup, inflate)

    error = verify_error(backup)

    assert f"table users has {len(USERS) + 1} rows, the manifest says {len(USERS) + 2}" in error
    assert f"Redis holds {len(USERS) + 1} keys under gh:rt, the manifest expects {len(USERS) + 6}" in error
    assert "the canary user in MySQL does not match the manifest" in error


def test_verify_without_backup_fails(tmp_path):
    code, events, _ = gatehouse(tmp_path, "backup", "verify", "--latest")

    assert code == 1
    assert "no complete backup" in only_event(events, "job_failed")["error"]


def test_restore_brings_back_data(backup, data, settings, redis_client):
    ann = data[USERS[0]]
    sessions_before = redis_client.zrange(user_sessions_key(ann), 0, -1)
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM users WHERE id = %s", (ann,))
    finally:
        connection.close()
    redis_client.delete(user_sessions_key(ann), session_key(sessions_before[0]))
    redis_client.set(lock_key("tokens_purge"), "held-by-a-live-run", ex=60)

    refused, _, messages = gatehouse(backup.parent, "backup", "restore", str(backup))
    code, events, restore_messages = gatehouse(backup.parent, "backup", "restore", str(backup), "--yes")

    assert refused == 2
    assert "--yes" in messages
    assert code == 0, (events, restore_messages)
    assert count_users(settings) == len(USERS) + 1
    assert redis_client.zrange(user_sessions_key(ann), 0, -1) == sessions_before
    assert redis_client.ttl(session_key(sessions_before[0])) > 0
    assert redis_client.get(lock_key("tokens_purge")) == "held-by-a-live-run"
    assert not redis_client.exists(lock_key("backup"))
    assert only_event(events, "job_succeeded")["keys_restored"] >= 2 * (len(USERS) + 1)


def test_restore_ends_sessions_when_asked(backup, data, sessions, redis_client):
    ann = data[USERS[0]]
    [session_id] = redis_client.zrange(user_sessions_key(ann), 0, -1)
    sessions.revoke(session_id)  # a logout after the backup

    plain, _, _ = gatehouse(backup.parent, "backup", "restore", str(backup), "--yes")
    assert plain == 0
    # Without the option, the session ended after the backup is live again.
    assert redis_client.exists(session_key(session_id))

    code, events, messages = gatehouse(backup.parent, "backup", "restore", str(backup), "--yes", "--end-sessions")

    assert code == 0, (events, messages)
    assert only_event(events, "job_succeeded")["sessions_ended"] >= len(USERS)
    assert not redis_client.exists(session_key(session_id))
    assert redis_client.zscore(f"{KEY_PREFIX}revoked", session_id) is not None
    for user_id in data.values():
        assert redis_client.zcard(user_sessions_key(user_id)) == 0


def test_retention_keeps_newest(tmp_path, data):
    for stamp in ("20200101T000000Z", "20200102T000000Z"):
        old = tmp_path / f"gatehouse-{stamp}"
        old.mkdir()
        (old / MANIFEST_NAME).write_text("{}")
    leftover = tmp_path / ".incomplete-crashed"
    leftover.mkdir()

    code, events, messages = gatehouse(tmp_path, "backup", "create", GATEHOUSE_BACKUP_KEEP="2")

    assert code == 0, (events, messages)
    assert only_event(events, "job_succeeded")["removed_backups"] == ["gatehouse-20200101T000000Z"]
    remaining = sorted(path.name for path in tmp_path.iterdir())
    assert len(remaining) == 2
    assert remaining[0] == "gatehouse-20200102T000000Z"


def test_retention_keeps_newest_verified_backup(tmp_path, data, redis_client):
    """Backups that failed verification cannot push the last one that passed out of retention."""
    names = ["gatehouse-20200101T000000Z", "gatehouse-20200102T000000Z", "gatehouse-20200103T000000Z"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST_NAME).write_text("{}")
    redis_client.set(LAST_VERIFIED_KEY, names[1])

    code, events, messages = gatehouse(tmp_path, "backup", "create", GATEHOUSE_BACKUP_KEEP="1")

    assert code == 0, (events, messages)
    assert sorted(only_event(events, "job_succeeded")["removed_backups"]) == [names[0], names[2]]
    assert only_event(events, "backup_retention_kept_verified")["backup"] == str(tmp_path / names[1])
    assert (tmp_path / names[1]).is_dir()
    assert len([path for path in tmp_path.iterdir() if path.name.startswith("gatehouse-")]) == 2


def test_retention_keeps_backup_being_verified(tmp_path, data, redis_client):
    old = tmp_path / "gatehouse-20200101T000000Z"
    old.mkdir()
    (old / MANIFEST_NAME).write_text("{}")
    # The claim that `gatehouse backup verify` sets while it reads the backup.
    assert claim(redis_client, old, "verify", 60)

    code, events, messages = gatehouse(tmp_path, "backup", "create", GATEHOUSE_BACKUP_KEEP="1")

    assert code == 0, (events, messages)
    succeeded = only_event(events, "job_succeeded")
    assert succeeded["removed_backups"] == []
    assert succeeded["kept_in_use"] == [old.name]
    assert old.is_dir()
    redis_client.delete(claim_key(old))
    time.sleep(1.1)  # backups are named by the second
    code, events, messages = gatehouse(tmp_path, "backup", "create", GATEHOUSE_BACKUP_KEEP="1")
    assert code == 0, (events, messages)
    assert old.name in only_event(events, "job_succeeded")["removed_backups"]


def test_verify_skips_backup_being_removed(backup, redis_client):
    # The claim that retention sets while it deletes the backup.
    assert claim(redis_client, backup, "retention", 60)

    code, events, messages = gatehouse(backup.parent, "backup", "verify", str(backup))

    assert code == EXIT_LOCKED, (events, messages)
    assert "being deleted" in only_event(events, "job_skipped")["reason"]
    assert read_record(redis_client, "backup_verify").last_failure_at is None


def test_create_in_same_second_gets_suffix(tmp_path, data):
    # Backups of this second and the next few exist, so the run's own second is taken too.
    now = time.time()
    for offset in range(4):
        existing = tmp_path / f"gatehouse-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now + offset))}"
        existing.mkdir()
        (existing / MANIFEST_NAME).write_text("{}")

    code, events, messages = gatehouse(tmp_path, "backup", "create", GATEHOUSE_BACKUP_KEEP="10")

    assert code == 0, (events, messages)
    created = Path(only_event(events, "job_succeeded")["backup"])
    assert created.name.endswith("Z-002")
    assert created.name in [path.name for path in sorted(tmp_path.iterdir())][1:5]


def test_create_skips_while_backup_locked(tmp_path, redis_client):
    redis_client.set(lock_key("backup"), "a-restore-in-progress", ex=60)

    code, events, _ = gatehouse(tmp_path, "backup", "create")

    assert code == EXIT_LOCKED
    assert only_event(events, "job_skipped")["job"] == "backup_create"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", [duplicate_email, break_syntax], ids=["duplicate_email", "syntax_error"])
def test_verify_error_leaves_out_rows(backup, redis_client, damage):
    damage_user_row(backup, damage)

    code, events, messages = gatehouse(backup.parent, "backup", "verify", "--latest")

    error = only_event(events, "job_failed")["error"]
    assert code == 1, (events, messages)
    assert f"{DUMP_NAME} does not load into a scratch MariaDB: mariadb exited with 1: ERROR " in error, error
    assert "left out because it can quote rows" in error
    assert_no_row_content(json.dumps(events) + messages)
    assert_no_row_content(read_record(redis_client, "backup_verify").last_error)


def test_verify_names_duplicate_entry_error(backup):
    damage_user_row(backup, duplicate_email)

    error = verify_error(backup)

    assert "ERROR 1062 (23000) at line " in error
    assert "ER_DUP_ENTRY" in error


def test_restore_error_leaves_out_rows(backup, redis_client):
    damage_user_row(backup, duplicate_email)

    code, events, messages = gatehouse(backup.parent, "backup", "restore", str(backup), "--yes")

    error = only_event(events, "job_failed")["error"]
    assert code == 1, (events, messages)
    assert "mariadb exited with 1: ERROR 1062 (23000) at line " in error, error
    assert_no_row_content(json.dumps(events) + messages)
    assert_no_row_content(read_record(redis_client, "backup_restore").last_error)


def link_programs(directory: Path, *names: str) -> Path:
    """Fill directory with links to the named programs, for use as the only PATH entry."""
    directory.mkdir()
    for name in names:
        (directory / name).symlink_to(shutil.which(name))
    return directory


def test_create_without_mariadb_client_names_it(tmp_path, redis_client):
    path = link_programs(tmp_path / "bin", "redis-cli", "redis-server")
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()

    code, events, messages = gatehouse(backup_dir, "backup", "create", PATH=str(path))

    error = only_event(events, "job_failed")["error"]
    assert code == 1, (events, messages)
    assert "not found on PATH" in error
    assert "mariadb-dump (or mysqldump)" in error
    assert "mariadb-client" in error
    assert "redis-cli" not in error
    assert "job_crashed" not in [event["event"] for event in events]
    assert "Traceback" not in json.dumps(events) + messages
    assert read_record(redis_client, "backup_create").last_error == error
    assert list(backup_dir.iterdir()) == []


def test_verify_lists_every_missing_program(backup, tmp_path):
    empty = link_programs(tmp_path / "bin")

    code, events, messages = gatehouse(backup.parent, "backup", "verify", str(backup), PATH=str(empty))

    error = only_event(events, "job_failed")["error"]
    assert code == 1, (events, messages)
    for program in ("redis-check-rdb", "redis-server", "mariadb-install-db", "mariadb"):
        assert program in error
    assert "job_crashed" not in [event["event"] for event in events]


USAGE_ERRORS = [
    # (arguments, GATEHOUSE_BACKUP_DIR relative to tmp_path or "" for unset, expected text)
    (("backup", "create"), "", "GATEHOUSE_BACKUP_DIR is not set"),
    (("backup", "create"), "missing", "missing does not exist"),
    (("backup", "create"), "file", "file is not a directory"),
    (("backup", "verify", "--latest"), "", "GATEHOUSE_BACKUP_DIR is not set"),
    (("backup", "verify", "{tmp}/missing"), "", "missing does not exist"),
    (("backup", "verify", "{tmp}/file"), "", "file is not a directory"),
    (("backup", "restore", "{tmp}/missing", "--yes"), "", "missing does not exist"),
    (("backup", "verify", ""), "", "the backup path is empty"),
    (("backup", "restore", " ", "--yes"), "", "the backup path is empty"),
]


@pytest.mark.parametrize(("args", "backup_dir", "expected"), USAGE_ERRORS,
                         ids=[f"{' '.join(args)}-{backup_dir or 'unset'}" for args, backup_dir, _ in USAGE_ERRORS])
def test_usage_error_exits_2_unrecorded(tmp_path, redis_client, args, backup_dir, expected):
    (tmp_path / "file").write_text("not a directory")
    arguments = [argument.format(tmp=tmp_path) for argument in args]

    code, events, messages = gatehouse(tmp_path / backup_dir if backup_dir else "", *arguments)

    assert code == EXIT_USAGE, (events, messages)
    assert len(messages.splitlines()) == 1, messages
    assert messages.startswith("gatehouse: ")
    assert expected in messages
    assert [event["event"] for event in events if event["event"].startswith("job_")] == []
    for job in JOBS:
        assert read_record(redis_client, job).last_failure_at is None
    assert redis_client.keys("gh:lock:*") == []


def test_manifest_on_full_volume_names_file(tmp_path):
    """A full backup volume is the job's reported failure, naming the file, not a crash with a stack trace."""
    with full_tmpfs(tmp_path, left=0) as directory:
        with pytest.raises(BackupFailed) as excinfo:
            write_manifest(directory, {"format": 1, "padding": "x" * 8192})

    assert str(excinfo.value).startswith(f"cannot write {tmp_path / MANIFEST_NAME}.partial: ")
    assert "No space left on device" in str(excinfo.value)


def backup_dir_error(directory: Path, writable: bool) -> str:
    """Return the InvalidConfiguration message of require_backup_dir for directory, or '' when it passes."""
    settings = Settings.model_construct(backup_dir=directory)
    try:
        require_backup_dir(settings, writable=writable)
    except InvalidConfiguration as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize(("mode", "writable", "expected"), [
    (0o555, True, "is not writable by this user, or is on a read-only file system"),
    (0o555, False, ""),
    (0o333, False, "is not readable by this user"),
    (0o777, True, ""),
])
def test_backup_dir_access_checked_for_user(tmp_path, mode, writable, expected):
    """A backup directory this user cannot use is a setting to correct (exit 2), not a crash of the job."""
    with directory_for_modes(tmp_path) as parent:
        directory = parent / "backups"
        directory.mkdir()
        directory.chmod(mode)

        message = call_under_modes(lambda: backup_dir_error(directory, writable))

    assert (message == "") == (expected == ""), message
    assert expected in message
    if expected:
        assert message.startswith(f"GATEHOUSE_BACKUP_DIR {directory} ")


def scratch_redis_running(temp_dir: Path) -> bool:
    return any("redis-server" in command for command in processes_mentioning(str(temp_dir)).values())


def mariadb_bootstrapping(temp_dir: Path) -> bool:
    # mariadb-install-db runs `mariadbd --bootstrap` from a subshell.
    return any("--bootstrap" in command for command in processes_mentioning(str(temp_dir)).values())


def scratch_mariadb_serving(temp_dir: Path) -> bool:
    return any(temp_dir.glob("gatehouse-verify-*/mariadb/mariadbd.sock"))


def assert_terminated(job: subprocess.Popen, redis_client, name: str, lock: str) -> None:
    """Check that a job stopped with SIGTERM failed the normal way: logged, recorded, lock released."""
    stdout, stderr = job.communicate(timeout=120)
    events, messages = split_output(stdout, stderr)
    assert job.returncode == 128 + signal.SIGTERM, (events, messages)
    assert only_event(events, "job_failed")["error"] == "terminated by SIGTERM"
    assert "job_crashed" not in [event["event"] for event in events]
    assert read_record(redis_client, name).last_error == "terminated by SIGTERM"
    assert not redis_client.exists(lock_key(lock))


@pytest.mark.parametrize("phase", [scratch_redis_running, mariadb_bootstrapping, scratch_mariadb_serving],
                         ids=["scratch_redis", "mariadb_bootstrap", "scratch_mariadb"])
def test_sigterm_during_verify_stops_servers(backup, temp_dir, redis_client, phase):
    job = start_gatehouse(backup.parent, temp_dir, "backup", "verify", "--latest")
    wait_for(lambda: phase(temp_dir) or job.poll() is not None, phase.__name__)
    started = processes_mentioning(str(temp_dir))
    job.send_signal(signal.SIGTERM)

    assert_terminated(job, redis_client, "backup_verify", "backup_verify")
    assert started, "no scratch process was running when the signal was sent"
    assert [pid for pid in started if is_running(pid)] == []
    assert processes_mentioning(str(temp_dir)) == {}
    assert list(temp_dir.iterdir()) == []


def test_sigterm_during_create_removes_incomplete(tmp_path, temp_dir, settings, redis_client, data):
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    # An open transaction that locks the canary's row makes the job wait inside its run.
    blocker = pymysql.connect(**connect_args(settings))
    try:
        blocker.begin()
        with blocker.cursor() as cursor:
            cursor.execute("INSERT INTO users (id, email, password_hash, status, created_at, updated_at)"
                           " VALUES (%s, %s, '!', 'disabled', NOW(), NOW())", (CANARY_USER_ID, CANARY_EMAIL))

        job = start_gatehouse(backup_dir, temp_dir, "backup", "create")
        wait_for(lambda: any(backup_dir.glob(".incomplete-*")) or job.poll() is not None, "the .incomplete- directory")
        job.send_signal(signal.SIGTERM)

        assert_terminated(job, redis_client, "backup_create", "backup")
    finally:
        blocker.rollback()
        blocker.close()
    assert list(backup_dir.iterdir()) == []
    assert list(temp_dir.iterdir()) == []

    # The next run is not blocked by the terminated one.
    code, events, messages = gatehouse(backup_dir, "backup", "create")
    assert code == 0, (events, messages)


@pytest.mark.parametrize(("env", "expected"), [
    ({"GATEHOUSE_MYSQL_PASSWORD": "not-the-password"}, "Access denied"),
    ({"GATEHOUSE_MYSQL_TLS_MODE": "required"}, "enable TLS on the server"),
], ids=["wrong_password", "tls_required_without_server_tls"])
def test_create_without_mysql_fails_with_the_cause(tmp_path, env, expected):
    """A MySQL connection that fails is the job's failure with what to change, not a crash with a stack trace."""
    code, events, _ = gatehouse(tmp_path, "backup", "create", **env)

    assert code == 1
    assert [event for event in events if event["event"] == "job_crashed"] == []
    error = only_event(events, "job_failed")["error"]
    assert expected in error
    assert "not-the-password" not in error
    assert "preferred" not in error
    assert list(tmp_path.iterdir()) == []


def test_restore_without_mysql_fails_with_the_cause(backup, redis_client):
    port = str(free_port())

    code, events, _ = gatehouse(backup.parent, "backup", "restore", str(backup), "--yes", GATEHOUSE_MYSQL_PORT=port)

    assert code == 1
    error = only_event(events, "job_failed")["error"]
    assert f"cannot connect to MySQL at 127.0.0.1:{port}" in error
    assert "GATEHOUSE_MYSQL_HOST" in error
