"""Quoting for the MariaDB option files and redis.conf files that the backup commands write."""

from __future__ import annotations

# Characters that MariaDB's option-file reader turns back from a backslash escape inside
# a quoted value. The backslash itself comes first, so the other escapes are not doubled.
_MYSQL_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\b", "\\b"))


def mysql_option(name: str, value: object) -> str:
    """Return one `name="value"` line of a MariaDB option file that reads back as exactly str(value).

    Unquoted, the reader ends a value at `#` (a comment) and strips spaces around it, so
    a password such as `abc#def` or ` abc ` would reach the server changed. In double
    quotes `#` and spaces are kept, and the reader undoes the escapes above.
    tests/maintenance/test_option_files.py checks this with the mariadb 10.11 client
    against real accounts.
    """
    text = str(value)
    for character, escape in _MYSQL_ESCAPES:
        text = text.replace(character, escape)
    return f'{name}="{text}"\n'


def redis_config_string(value: object) -> str:
    """Return str(value) as a double-quoted redis.conf argument, with backslashes and quotes escaped."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
