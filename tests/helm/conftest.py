"""Fixtures of the chart tests: rendered value sets and the secrets they need.

The chart tests never touch MariaDB or Redis, so the suite-wide state reset is
replaced here by a fixture that does nothing.
"""

from __future__ import annotations

import secrets as token_source
from typing import Any

import helm_python
import pytest

from service.tokens.keys import generate_key
from tests.helm.chart import VALUE_SETS, Rendered, load_value_set, render


@pytest.fixture(autouse=True)
def clean_state() -> None:
    """Leave MariaDB and Redis alone: rendering a chart reaches neither."""


@pytest.fixture(scope="session", autouse=True)
def quiet_helm() -> None:
    # The SDK logs `fail` messages to stderr, and the tests check the raised errors instead.
    helm_python.disable_logging()


@pytest.fixture(scope="session")
def secret_values(tmp_path_factory) -> dict[str, Any]:
    """Generate the secret.* values for this run, so nothing secret is stored with the tests."""
    password = token_source.token_urlsafe(24)
    key_path = generate_key(tmp_path_factory.mktemp("keys"), "EdDSA")
    return {
        "mysqlPassword": password,
        "redisUrl": f"redis://:{password}@redis.databases.svc.cluster.local:6379/0",
        "signingKeys": {key_path.name: key_path.read_text()},
    }


@pytest.fixture(scope="session")
def value_sets(secret_values) -> dict[str, dict[str, Any]]:
    """The chart defaults and every value set in tests/helm/values, by name."""
    return {name: load_value_set(name, secret_values) for name in ("default", *VALUE_SETS)}


@pytest.fixture(scope="session")
def rendered(value_sets) -> dict[str, Rendered]:
    """Each value set rendered once, by name."""
    return {name: render(values) for name, values in value_sets.items()}
