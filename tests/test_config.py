"""load_settings: each invalid or missing variable is named in the error, and summary() hides secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from service import setting_checks
from service.config import (
    EMPTY_MEANS_UNSET, ENV_PREFIX, OWASP_ARGON2ID_MINIMUMS, InvalidConfiguration, Settings, is_text_setting, load_settings,
)
from service.environment import unknown_variables

MYSQL_PASSWORD = "mysql-secret-7f3a"
REDIS_PASSWORD = "redis-secret-9c1e"


@pytest.fixture
def environment(monkeypatch, tmp_path):
    """Replace every GATEHOUSE_* variable with a minimal valid set, of which each test changes one."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    monkeypatch.setenv("GATEHOUSE_MYSQL_PASSWORD", MYSQL_PASSWORD)
    monkeypatch.setenv("GATEHOUSE_REDIS_URL", f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0")
    monkeypatch.setenv("GATEHOUSE_KEYS_DIR", str(keys_dir))
    return monkeypatch


def invalid_configuration_message() -> str:
    with pytest.raises(InvalidConfiguration) as excinfo:
        load_settings()
    return str(excinfo.value)


def test_minimal_environment_loads(environment):
    # This baseline must load, because every other test changes only one variable of it.
    settings = load_settings()

    assert settings.mysql_password.get_secret_value() == MYSQL_PASSWORD
    assert settings.mysql_port == 3306


def test_missing_mysql_password_rejected(environment):
    environment.delenv("GATEHOUSE_MYSQL_PASSWORD")

    message = invalid_configuration_message()

    assert "GATEHOUSE_MYSQL_PASSWORD" in message
    assert "not set" in message


@pytest.mark.parametrize("value", ["abc", "33o6", "3306.5"])
def test_non_integer_mysql_port_rejected(environment, value):
    environment.setenv("GATEHOUSE_MYSQL_PORT", value)

    message = invalid_configuration_message()

    assert "GATEHOUSE_MYSQL_PORT" in message
    assert "invalid" in message


@pytest.mark.parametrize(("variable", "value"), [
    ("GATEHOUSE_WORKERS", "1_0"), ("GATEHOUSE_WORKERS", "+4"), ("GATEHOUSE_WORKERS", "4.0"),
    ("GATEHOUSE_WORKERS", "\u0664"), ("GATEHOUSE_BODY_READ_TIMEOUT_SECONDS", "1e1"),
    ("GATEHOUSE_BODY_READ_TIMEOUT_SECONDS", "1_0"), ("GATEHOUSE_BODY_READ_TIMEOUT_SECONDS", "+10"),
    ("GATEHOUSE_BODY_READ_TIMEOUT_SECONDS", "10."), ("GATEHOUSE_BODY_READ_TIMEOUT_SECONDS", ".5"),
])
def test_unusual_number_spelling_rejected(environment, variable, value):
    environment.setenv(variable, value)

    message = invalid_configuration_message()

    assert message.startswith(f"{variable} is invalid (write it with the digits 0-9"), message


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("GATEHOUSE_WORKERS", " 4 ", 4), ("GATEHOUSE_WORKERS", "04", 4),
    ("GATEHOUSE_BODY_READ_TIMEOUT_SECONDS", "2.5", 2.5), ("GATEHOUSE_BODY_READ_TIMEOUT_SECONDS", "10", 10.0),
])
def test_plain_number_spelling_accepted(environment, variable, value, expected):
    environment.setenv(variable, value)

    assert getattr(load_settings(), variable.removeprefix("GATEHOUSE_").lower()) == expected


@pytest.mark.parametrize("value", ["0", "-1", "65536", "70000"])
def test_out_of_range_mysql_port_rejected(environment, value):
    environment.setenv("GATEHOUSE_MYSQL_PORT", value)

    message = invalid_configuration_message()

    assert "GATEHOUSE_MYSQL_PORT" in message
    assert "1-65535" in message


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1", ":8000", "127.0.0.1:", "127.0.0.1:http",
                                   "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:\u00b2"])
def test_bad_bind_rejected(environment, value):
    environment.setenv("GATEHOUSE_BIND", value)

    message = invalid_configuration_message()

    assert "GATEHOUSE_BIND" in message
    assert "host:port" in message


def test_keys_dir_that_is_a_file_rejected(environment, tmp_path):
    key_file = tmp_path / "signing.pem"
    key_file.write_text("not a directory")
    environment.setenv("GATEHOUSE_KEYS_DIR", str(key_file))

    message = invalid_configuration_message()

    assert "GATEHOUSE_KEYS_DIR" in message
    assert "not a directory" in message


