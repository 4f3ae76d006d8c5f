"""The argon2 threads under gevent: idle release of their memory, and hashing around a release.

Only libargon2 (argon2-cffi) leaves memory in the threads. Gatehouse hashes with it
when the parallelism is above 1, and verifies stored hashes of other forms with it.
libsodium, which computes one lane, unmaps its memory after each hash. Each test runs a
script in a child process, so that gevent's patch_all and the lowered malloc thresholds
stay there. Each script prints one JSON line of results last.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from service.config import ARGON2_DEFAULT_MEMORY_KIB
from service.hash_memory import load_arena_release
from tests.helpers import ROOT

# Resident memory that the default argon2 parameters hold after a hash, with room for noise.
HELD_KIB = ARGON2_DEFAULT_MEMORY_KIB * 3 // 4

_, _NOT_GLIBC_REASON = load_arena_release(ARGON2_DEFAULT_MEMORY_KIB, 1)
needs_glibc = pytest.mark.skipif(
    _NOT_GLIBC_REASON == "not_glibc", reason="the idle release uses glibc's malloc; this C library is not glibc"
)

# Imports and helpers that every script starts with.
_PRELUDE = """
    from gevent import monkey
    monkey.patch_all()
    import json
    import time

    import gevent

    from service.config import load_settings
    from service.hash_memory import resident_kib
    from service.passwords import Passwords

    PASSWORD = "correct horse battery staple"
    # Two lanes: hashed by libargon2, whose threads keep their memory.
    KEEPING = {"argon2_parallelism": 2}
