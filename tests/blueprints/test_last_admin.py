"""Two administrators who remove each other at the same moment leave one of them, and a grant racing a removal
waits for it instead of deadlocking, on the real MariaDB."""

from __future__ import annotations

import contextlib
import threading

import pytest

from service import admin
from service.context import EXTENSION_KEY
from service.errors import NotFound
from tests.conftest import PASSWORD
from tests.helpers import bearer, create_user

ROUNDS = 3


def _admin_tokens(client, settings, email: str) -> dict:
    user_id = create_user(settings, email, PASSWORD, roles=("admin",))
    response = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return {**response.get_json(), "user_id": user_id}


def _at_once(app, requests: list[tuple[str, str, str]]) -> list:
    """Send each (method, path, token) from its own thread and test client, all released together."""
    barrier = threading.Barrier(len(requests))
    responses: list = [None] * len(requests)

    def send(index: int, method: str, path: str, token: str) -> None:
        client = app.test_client()
        barrier.wait()
        responses[index] = client.open(path, method=method, headers=bearer(token))

    threads = [threading.Thread(target=send, args=(index, *request)) for index, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return responses


def _active_admins(client, token: str) -> set[str]:
    listed = client.get("/v1/admin/users?status=active&limit=100", headers=bearer(token))
    assert listed.status_code == 200, listed.get_json()
    return {user["id"] for user in listed.get_json()["items"] if "admin" in user["roles"]}


ACTIONS = {
    "disable": ("POST", "/v1/admin/users/{target}/disable"),
    "revoke": ("DELETE", "/v1/admin/users/{target}/roles/admin"),
    "delete": ("DELETE", "/v1/admin/users/{target}"),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_mutual_removal_keeps_one_admin(app, client, settings, action):
    method, template = ACTIONS[action]
    for round_number in range(ROUNDS):
        first = _admin_tokens(client, settings, f"first{round_number}@example.com")
        second = _admin_tokens(client, settings, f"second{round_number}@example.com")
        responses = _at_once(app, [
            (method, template.format(target=second["user_id"]), first["access_token"]),
            (method, template.format(target=first["user_id"]), second["access_token"]),
        ])

        statuses = sorted(response.status_code for response in responses)
        assert statuses[0] in (200, 204), [response.get_json() for response in responses]
        rejected = next(response for response in responses if response.status_code not in (200, 204))
        # 409 when both requests passed their role check and met in MySQL. When the first
        # change committed before the second request's check, that request is no longer an
        # administrator's: 403 after a demotion, 401 after its sessions ended or its account
        # was deleted or disabled.
        assert (rejected.status_code, rejected.get_json()["code"]) in (
            (409, "conflict"), (403, "missing_role"), (401, "session_revoked"), (401, "invalid_token")), \
            rejected.get_json()
        if rejected.status_code == 409:
            assert rejected.get_json()["field"] == "user_id"
            assert "only active administrator" in rejected.get_json()["detail"]

        winner = first if responses[0].status_code != 409 else second
        assert _active_admins(client, winner["access_token"]) == {winner["user_id"]}
        # The next round starts without administrators.
        for account in (first, second):
            with contextlib.suppress(NotFound):
                admin.delete_user(app.extensions[EXTENSION_KEY], None, "", account["user_id"])


def test_command_line_deletes_the_last_admin(app, client, admin_tokens):
    # The command line is where administrators are made, so it may remove the last one.
    svc = app.extensions[EXTENSION_KEY]
    admin.delete_user(svc, None, "", admin_tokens["user_id"])
    response = client.get("/v1/users/me", headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == 401


def test_admin_removes_another_admin(client, settings, admin_tokens):
    other = _admin_tokens(client, settings, "deputy@example.com")
    headers = bearer(admin_tokens["access_token"])
    response = client.delete(f"/v1/admin/users/{other['user_id']}/roles/admin", headers=headers)
    assert response.status_code == 200, response.get_json()
    assert _active_admins(client, admin_tokens["access_token"]) == {admin_tokens["user_id"]}


@pytest.mark.parametrize("removal", ["disable", "delete"])
def test_grant_racing_removal_does_not_deadlock(app, client, settings, admin_tokens, removal):
    granter = admin_tokens
    remover = _admin_tokens(client, settings, "remover@example.com")
    method, template = ACTIONS[removal]
    for round_number in range(ROUNDS * 2):
        target = create_user(settings, f"target{round_number}@example.com", PASSWORD)
        responses = _at_once(app, [
            ("PUT", f"/v1/admin/users/{target}/roles/admin", granter["access_token"]),
            (method, template.format(target=target), remover["access_token"]),
        ])

        # In either order both succeed, or the grant finds the user deleted; never a deadlock's 503.
        grant, removed = (response.status_code for response in responses)
        assert removed in (200, 204), responses[1].get_json()
        assert grant in ((200, 404) if removal == "delete" else (200,)), responses[0].get_json()
