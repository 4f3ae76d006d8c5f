"""A gunicorn master with 2 gevent workers, shared by the end-to-end tests of one module."""

from __future__ import annotations

import pytest

from tests.helpers import Gunicorn


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("gunicorn")) as gunicorn:
        yield gunicorn
