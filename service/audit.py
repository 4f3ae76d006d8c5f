"""The audit trail: one row and one log line per administrative action."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import structlog

from service.database import Database

log = structlog.get_logger(__name__)


def record(database: Database, *, actor_id: str | None, action: str, target_type: str, target_id: str,
           client_ip: str, detail: dict[str, Any] | None = None) -> None:
    """Write an audit row and log the action; actor_id None means the command line."""
    detail_text = json.dumps(detail or {}, sort_keys=True)[:1024]
    with database.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_log (created_at, actor_id, action, target_type, target_id, detail, client_ip)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (datetime.now(UTC).replace(tzinfo=None), actor_id, action, target_type, target_id, detail_text,
             client_ip[:45]),
        )
    log.info("admin_action", actor_id=actor_id, action=action, target_type=target_type, target_id=target_id,
             client_ip=client_ip, detail=detail or {})


def entries(database: Database, *, target_type: str | None = None, target_id: str | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    """Return the newest audit rows, optionally for one target."""
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
    return [{**row, "created_at": row["created_at"].replace(tzinfo=UTC)} for row in rows]
