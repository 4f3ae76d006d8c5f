"""Plain details for the JSON syntax errors of pydantic-core, for the invalid_json problem.

pydantic-core 2.50 (its JSON parser, jiter) names some mistakes after the parser's
state rather than the input. A lone leading surrogate escape such as \\ud800 comes back
as "unexpected end of hex escape", and a lone trailing one as "lone leading surrogate".
The NaN that the service rejects is "expected value". describe_json_error rewrites
those and keeps the others. Because the body may contain a password, a detail quotes
none of it except object keys, which validation errors name as fields too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# pydantic-core appends the position: line numbers from 1, and byte columns from 1,
# where column 0 of a line is the line break before it.
_POSITION = re.compile(r"(?P<message>.+) at line (?P<line>\d+) column (?P<column>\d+)")
_MAX_KEY_PATH = 64
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"

_LONE_SURROGATE = ("contains a lone surrogate escape (\\uD800 to \\uDFFF without its pair). "
                   "Send the character itself, or a valid surrogate pair such as \\uD83D\\uDE00")
# Errors inside a string, by pydantic-core's message: what the string contains, and the fix.
_STRING_ERRORS = {
    "unexpected end of hex escape": _LONE_SURROGATE,
    "lone leading surrogate in hex escape": _LONE_SURROGATE,
    "invalid escape": ("contains an invalid escape. A backslash starts one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t, "
                       "or \\u followed by four hexadecimal digits"),
    "control character (\\u0000-\\u001F) found while parsing a string": (
        "contains a control character (U+0000 to U+001F), such as a line break, that is not escaped. "
        "Escape it, such as \\n for a line break"),
    "invalid unicode code point": "is not valid UTF-8. Send the body encoded as UTF-8",
}
# Other errors whose message does not say what is wrong, by pydantic-core's message.
_OTHER_ERRORS = {
    "expected ident": "expected true, false or null",
    "key must be a string": "expected an object key in double quotes",
    "recursion limit exceeded": "arrays and objects are nested more than about 200 levels deep, the limit of "
                                "pydantic-core 2.50",
    "trailing characters": "unexpected characters after the JSON value",
}


def describe_json_error(raw: bytes, error: str) -> str:
    """Return the detail of an invalid_json problem for pydantic-core's error message about raw."""
    if raw.startswith(_BYTE_ORDER_MARK):
        return ("The request body is not valid JSON: it starts with a UTF-8 byte order mark, which JSON does "
                "not allow. Send the body without it.")

    match = _POSITION.fullmatch(error)
    if match is None:
        return f"The request body is not valid JSON: {error}."

    message, line, column = match["message"], int(match["line"]), int(match["column"])
    position = f"line {line}, column {column}"
    offset = _byte_offset(raw, line, column)
    if message in _STRING_ERRORS:
        return f"The request body is not valid JSON: {_string_at(raw, offset)} {_STRING_ERRORS[message]}."

    if _is_non_finite_number(raw, offset):
        return (f"The request body is not valid JSON: NaN and Infinity are not JSON numbers ({position}). "
                "Send a finite number.")
    return f"The request body is not valid JSON: {_OTHER_ERRORS.get(message, message)} ({position})."


def _byte_offset(raw: bytes, line: int, column: int) -> int:
    """Return the offset in raw of pydantic-core's line and column."""
    line_start = 0
    for _ in range(line - 1):
        line_start = raw.index(b"\n", line_start) + 1
    return max(line_start + column - 1, 0)


def _is_non_finite_number(raw: bytes, offset: int) -> bool:
    token = raw[offset:offset + 8]
    return token.startswith((b"NaN", b"Infinity")) or (raw[offset - 1:offset] == b"-" and token == b"Infinity")


@dataclass
class _Container:
    """An object or array that the scan has entered but not left."""

    is_object: bool
    # The current member's key in an object, or the current element's index in an array.
    key: str | int | None = None
    expecting_key: bool = False


def _string_at(raw: bytes, offset: int) -> str:
    """Name the string that contains offset, by the path of its value or, for an object key, of its object.

    The scan trusts raw up to offset to be valid JSON, which it is, because the parser
    got that far.
    """
    containers: list[_Container] = []
    position = 0
    while position < offset:
        byte = raw[position:position + 1]
        if byte == b'"':
            end = _string_end(raw, position, offset)
            in_key = bool(containers) and containers[-1].expecting_key
            if end is None:
                return _describe_string(containers, in_key)
            if in_key:
                containers[-1].key = _decode_key(raw[position:end + 1])
                containers[-1].expecting_key = False
            position = end + 1
            continue

        if byte == b"{":
            containers.append(_Container(is_object=True, expecting_key=True))
        elif byte == b"[":
            containers.append(_Container(is_object=False, key=0))
        elif byte in (b"}", b"]") and containers:
            containers.pop()
        elif byte == b"," and containers:
            if containers[-1].is_object:
                containers[-1].expecting_key = True
            else:
                containers[-1].key = int(containers[-1].key or 0) + 1
        position += 1
    return f"the string at {_line_of(raw, offset)}"


def _string_end(raw: bytes, start: int, limit: int) -> int | None:
    """Return the offset of the quote that closes the string opened at start, or None if it is not closed before limit."""
    position = start + 1
    while position < limit:
        byte = raw[position:position + 1]
        if byte == b"\\":
            position += 2
            continue
        if byte == b'"':
            return position
        position += 1
    return None


def _decode_key(quoted: bytes) -> str:
    try:
        return str(json.loads(quoted))
    except ValueError:
        return quoted[1:-1].decode("utf-8", "replace")


def _describe_string(containers: list[_Container], in_key: bool) -> str:
    if in_key:
        parents = _key_path(containers[:-1])
        return f"an object key in {parents}" if parents else "an object key at the top level"

    path = _key_path(containers)
    return f"the string at {path}" if path else "the string at the top level"


def _key_path(containers: list[_Container]) -> str:
    """Join the keys and indexes of the containers with dots, as invalid_request names fields."""
    return ".".join(str(container.key) for container in containers)[:_MAX_KEY_PATH]


def _line_of(raw: bytes, offset: int) -> str:
    line = raw.count(b"\n", 0, offset) + 1
    return f"line {line}"
