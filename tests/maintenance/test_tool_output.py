"""The descriptions of failed programs' output keep the diagnosis and leave data out.

The inputs are output that the mariadb 10.11 client and redis-check-rdb 7.0 wrote.
"""

from __future__ import annotations

import pytest

from service.maintenance.tool_output import mariadb_client_error, rdb_check_error, redact_quoted

NOTE = "(the client's message text is left out because it can quote rows)"

MARIADB_ERRORS = [
    ("ERROR 1062 (23000) at line 57: Duplicate entry 'ann@example.com' for key 'users_email_unique'",
     f"ERROR 1062 (23000) at line 57: ER_DUP_ENTRY {NOTE}"),
    ("ERROR 1064 (42000) at line 235: You have an error in your SQL syntax; check the manual that corresponds "
     "to your MariaDB server version for the right syntax to use near ''$argon2id$v=19$m=65536' at line 1",
     f"ERROR 1064 (42000) at line 235: ER_PARSE_ERROR {NOTE}"),
    ("ERROR 2002 (HY000): Can't connect to local server through socket '/run/mysqld/mysqld.sock' (2)",
     f"ERROR 2002 (HY000): CR_CONNECTION_ERROR {NOTE}"),
    ("ERROR at line 1: Unknown command '\\-'.", f"ERROR at line 1 {NOTE}"),
    ("ERROR 4999 (HY000) at line 3: a future error 'with data'", f"ERROR 4999 (HY000) at line 3 {NOTE}"),
    ("mariadb: unknown option '--frobnicate'",
     "no ERROR line in its error output (the output is left out because it can quote rows)"),
]


@pytest.mark.parametrize(("stderr", "expected"), MARIADB_ERRORS)
def test_mariadb_error_keeps_number_and_line(stderr, expected):
    assert mariadb_client_error(stderr) == expected


RDB_REPORT = """\
[offset 0] Checking RDB file redis.rdb
[offset 27] AUX FIELD redis-ver = '7.0.15'
[offset 168] Selecting DB ID 0
--- RDB ERROR DETECTED ---
[offset 642] Internal error in RDB reading offset 0, function at rdb.c:2301 -> Hash listpack integrity check failed.
[additional info] While doing: read-object-value
[additional info] Reading key 'gh:sess:8955fdad34bd49f7b79fcb5f651d6b65'
[additional info] Reading type 16 (hash-listpack)
[info] 9 keys read
[info] 0 expires
"""


def test_rdb_error_drops_key_name():
    description = rdb_check_error(RDB_REPORT)

    assert description == ("[offset 642] Internal error in RDB reading offset 0, function at rdb.c:2301 -> "
                           "Hash listpack integrity check failed.; [additional info] While doing: "
                           "read-object-value; [additional info] Reading type 16 (hash-listpack)")


def test_rdb_error_without_report_keeps_last_line():
    assert rdb_check_error("Fatal error opening 'gh:secret' file\n") == "Fatal error opening '<left out>' file"
    assert rdb_check_error("") == "no report in its output"


def test_redact_quoted_covers_quote_inside_key():
    assert redact_quoted("RDB has duplicated key 'a'b' in DB 0") == "RDB has duplicated key '<left out>' in DB 0"
