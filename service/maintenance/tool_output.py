"""Short descriptions of a failed program's output that are safe to log and record.

A job's error goes into its job_failed log line and into Redis (last_error of
gh:job:NAME), where anyone with access to the logs or to Redis can read it. Some
programs quote the data they were reading when they fail. The mariadb client echoes
the failing statement or the duplicate value, which can contain an email address and
a password hash. redis-check-rdb and redis-server name the key they were reading,
which contains session and user ids. These functions keep the diagnosis and leave
the data out.
"""

from __future__ import annotations

import re

from pymysql.constants import CR, ER

# Maximum length, in characters, of a description taken from a program's output.
MAX_DESCRIPTION = 500

# `ERROR 1062 (23000) at line 57: Duplicate entry 'ann@example.com' for key 'email'`,
# `ERROR 2002 (HY000): Can't connect ...` and `ERROR at line 1: Unknown command '\-'.`
_MARIADB_ERROR = re.compile(r"ERROR(?: (?P<code>\d+) \((?P<sqlstate>[0-9A-Z]{5})\))?(?: at line (?P<line>\d+))?")
# Range markers in pymysql's tables, not error names.
_NOT_ERROR_NAMES = {"ERROR_FIRST", "CR_ERROR_FIRST", "CR_ERROR_LAST"}
RDB_ERROR_MARKER = "--- RDB ERROR DETECTED ---"
# From the first quote to the last one on a line, so that a key containing a quote is left out whole.
_QUOTED = re.compile(r"'.*'")
QUOTED_PLACEHOLDER = "'<left out>'"


def _error_names() -> dict[int, str]:
    """Map MariaDB server and client error numbers to their names, ER_DUP_ENTRY and the like."""
    names = {code: f"ER_{name}" for name, code in vars(ER).items()
             if name.isupper() and isinstance(code, int) and name not in _NOT_ERROR_NAMES}
    names.update({code: name for name, code in vars(CR).items()
                  if name.startswith("CR_") and isinstance(code, int) and name not in _NOT_ERROR_NAMES})
    return names


_ERROR_NAMES = _error_names()


def mariadb_client_error(stderr: str) -> str:
    """Describe the mariadb client's error by number, SQLSTATE, dump line and error name only.

    The client's message text is left out: it quotes the failing statement or the
    values it rejects, which are rows of the dump.
    """
    for line in stderr.splitlines():
        match = _MARIADB_ERROR.match(line.strip())
        if match is None:
            continue

        summary = "ERROR"
        if match["code"]:
            summary += f" {match['code']} ({match['sqlstate']})"
        if match["line"]:
            summary += f" at line {match['line']}"
        if match["code"] and int(match["code"]) in _ERROR_NAMES:
            summary += f": {_ERROR_NAMES[int(match['code'])]}"
        return f"{summary} (the client's message text is left out because it can quote rows)"

    return "no ERROR line in its error output (the output is left out because it can quote rows)"


def redact_quoted(line: str) -> str:
    """Replace everything from the first to the last single quote of a line with a placeholder."""
    return _QUOTED.sub(QUOTED_PLACEHOLDER, line)


def rdb_check_error(stdout: str) -> str:
    """Describe what redis-check-rdb found wrong, from the report it writes to standard output.

    The report follows the line `--- RDB ERROR DETECTED ---`: the offset and the error,
    then what the checker was doing. Its `Reading key` line is dropped and quoted
    values are left out, because key names contain session and user ids.
    """
    lines = stdout.splitlines()
    if RDB_ERROR_MARKER in lines:
        report = lines[lines.index(RDB_ERROR_MARKER) + 1:]
        diagnosis = [redact_quoted(line) for line in report
                     if line.startswith(("[offset", "[additional info]"))
                     and not line.startswith("[additional info] Reading key")]
    else:
        diagnosis = [redact_quoted(line) for line in lines[-1:]]
    return "; ".join(diagnosis)[:MAX_DESCRIPTION] or "no report in its output"
