"""The event catalog in docs/events.md lists every event the code logs."""

from __future__ import annotations

import re

from tests.helpers import ROOT

# log.info("event_name", ...) and server.log.info("event_name", ...)
_EVENT_CALL = re.compile(r"\blog\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z][a-z0-9_]*)\"")


def logged_events() -> set[str]:
    sources = [*sorted((ROOT / "service").rglob("*.py")), ROOT / "gunicorn.conf.py"]
    return {name for path in sources for name in _EVENT_CALL.findall(path.read_text())}


def test_catalog_lists_every_event():
    catalog = (ROOT / "docs" / "events.md").read_text()
    events = logged_events()
    assert len(events) > 30
    missing = sorted(name for name in events if f"`{name}`" not in catalog)
    assert missing == []
