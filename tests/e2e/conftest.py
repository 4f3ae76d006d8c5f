"""A gunicorn master with 2 gevent workers, shared by the end-to-end tests of one module."""

from __future__ import annotations

import pytest

from tests.helpers import Gunicorn, reset_state


@pytest.fixture(scope="module")
def server(tmp_path_factory, settings):
    # Workers load bans and revoked sessions from Redis at start and keep them in memory,
    # where the flush before each test does not reach, so the server starts on clean state.
    reset_state(settings)
    with Gunicorn(tmp_path_factory.mktemp("gunicorn")) as gunicorn:
        yield gunicorn