def test_missing_keys_dir_rejected(environment, tmp_path):
    environment.setenv("GATEHOUSE_KEYS_DIR", str(tmp_path / "absent"))

    message = invalid_configuration_message()

    assert "GATEHOUSE_KEYS_DIR" in message
    assert "not a directory" in message


def test_argon2_defaults_are_owasps_least_memory(environment):
    settings = load_settings()

    assert (settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism) == (7168, 5, 1)


def test_argon2_memory_below_owasp_floor_rejected(environment):
    environment.setenv("GATEHOUSE_ARGON2_MEMORY_KIB", "7167")

    message = invalid_configuration_message()

    assert "GATEHOUSE_ARGON2_MEMORY_KIB" in message
    assert "7168" in message


@pytest.mark.parametrize(("memory_kib", "time_cost"), OWASP_ARGON2ID_MINIMUMS)
def test_each_owasp_argon2_minimum_accepted(environment, memory_kib, time_cost):
    environment.setenv("GATEHOUSE_ARGON2_MEMORY_KIB", str(memory_kib))
    environment.setenv("GATEHOUSE_ARGON2_TIME_COST", str(time_cost))

    settings = load_settings()

    assert (settings.argon2_memory_kib, settings.argon2_time_cost) == (memory_kib, time_cost)


@pytest.mark.parametrize(("memory_kib", "time_cost", "least"), [
    (7168, 4, 5), (9215, 4, 5), (9216, 3, 4), (19455, 2, 3), (19456, 1, 2), (47103, 1, 2),
])
def test_too_few_argon2_passes_rejected(environment, memory_kib, time_cost, least):
    environment.setenv("GATEHOUSE_ARGON2_MEMORY_KIB", str(memory_kib))
    environment.setenv("GATEHOUSE_ARGON2_TIME_COST", str(time_cost))

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_ARGON2_TIME_COST is invalid")
    assert f"GATEHOUSE_ARGON2_MEMORY_KIB={memory_kib}" in message
    assert f"{least} passes with that memory" in message


def test_more_argon2_memory_allows_fewer_passes(environment):
    environment.setenv("GATEHOUSE_ARGON2_MEMORY_KIB", "65536")
    environment.setenv("GATEHOUSE_ARGON2_TIME_COST", "1")

    assert load_settings().argon2_time_cost == 1


def test_invalid_argon2_memory_reported_before_the_passes(environment):
    environment.setenv("GATEHOUSE_ARGON2_MEMORY_KIB", "1024")
    environment.setenv("GATEHOUSE_ARGON2_TIME_COST", "1")

    assert invalid_configuration_message().startswith("GATEHOUSE_ARGON2_MEMORY_KIB is invalid")


def test_argon2_release_idle_seconds_default(environment):
    assert load_settings().argon2_release_idle_seconds == 5.0


def test_argon2_release_idle_seconds_zero_accepted(environment):
    environment.setenv("GATEHOUSE_ARGON2_RELEASE_IDLE_SECONDS", "0")

    assert load_settings().argon2_release_idle_seconds == 0


@pytest.mark.parametrize("value", ["-1", "-0.5", "3601", "soon", "nan", "inf"])
def test_invalid_argon2_release_idle_seconds_rejected(environment, value):
    environment.setenv("GATEHOUSE_ARGON2_RELEASE_IDLE_SECONDS", value)

    message = invalid_configuration_message()

    assert "GATEHOUSE_ARGON2_RELEASE_IDLE_SECONDS" in message
    assert "invalid" in message
    assert "0-3600" in message


def test_max_sessions_per_user_default(environment):
    assert load_settings().max_sessions_per_user == 100


@pytest.mark.parametrize("value", ["1", "10000"])
def test_max_sessions_per_user_bounds_accepted(environment, value):
    environment.setenv("GATEHOUSE_MAX_SESSIONS_PER_USER", value)

    assert load_settings().max_sessions_per_user == int(value)


@pytest.mark.parametrize("value", ["0", "-1", "10001", "12.5", "many"])
def test_invalid_max_sessions_per_user_rejected(environment, value):
    environment.setenv("GATEHOUSE_MAX_SESSIONS_PER_USER", value)

    message = invalid_configuration_message()

    assert "GATEHOUSE_MAX_SESSIONS_PER_USER" in message
    assert "invalid" in message
    assert "1-10000" in message