"""


def run_script(body: str) -> dict:
    script = textwrap.dedent(_PRELUDE) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def release_cycle() -> dict:
    """Verify with the default argon2 parameters, wait past the idle time, then hash again."""
    return run_script("""
        passwords = Passwords(load_settings({**KEEPING, "argon2_release_idle_seconds": 0.3}))
        password_hash = passwords.hash(PASSWORD)
        for _ in range(3):
            passwords.verify(password_hash, PASSWORD)
        loaded_kib = resident_kib()

        gevent.sleep(0.8)
        released_kib = resident_kib()
        releases_after_idle = passwords._pool.releases

        new_hash = passwords.hash("another password")
        print(json.dumps({
            "loaded_kib": loaded_kib,
            "released_kib": released_kib,
            "rehashed_kib": resident_kib(),
            "releases_after_idle": releases_after_idle,
            "new_hash_verifies": passwords.verify(new_hash, "another password"),
            "wrong_password_verifies": passwords.verify(new_hash, PASSWORD),
            "old_hash_verifies": passwords.verify(password_hash, PASSWORD),
        }))
    """)


@needs_glibc
def test_idle_release_lowers_resident_memory(release_cycle):
    assert release_cycle["releases_after_idle"] == 1
    assert release_cycle["loaded_kib"] - release_cycle["released_kib"] >= HELD_KIB


@needs_glibc
def test_hash_after_release_verifies(release_cycle):
    assert release_cycle["new_hash_verifies"] is True
    assert release_cycle["wrong_password_verifies"] is False
    assert release_cycle["old_hash_verifies"] is True


@needs_glibc
def test_hash_after_release_keeps_memory_for_next(release_cycle):
    # Had the release left the trim threshold low or the mmap threshold below argon2's
    # size, the memory would go back after every hash and each hash would fault it in again.
    assert release_cycle["rehashed_kib"] - release_cycle["released_kib"] >= HELD_KIB


@needs_glibc
def test_hashes_closer_than_idle_time_never_release():
    results = run_script("""
        passwords = Passwords(load_settings({**KEEPING, "argon2_release_idle_seconds": 0.5}))
        password_hash = passwords.hash(PASSWORD)
        for _ in range(6):
            gevent.sleep(0.2)
            passwords.verify(password_hash, PASSWORD)
        releases_while_busy = passwords._pool.releases

        gevent.sleep(0.8)
        print(json.dumps({"while_busy": releases_while_busy, "after_idle": passwords._pool.releases}))
    """)

    assert results["while_busy"] == 0
    assert results["after_idle"] == 1


def test_zero_idle_seconds_never_releases():
    results = run_script("""
        passwords = Passwords(load_settings({**KEEPING, "argon2_release_idle_seconds": 0}))
        password_hash = passwords.hash(PASSWORD)
        loaded_kib = resident_kib()

        gevent.sleep(0.5)
        print(json.dumps({"releases": passwords._pool.releases, "dropped_kib": loaded_kib - resident_kib()}))
    """)

    assert results["releases"] == 0
    assert results["dropped_kib"] < ARGON2_DEFAULT_MEMORY_KIB // 4


@needs_glibc
def test_concurrent_hashes_during_release_are_safe():
    # Two threads, releases due 20 ms after each quiet moment, and rounds of two
    # greenlets that verify at gaps around that. Each call records its thread and time span.
    results = run_script("""
        import types

        from service.hash_memory import ArenaRelease

        get_native_id = monkey.get_original("threading", "get_native_id")
        spans = []

        def recorded(kind, function):
            def call(*args):
                started = time.monotonic()
                try:
                    return function(*args)
                finally:
                    spans.append((kind, get_native_id(), started, time.monotonic()))
            return call

        ArenaRelease.release_thread_arena = recorded("release", ArenaRelease.release_thread_arena)
        ArenaRelease.release_free_pages = recorded("release", ArenaRelease.release_free_pages)
        passwords = Passwords(load_settings({**KEEPING, "argon2_release_idle_seconds": 0.02, "argon2_threads": 2}))
        password_hash = passwords.hash(PASSWORD)
        hasher = passwords._hasher
        passwords._hasher = types.SimpleNamespace(hash=hasher.hash, verify=recorded("hash", hasher.verify))

        def client(delay):
            gevent.sleep(delay)
            return [passwords.verify(password_hash, PASSWORD), not passwords.verify(password_hash, "wrong")]

        outcomes = []
        # Quiet gaps just below, at and above the idle time, so that calls arrive
        # before, during and after releases. The 50 ms gap always ends in one.
        for gap in [0.015, 0.019, 0.02, 0.021, 0.023, 0.025, 0.03, 0.05] * 2:
            gevent.sleep(gap)
            clients = gevent.joinall([gevent.spawn(client, delay) for delay in (0, 0.005)])
            outcomes.extend(result for greenlet in clients for result in greenlet.value)
        releases_while_hashing = passwords._pool.releases
        overlaps = [
            (hash_span, release_span)
            for hash_span in spans if hash_span[0] == "hash"
            for release_span in spans if release_span[0] == "release"
            if hash_span[2] < release_span[3] and release_span[2] < hash_span[3]
        ]
        print(json.dumps({
            "all_correct": all(outcomes),
            "releases": releases_while_hashing,
            "hashes": sum(1 for span in spans if span[0] == "hash"),
            "overlaps": len(overlaps),
            "hash_threads": len({span[1] for span in spans if span[0] == "hash"}),
            "hashes_started_after_waiting": sum(
                1 for hash_span in spans if hash_span[0] == "hash"
                for release_span in spans if release_span[0] == "release"
                if 0 <= hash_span[2] - release_span[3] < 0.005),
        }))
    """)

    assert results["all_correct"] is True
    assert results["hashes"] == 64
    assert results["releases"] >= 1
    assert results["overlaps"] == 0
    assert results["hash_threads"] <= 2
    # Calls that arrived during a release start as soon as it ends.
    assert results["hashes_started_after_waiting"] >= 1


def test_libsodium_hashes_hold_no_memory():
    results = run_script("""
        passwords = Passwords(load_settings({"argon2_release_idle_seconds": 0}))
        password_hash = passwords.hash(PASSWORD)
        started_kib = resident_kib()
        for _ in range(3):
            passwords.verify(password_hash, PASSWORD)
        print(json.dumps({"held_kib": resident_kib() - started_kib}))
    """)

    assert results["held_kib"] < HELD_KIB


@needs_glibc
def test_one_lane_worker_releases_other_forms():
    # argon2-cffi verifies a two-lane hash in a one-lane worker, and its memory stays
    # in the hashing thread until the idle release.
    results = run_script("""
        import argon2

        passwords = Passwords(load_settings({"argon2_release_idle_seconds": 0.3}))
        other_form = argon2.PasswordHasher(memory_cost=7168, time_cost=5, parallelism=2).hash(PASSWORD)
        for _ in range(3):
            passwords.verify(other_form, PASSWORD)
        loaded_kib = resident_kib()

        gevent.sleep(0.8)
        print(json.dumps({"loaded_kib": loaded_kib, "released_kib": resident_kib(),
                          "releases": passwords._pool.releases}))
    """)

    assert results["releases"] == 1
    assert results["loaded_kib"] - results["released_kib"] >= HELD_KIB


def test_release_not_needed_above_dynamic_mmap_threshold():
    # glibc raises its mmap threshold at most to 32 MiB on 64-bit systems, so larger
    # argon2 memory is mapped and unmapped by every hash.
    release, reason = load_arena_release(65536, 1)

    assert release is None
    assert reason in {"argon2_memory_above_dynamic_mmap_threshold", "not_glibc"}


@pytest.mark.parametrize("name, value", [
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
    ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072"),
])
def test_release_off_when_environment_sets_thresholds(monkeypatch, name, value):
    monkeypatch.setenv(name, value)

    release, reason = load_arena_release(ARGON2_DEFAULT_MEMORY_KIB, 1)

    assert release is None
    assert reason in {"malloc_thresholds_set_by_environment", "not_glibc"}
