"""Cold-cache user loads: concurrent requests for one user share a single MySQL query."""

from __future__ import annotations

import threading
import time

import pytest

from service import users
from service.bearer import load_user
from service.context import services
from service.errors import DatabaseUnavailable
from service.single_flight import LoadTimedOut, SingleFlight

CALLERS = 20


def run_together(count: int, target) -> list:
    """Start `count` threads at one barrier and return what each returned or raised."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def call(index: int) -> None:
        barrier.wait()
        try:
            results[index] = target()
        except Exception as exc:  # the test inspects what each caller got
            results[index] = exc

    threads = [threading.Thread(target=call, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return results


def slow_counting(calls: list, result, delay: float = 0.2):
    def load():
        calls.append(1)
        time.sleep(delay)
        if isinstance(result, Exception):
            raise result
        return result
    return load


def test_concurrent_callers_share_one_load():
    flight: SingleFlight[str] = SingleFlight(wait_seconds=5)
    calls: list = []

    results = run_together(CALLERS, lambda: flight.run("key", slow_counting(calls, "value")))

    assert results == ["value"] * CALLERS
    assert len(calls) == 1
    assert flight.in_flight() == 0


def test_waiting_callers_get_the_leaders_error():
    flight: SingleFlight[str] = SingleFlight(wait_seconds=5)
    calls: list = []

    results = run_together(5, lambda: flight.run("key", slow_counting(calls, ConnectionError("down"))))

    assert len(calls) == 1
    assert all(isinstance(result, ConnectionError) for result in results)
    # The failure is not remembered: the next call loads again.
    assert flight.run("key", lambda: "later") == "later"


def test_other_keys_load_separately():
    flight: SingleFlight[str] = SingleFlight(wait_seconds=5)
    calls: list = []
    keys = iter(range(CALLERS))
    lock = threading.Lock()

    def next_key() -> int:
        with lock:
            return next(keys)

    results = run_together(CALLERS, lambda: flight.run(next_key(), slow_counting(calls, "value", delay=0.05)))

    assert results == ["value"] * CALLERS
    assert len(calls) == CALLERS


def test_waiting_caller_gives_up_after_wait():
    flight: SingleFlight[str] = SingleFlight(wait_seconds=0.1)
    leader = threading.Thread(target=flight.run, args=("key", slow_counting([], "value", delay=0.5)))
    leader.start()
    time.sleep(0.05)

    with pytest.raises(LoadTimedOut):
        flight.run("key", lambda: "unused")
    leader.join()


def test_cold_user_cache_queries_mysql_once(app, user, monkeypatch):
    """Through the real database: concurrent authenticated requests of one cold user make one query."""
    queries: list = []
    real_find_user = users.find_user

    def counting_find_user(database, user_id):
        queries.append(user_id)
        time.sleep(0.2)  # keep the query in flight while the others arrive
        return real_find_user(database, user_id)

    monkeypatch.setattr(users, "find_user", counting_find_user)
    with app.app_context():
        svc = services()
        svc.access.forget_user(user["id"])

        def load():
            with app.app_context():
                return load_user(svc, user["id"])

        results = run_together(CALLERS, load)

    assert [result.id for result in results] == [user["id"]] * CALLERS
    assert queries == [user["id"]]


def test_timed_out_wait_is_503(app, user, monkeypatch):
    with app.app_context():
        svc = services()
        monkeypatch.setattr(svc, "user_loads", SingleFlight(wait_seconds=0.05))
        svc.access.forget_user(user["id"])
        slow_load = slow_counting([], None, delay=0.5)
        monkeypatch.setattr(users, "find_user", lambda _database, _user_id: slow_load())
        leader = threading.Thread(target=lambda: app.app_context().push() or load_user(svc, user["id"]))
        leader.start()
        time.sleep(0.1)

        with pytest.raises(DatabaseUnavailable):
            load_user(svc, user["id"])
        leader.join()
