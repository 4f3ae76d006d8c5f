"""Redis key counts for `make soak`: does session state return to its baseline after the purge job?

Sessions live for hours (GATEHOUSE_SESSION_TTL_SECONDS is at least 3600) and the
soak's pre-made sessions for a day, so after a soak of minutes its sessions are
still valid, not garbage. The soak therefore ends them the way clients do, with
POST /v1/auth/logout-all for every account, and then runs `gatehouse tokens purge`.
After that every session key (refresh tokens, sessions, their token sets and the
per-user indexes) must be gone again, and every other key the soak added must carry
an expiry, so that Redis cannot grow with the number of requests served.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import redis
import requests

from bench import fixtures
from service.maintenance.jobs import lock_key, record_key
from service.redis_store import KEY_PREFIX
from service.sessions import REVOKED_KEY, refresh_token_key, session_key, user_sessions_key

_SCAN_BATCH = 1000
# Keys that stay by design: the maintenance jobs' result records (one per job) and the
# revoked set, one key whose entries the revocations and the purge trim by time.
_KEPT_PREFIXES = (record_key(""), lock_key(""), REVOKED_KEY)
# user_sessions_key(user_id) is gh:user:<user_id>:sessions.
_USER_INDEX_PREFIX = user_sessions_key("").removesuffix(":sessions")


@dataclass
class KeyCensus:
    total: int = 0
    # Refresh tokens, sessions with their token sets, and per-user session indexes.
    session_state: int = 0
    # Keys with no expiry, other than session state and the keys kept by design.
    persistent: set[str] = field(default_factory=set)


def _is_session_state(key: str) -> bool:
    if key.startswith((refresh_token_key(""), session_key(""))):
        return True

    return key.startswith(_USER_INDEX_PREFIX) and key.endswith(":sessions")


def count_keys(client: redis.Redis) -> KeyCensus:
    """Count the keys under the gh: prefix by kind, with SCAN so that Redis keeps serving."""
    census = KeyCensus()
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.ttl(key)
        for key, ttl in zip(batch, pipe.execute(), strict=True):
            census.total += 1
            if _is_session_state(key):
                census.session_state += 1
            elif ttl == -1 and not key.startswith(_KEPT_PREFIXES):
                census.persistent.add(key)
        batch.clear()

    for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=_SCAN_BATCH):
        batch.append(key.decode() if isinstance(key, bytes) else key)
        if len(batch) >= _SCAN_BATCH:
            flush()
    flush()
    return census


def end_all_sessions(base_url: str, emails: list[str], password: str) -> int:
    """Log every account in once more and end all of its sessions; return how many sessions ended."""
    access_tokens = fixtures.log_in_gatehouse(base_url, emails, password)

    def logout_all(token: str) -> int:
        response = requests.post(f"{base_url}/v1/auth/logout-all", headers={"Authorization": f"Bearer {token}"},
                                 timeout=fixtures.SETUP_TIMEOUT_SECONDS)
        return fixtures._check(response, "POST /v1/auth/logout-all")["sessions_ended"]

    return sum(fixtures._in_parallel(logout_all, access_tokens))


def run_purge() -> str:
    """Run `gatehouse tokens purge` with this process's settings; return its output, raise when it fails."""
    result = subprocess.run([sys.executable, "-m", "service.cli", "tokens", "purge"], capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"gatehouse tokens purge failed with exit code {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout + result.stderr