def test_key_publish_defaults_to_jwks_max_age(environment):
    settings = load_settings()

    assert settings.jwks_max_age_seconds == 300
    assert settings.key_publish_seconds == settings.jwks_max_age_seconds


@pytest.mark.parametrize(("publish", "max_age"), [("0", "300"), ("300", "300"), ("900", "300"), ("0", "0"),
                                                  ("60", "0"), ("86400", "86400")])
def test_key_publish_seconds_accepted(environment, publish, max_age):
    environment.setenv("GATEHOUSE_KEY_PUBLISH_SECONDS", publish)
    environment.setenv("GATEHOUSE_JWKS_MAX_AGE_SECONDS", max_age)

    settings = load_settings()

    assert settings.key_publish_seconds == int(publish)
    assert settings.jwks_max_age_seconds == int(max_age)


def test_key_publish_below_jwks_max_age_rejected(environment):
    environment.setenv("GATEHOUSE_KEY_PUBLISH_SECONDS", "299")

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_KEY_PUBLISH_SECONDS is invalid")
    assert "below GATEHOUSE_JWKS_MAX_AGE_SECONDS, which is 300" in message
    assert "0 signs at once" in message


def test_jwks_max_age_above_default_publish_rejected(environment):
    environment.setenv("GATEHOUSE_JWKS_MAX_AGE_SECONDS", "600")

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_KEY_PUBLISH_SECONDS is invalid")
    assert "below GATEHOUSE_JWKS_MAX_AGE_SECONDS, which is 600" in message


@pytest.mark.parametrize("variable", ["GATEHOUSE_KEY_PUBLISH_SECONDS", "GATEHOUSE_JWKS_MAX_AGE_SECONDS"])
@pytest.mark.parametrize("value", ["-1", "86401", "soon", "1.5"])
def test_invalid_key_publish_setting_rejected(environment, variable, value):
    environment.setenv(variable, value)

    message = invalid_configuration_message()

    assert message.startswith(f"{variable} is invalid")
    assert "0-86400" in message


def test_override_validated_like_environment(environment):
    with pytest.raises(InvalidConfiguration) as excinfo:
        load_settings({"mysql_port": 70000})

    assert "GATEHOUSE_MYSQL_PORT" in str(excinfo.value)


def test_summary_redacts_secrets(environment):
    summary = load_settings().summary()

    assert summary["mysql_password"] == "**redacted**"
    assert summary["redis_url"] == "**redacted**"
    assert MYSQL_PASSWORD not in repr(summary)
    assert REDIS_PASSWORD not in repr(summary)
    # Values that are not secret stay readable in the start-up log.
    assert summary["mysql_port"] == 3306
    assert summary["keys_dir"] == str(Path(os.environ["GATEHOUSE_KEYS_DIR"]).resolve())


