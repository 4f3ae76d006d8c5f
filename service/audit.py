"""The audit trail: one row and one log line per administrative action."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import structlog

from service.database import Database

log = structlog.get_logger(__name__)

# The audit_log.detail column is VARCHAR(1024).
DETAIL_MAX_CHARS = 1024
# A string value of an oversized detail is cut to this many characters, at most 768 once
# escaped (6 per character as \uXXXX), so a detail with one long string fits after the cut.
_CUT_STRING_CHARS = 128


def serialize_detail(detail: dict[str, Any]) -> str:
    """Serialize a detail as a JSON object that fits the column, cutting long strings when it does not.

    A cut detail gets "truncated": true. The admin_action log line keeps the whole detail.
    """
    text = json.dumps(detail, sort_keys=True)
    if len(text) <= DETAIL_MAX_CHARS:
        return text

    cut = {key: value[:_CUT_STRING_CHARS] if isinstance(value, str) else value for key, value in detail.items()}
    text = json.dumps({**cut, "truncated": True}, sort_keys=True)
    if len(text) <= DETAIL_MAX_CHARS:
        return text

    return json.dumps({"truncated": True})


def parse_detail(text: str) -> dict[str, Any]:
    """Parse a stored detail into a JSON object.

    Rows written before serialize_detail existed were cut at the column size, which can
    leave invalid JSON. Such a row, or any other text that is not a JSON object, comes
    back as {"truncated": true, "text": <the stored text>}, and the column default "" as {}.
    """
    if not text:
        return {}

    try:
        detail = json.loads(text)
    except ValueError:
        detail = None
    if not isinstance(detail, dict):
        return {"truncated": True, "text": text}

    return detail


def record(database: Database, *, actor_id: str | None, action: str, target_type: str, target_id: str,
           client_ip: str, detail: dict[str, Any] | None = None) -> None:
    """Write an audit row and log the action; actor_id None means the command line."""
    with database.cursor() as cursor:
        insert(cursor, actor_id=actor_id, action=action, target_type=target_type, target_id=target_id,
               client_ip=client_ip, detail=detail)
    log_action(actor_id=actor_id, action=action, target_type=target_type, target_id=target_id,
               client_ip=client_ip, detail=detail)


def insert(cursor: Any, *, actor_id: str | None, action: str, target_type: str, target_id: str, client_ip: str,
           detail: dict[str, Any] | None = None) -> None:
    """Write an audit row with the cursor, inside the transaction of the change it records."""
    cursor.execute(
        "INSERT INTO audit_log (created_at, actor_id, action, target_type, target_id, detail, client_ip)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (datetime.now(UTC).replace(tzinfo=None), actor_id, action, target_type, target_id,
         serialize_detail(detail or {}), client_ip[:45]),
    )


def log_action(*, actor_id: str | None, action: str, target_type: str, target_id: str, client_ip: str,
               detail: dict[str, Any] | None = None) -> None:
    """Log the admin_action line of an audit row, once the row is committed."""
    log.info("admin_action", actor_id=actor_id, action=action, target_type=target_type, target_id=target_id,
             client_ip=client_ip, detail=detail or {})


def entries(database: Database, *, target_type: str | None = None, target_id: str | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    """Return the newest audit rows, optionally for one target, each detail parsed into a dict."""
    sql = "SELECT id, created_at, actor_id, action, target_type, target_id, detail, client_ip FROM audit_log"
    args: list[Any] = []
    if target_type and target_id:
        sql += " WHERE target_type = %s AND target_id = %s"
        args += [target_type, target_id]
    sql += " ORDER BY id DESC LIMIT %s"
    args.append(limit)
    with database.cursor() as cursor:
        cursor.execute(sql, args)
        rows = list(cursor.fetchall())
    # DATETIME columns hold UTC without a zone; give the values theirs back.
    return [{**row, "created_at": row["created_at"].replace(tzinfo=UTC), "detail": parse_detail(row["detail"])}
            for row in rows]
