"""The media type and type URI of every problem document (RFC 9457) the service writes.

A module of its own, without imports, so that the gunicorn master can use it for
gunicorn's own error responses (service.lifecycle.error_pages) without importing
Flask, redis or pymysql before it forks.
"""

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "tag:gatehouse,2026:problem:"