@pytest.mark.parametrize("variable", ["GATEHOUSE_REFRESH_GRACE_SECONDS", "GATEHOUSE_USER_CACHE_SECONDS",
                                      "GATEHOUSE_MYSQL_READ_TIMEOUT", "GATEHOUSE_BAN_MULTIPLIER"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_float_setting_rejects_nan_and_infinity(environment, variable, value):
    environment.setenv(variable, value)

    message = invalid_configuration_message()

    assert message.startswith(f"{variable} is invalid (write it with the digits 0-9"), message


# Each URL contains REDIS_PASSWORD where a password could be, and none of it may reach the message.
INVALID_REDIS_URLS = {
    "notaurl": "one of the following schemes",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:abc/0": "the port after the host is not a number",
    f"redis://:{REDIS_PASSWORD}@[::1/0": "Invalid IPv6 URL",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?socket_timeout=abc": "'socket_timeout'",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?socket_timeout=10": "override GATEHOUSE_REDIS_SOCKET_TIMEOUT",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?socket_connect_timeout=1": "set GATEHOUSE_REDIS_CONNECT_TIMEOUT instead",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?max_connections=500": "override GATEHOUSE_REDIS_POOL_SIZE",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?db=0&timeout=": "override GATEHOUSE_REDIS_POOL_WAIT_SECONDS",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?health_check_interval=0": "'health_check_interval' is set by Gatehouse",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?decode_responses=false": "'decode_responses' is set by Gatehouse",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?connection_class=x": "'connection_class' is set by Gatehouse",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?socket-timeout=1": "unknown query option 'socket-timeout'",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?a%20b=1": "unknown query option 'a b'",
    f"redis://:{REDIS_PASSWORD}/0": "the port after the host is not a number",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:70000/0": "Port out of range",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:0/0": "1-65535, not 0",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/zero": "database number",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/-1": "0 or more",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?db=one": "'db'",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?pool_size=5": "unknown query option 'pool_size'",
    f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0?protocol=4": "protocol",
    f"unix://:{REDIS_PASSWORD}@": "socket path",
}


@pytest.mark.parametrize("url", INVALID_REDIS_URLS)
def test_invalid_redis_url_rejected(environment, url):
    environment.setenv("GATEHOUSE_REDIS_URL", url)

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_REDIS_URL is invalid ("), message
    assert INVALID_REDIS_URLS[url] in message
    assert REDIS_PASSWORD not in message
    assert "\n" not in message


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0",
    "redis://:p%40ss@redis:6379/15",
    "redis://gatehouse:secret@[::1]:6379/0?socket_keepalive=true",
    "rediss://:secret@redis.example:6380/0?ssl_cert_reqs=required",
    "unix:///run/redis/redis.sock?db=1",
    "redis://localhost",
])
def test_valid_redis_url_accepted(environment, url):
    environment.setenv("GATEHOUSE_REDIS_URL", url)

    assert load_settings().redis_url.get_secret_value() == url


def test_redis_url_credentials_redacted_from_message():
    # Defence for a redis-py release whose messages repeat parts of the URL.
    url = "redis://user%3Aname:p%61ss%2Fword@127.0.0.1:6379/0"
    message = "user%3Aname user:name p%61ss%2Fword pass/word 127.0.0.1"

    redacted = setting_checks._without_credentials(message, url)

    for secret in ("user%3Aname", "user:name", "p%61ss", "pass/word"):
        assert secret not in redacted
    assert "127.0.0.1" in redacted


def test_redis_url_parse_skipped_on_request(environment):
    environment.setenv("GATEHOUSE_REDIS_URL", "notaurl")

    assert load_settings(parse_redis_url=False).redis_url.get_secret_value() == "notaurl"
    # The switch applies to that one call only.
    assert "GATEHOUSE_REDIS_URL" in invalid_configuration_message()


def test_master_settings_import_no_redis(environment):
    # gunicorn.conf.py loads the settings this way in the master, which must not import
    # redis before it forks.
    code = ("import sys; from service.config import load_settings; load_settings(parse_redis_url=False); "
            "print('redis' in sys.modules)")

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)

    assert result.stdout.strip() == "False"


@pytest.fixture
def sentinel_environment(environment):
    """The minimal environment switched to sentinel mode."""
    environment.delenv("GATEHOUSE_REDIS_URL")
    environment.setenv("GATEHOUSE_REDIS_MODE", "sentinel")
    environment.setenv("GATEHOUSE_REDIS_SENTINELS", "sentinel-0:26379")
    environment.setenv("GATEHOUSE_REDIS_SENTINEL_SERVICE", "mymaster")
    return environment


def test_sentinel_environment_loads(sentinel_environment):
    assert load_settings().sentinel_addresses == [("sentinel-0", 26379)]


