"""The README documents every setting the service reads and the ban body, and docs/api.md every error code."""

from __future__ import annotations

import re

from service import errors
from service.lifecycle import error_pages
from service.config import ENV_PREFIX, Settings
from service.schemas import CreateBanRequest
from tests.helpers import ROOT


def test_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [ENV_PREFIX + name.upper() for name in Settings.model_fields
               if f"`{ENV_PREFIX}{name.upper()}`" not in readme]
    assert missing == []



def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def test_readme_states_every_setting_range():
    """Each bounded setting's row gives the range that start-up enforces, as the error message does."""
    readme = (ROOT / "README.md").read_text()
    wrong = []
    for name, field in Settings.model_fields.items():
        low = next((getattr(rule, kind) for rule in field.metadata for kind in ("ge", "gt")
                    if getattr(rule, kind, None) is not None), None)
        high = next((rule.le for rule in field.metadata if getattr(rule, "le", None) is not None), None)
        if low is None or high is None:
            continue
        above = any(getattr(rule, "gt", None) is not None for rule in field.metadata)
        expected = f"above {_number(low)} up to {_number(high)}" if above else f"{_number(low)}-{_number(high)}"
        row = re.search(rf"^\| `{ENV_PREFIX}{name.upper()}` \|.*\|$", readme, re.MULTILINE)
        if row is None or expected not in row.group(0).replace(",", ""):
            wrong.append(f"{ENV_PREFIX}{name.upper()}: {expected}")
    assert wrong == []


def test_docs_name_every_ban_field():
    for document in (ROOT / "README.md", ROOT / "docs" / "api.md"):
        text = document.read_text()
        missing = [name for name in CreateBanRequest.model_fields if f'"{name}"' not in text]
        assert missing == [], document.name

# The code of DependencyUnavailable, the base of database_unavailable and redis_unavailable,
# which is never raised itself.
UNSENT_CODES = {"service_unavailable"}


def problem_statuses() -> dict[str, int]:
    """Return the status of every problem code that service.errors defines."""
    statuses = {}
    pending = [errors.Problem]
    while pending:
        problem = pending.pop()
        # Unauthorized sets only the status its subclasses share, not a code of its own.
        if "code" in vars(problem):
            statuses[problem.code] = problem.status
        pending.extend(problem.__subclasses__())
    return statuses


def documented_errors(table: int = 0) -> dict[str, str]:
    """Return the status column of every code in an error table of docs/api.md: 0 the app's, 1 gunicorn's."""
    section = (ROOT / "docs" / "api.md").read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    tables = [block for block in section.split("\n\n") if block.startswith("| status | code |")]
    rows = [line.split("|")[1:3] for line in tables[table].splitlines() if line.startswith("| ") and "`" in line]
    return {code: status.strip() for status, codes in rows for code in re.findall(r"`([a-z_]+)`", codes)}


def test_api_error_table_lists_every_code():
    documented = documented_errors()
    defined = problem_statuses()

    missing = sorted(set(defined) - UNSENT_CODES - set(documented))
    unknown = sorted(set(documented) - set(defined) - {"http_error"})
    wrong_status = sorted(code for code, status in defined.items()
                          if code in documented and documented[code] != str(status))
    assert missing == []
    assert unknown == []
    assert wrong_status == []
    assert "http_error" in documented


def test_api_gunicorn_error_table_matches_error_pages():
    documented = documented_errors(table=1)
    written = {code: str(status) for status, (code, _field) in error_pages._PROBLEMS.items()}

    assert documented
    assert {code: written.get(code) for code in documented} == documented
