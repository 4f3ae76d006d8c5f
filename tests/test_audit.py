"""The audit trail on the real MariaDB: every stored detail reads back as a JSON object."""

from __future__ import annotations

import json

import pytest

from service import audit
from service.database import Database


@pytest.fixture
def database(settings):
    database = Database(settings)
    yield database
    database.close()


def record(database, detail: dict) -> None:
    audit.record(database, actor_id=None, action="ip_banned", target_type="ip", target_id="203.0.113.7",
                 client_ip="", detail=detail)


def stored_detail(database) -> str:
    with database.cursor() as cursor:
        cursor.execute("SELECT detail FROM audit_log")
        return cursor.fetchone()["detail"]


def test_detail_read_back_as_object(database):
    record(database, {"reason": "credential stuffing", "seconds": 3600, "changed": True})

    [entry] = audit.entries(database)

    assert entry["detail"] == {"reason": "credential stuffing", "seconds": 3600, "changed": True}


@pytest.mark.parametrize("reason", ["é" * 255, "\x01" * 255, "\"" * 600],
                         ids=["non_ascii", "control_characters", "quotes"])
def test_oversized_detail_cut_to_valid_json(database, reason):
    # Escaped, "é" and "\x01" take 6 characters each and '"' takes 2, so none of these
    # details fits the 1024-character column.
    record(database, {"reason": reason, "seconds": 60})

    text = stored_detail(database)
    [entry] = audit.entries(database)

    assert len(text) <= audit.DETAIL_MAX_CHARS
    assert json.loads(text) == entry["detail"]
    assert entry["detail"]["truncated"] is True
    assert entry["detail"]["reason"] == reason[:128]
    assert entry["detail"]["seconds"] == 60


def test_detail_too_large_even_when_cut(database):
    record(database, {f"key{index}": "x" * 100 for index in range(40)})

    [entry] = audit.entries(database)

    assert entry["detail"] == {"truncated": True}


@pytest.mark.parametrize(("text", "expected"), [
    ('{"reason": "cut off at the col', {"truncated": True, "text": '{"reason": "cut off at the col'}),
    ('["not", "an", "object"]', {"truncated": True, "text": '["not", "an", "object"]'}),
    ("", {}),
], ids=["cut_json", "array", "empty"])
def test_stored_text_not_object_read_back(database, text, expected):
    # Rows that an earlier version cut at the column size, written here directly.
    with database.cursor() as cursor:
        cursor.execute("INSERT INTO audit_log (created_at, action, target_type, target_id, detail, client_ip)"
                       " VALUES (UTC_TIMESTAMP(), 'ip_banned', 'ip', '203.0.113.7', %s, '')", (text,))

    [entry] = audit.entries(database)

    assert entry["detail"] == expected