@pytest.mark.parametrize("value", [
    "sentinel-0", "sentinel-0:", ":26379", "sentinel-0:0", "sentinel-0:65536", "sentinel-0:2637x",
    "sentinel-0:\u00b2", "sentinel-0:\uff12\uff16\uff13\uff17\uff19", "sentinel-0:26379,", "sentinel 0:26379",
    "::1:26379", "[::1:26379", "::1]:26379", "[sentinel-0]:26379", "[::g]:26379", "user@sentinel-0:26379",
])
def test_invalid_sentinels_rejected(sentinel_environment, value):
    sentinel_environment.setenv("GATEHOUSE_REDIS_SENTINELS", value)

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_REDIS_SENTINELS is invalid ("), message
    assert repr(value.split(",")[-1].strip()) in message or repr(value) in message


@pytest.mark.parametrize("value, addresses", [
    ("sentinel-0:26379,sentinel-1.sentinel.svc:26380", [("sentinel-0", 26379), ("sentinel-1.sentinel.svc", 26380)]),
    ("10.0.0.7:26379, [::1]:26379", [("10.0.0.7", 26379), ("::1", 26379)]),
    ("[fe80::1%eth0]:26379", [("fe80::1%eth0", 26379)]),
])
def test_valid_sentinels_accepted(sentinel_environment, value, addresses):
    sentinel_environment.setenv("GATEHOUSE_REDIS_SENTINELS", value)

    assert load_settings().sentinel_addresses == addresses


@pytest.mark.parametrize("value", ["my master", "mymaster\n", "master/1", "mäster"])
def test_invalid_sentinel_service_rejected(sentinel_environment, value):
    sentinel_environment.setenv("GATEHOUSE_REDIS_SENTINEL_SERVICE", value)

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_REDIS_SENTINEL_SERVICE is invalid ("), message
    assert "A-Z, a-z, 0-9" in message


def text_settings() -> list[str]:
    return [name for name, field in Settings.model_fields.items() if is_text_setting(field.annotation)]


def test_empty_means_unset_names_text_settings():
    assert EMPTY_MEANS_UNSET <= set(text_settings())


@pytest.mark.parametrize("name", sorted(set(text_settings()) - EMPTY_MEANS_UNSET))
def test_empty_text_setting_rejected(environment, name):
    variable = ENV_PREFIX + name.upper()
    environment.setenv(variable, "")

    message = invalid_configuration_message()

    assert message.startswith(f"{variable} is empty: set it to "), message


@pytest.mark.parametrize("name", sorted(set(text_settings()) - EMPTY_MEANS_UNSET - {"mysql_password"}))
def test_blank_text_setting_rejected(environment, name):
    variable = ENV_PREFIX + name.upper()
    environment.setenv(variable, " \t")

    message = invalid_configuration_message()

    assert message.startswith(f"{variable} contains only whitespace: set it to "), message


def number_settings() -> list[str]:
    return [name for name, field in Settings.model_fields.items()
            if {field.annotation, *typing.get_args(field.annotation)} & {int, float}]


@pytest.mark.parametrize("name", number_settings())
@pytest.mark.parametrize(("value", "problem"), [("", "is empty"), (" \t", "contains only whitespace")])
def test_empty_number_setting_rejected(environment, name, value, problem):
    variable = ENV_PREFIX + name.upper()
    environment.setenv(variable, value)

    message = invalid_configuration_message()

    assert message.startswith(f"{variable} {problem}: set it to "), message


def test_blank_mysql_password_accepted(environment):
    environment.setenv("GATEHOUSE_MYSQL_PASSWORD", "   ")

    assert load_settings().mysql_password.get_secret_value() == "   "


def test_empty_keys_dir_not_current_directory(environment, tmp_path, monkeypatch):
    # A current directory with some other private key, such as a TLS key, must not become the key ring.
    (tmp_path / "tls.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    monkeypatch.chdir(tmp_path)
    environment.setenv("GATEHOUSE_KEYS_DIR", "")

    assert invalid_configuration_message().startswith("GATEHOUSE_KEYS_DIR is empty")


@pytest.mark.parametrize("name", sorted(EMPTY_MEANS_UNSET - {"redis_url", "redis_sentinels", "redis_sentinel_service"}))
def test_empty_optional_setting_unset(environment, name):
    environment.setenv(ENV_PREFIX + name.upper(), "")

    settings = load_settings()

    assert getattr(settings, name) in (None, "")


def test_empty_redis_url_not_set(environment):
    environment.setenv("GATEHOUSE_REDIS_URL", "")

    assert invalid_configuration_message().startswith("GATEHOUSE_REDIS_URL is not set")


def test_unknown_variables_leave_out_command_and_tool_inputs():
    environ = {"GATEHOUSE_MYSQL_PASWORD": "x", "GATEHOUSE_MYSQL_PASSWORD": "x", "GATEHOUSE_NEW_USER_PASSWORD": "x",
               "GATEHOUSE_TEST_MYSQL_PORT": "1", "GATEHOUSE_STATE_DIR": "/tmp", "OTHER_VARIABLE": "x"}

    assert unknown_variables(environ, Settings.model_fields) == ["GATEHOUSE_MYSQL_PASWORD"]


def test_setting_in_other_case_not_read(environment):
    """Only the upper-case names are read: with two spellings, which one applied would be unclear."""
    environment.setenv("gatehouse_workers", "7")
    environment.setenv("Gatehouse_Log_Level", "debug")
    environment.setenv("GATEHOUSE_Keepalive", "9")

    settings = load_settings()

    assert settings.workers == Settings.model_fields["workers"].default
    assert settings.log_level == Settings.model_fields["log_level"].default
    assert settings.keepalive == Settings.model_fields["keepalive"].default
    environment.setenv("GATEHOUSE_WORKERS", "3")
    assert load_settings().workers == 3
    environ = {"gatehouse_workers": "7", "Gatehouse_Log_Level": "debug", "GATEHOUSE_WORKERS": "3"}
    assert unknown_variables(environ, Settings.model_fields) == ["Gatehouse_Log_Level", "gatehouse_workers"]
