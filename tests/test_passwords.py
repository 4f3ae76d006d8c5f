"""argon2id hashing: parameters, verification, and running off the gevent event loop."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from service.passwords import Passwords
from tests.helpers import ROOT


def test_hash_uses_configured_argon2id(settings):
    passwords = Passwords(settings)
    password_hash = passwords.hash("correct horse battery staple")
    assert password_hash.startswith("$argon2id$")
    assert f"m={settings.argon2_memory_kib},t={settings.argon2_time_cost},p={settings.argon2_parallelism}" in password_hash
    assert passwords.verify(password_hash, "correct horse battery staple") is True
    assert passwords.verify(password_hash, "wrong") is False
    assert passwords.needs_rehash(password_hash) is False


def test_verify_without_hash_is_false(settings):
    assert Passwords(settings).verify(None, "anything") is False


def test_verify_garbage_hash_is_false(settings):
    assert Passwords(settings).verify("not-a-hash", "anything") is False


def test_hashing_leaves_event_loop_running():
    # Under gevent, a ticker greenlet keeps running while a hash is computed; in a
    # blocking call it would not tick at all. Runs in a child so patch_all stays there.
    script = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import gevent
        from service.config import load_settings
        from service.passwords import Passwords

        passwords = Passwords(load_settings())
        ticks = []

        def ticker():
            while True:
                ticks.append(1)
                gevent.sleep(0.001)

        runner = gevent.spawn(ticker)
        gevent.sleep(0.01)
        before = len(ticks)
        for _ in range(3):
            passwords.hash("correct horse battery staple")
        runner.kill()
        print(len(ticks) - before)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ticks_during_hashing = int(result.stdout.strip().splitlines()[-1])
    assert ticks_during_hashing >= 5


def test_concurrent_hashes_use_bounded_threads():
    # Six greenlets hash at once; the worker may start no more threads than
    # GATEHOUSE_ARGON2_THREADS: each needs argon2 memory while it hashes, and threads beyond
    # the cores only slow every hash down.
    script = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import gevent
        from service.config import load_settings
        from service.passwords import Passwords

        passwords = Passwords(load_settings({"argon2_threads": 2}))
        hashes = gevent.joinall([gevent.spawn(passwords.hash, "correct horse battery staple") for _ in range(6)])
        assert all(greenlet.successful() for greenlet in hashes)
        with open("/proc/self/status") as status:
            print(next(line.split()[1] for line in status if line.startswith("Threads:")))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    os_threads = int(result.stdout.strip().splitlines()[-1])
    assert os_threads <= 3
