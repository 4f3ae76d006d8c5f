"""load_settings: each invalid or missing variable is named in the error, and summary() hides secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import ENV_PREFIX, InvalidConfiguration, load_settings

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


@pytest.mark.parametrize("value", ["abc", "33o6", "3306.5", ""])
def test_non_integer_mysql_port_rejected(environment, value):
    environment.setenv("GATEHOUSE_MYSQL_PORT", value)

    message = invalid_configuration_message()

    assert "GATEHOUSE_MYSQL_PORT" in message
    assert "invalid" in message


@pytest.mark.parametrize("value", ["0", "-1", "65536", "70000"])
def test_out_of_range_mysql_port_rejected(environment, value):
    environment.setenv("GATEHOUSE_MYSQL_PORT", value)

    message = invalid_configuration_message()

    assert "GATEHOUSE_MYSQL_PORT" in message
    assert "1-65535" in message


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1", ":8000", "127.0.0.1:", "127.0.0.1:http",
                                   "127.0.0.1:0", "127.0.0.1:65536"])
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


def test_argon2_memory_below_owasp_floor_rejected(environment):
    environment.setenv("GATEHOUSE_ARGON2_MEMORY_KIB", "19455")

    message = invalid_configuration_message()

    assert "GATEHOUSE_ARGON2_MEMORY_KIB" in message
    assert "19456" in message


def test_argon2_memory_at_owasp_floor_accepted(environment):
    environment.setenv("GATEHOUSE_ARGON2_MEMORY_KIB", "19456")

    assert load_settings().argon2_memory_kib == 19456


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

    assert variable in message
    assert "finite" in message
