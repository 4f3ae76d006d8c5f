"""/v1/auth: register, login, refresh, logout, and the caller's sessions."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service import auth, metrics, users
from service.api import json_response, operation
from service.bearer import current_principal
from service.blueprints.views import session_view
from service.context import services
from service.errors import (
    AccountDisabled,
    EmailTaken,
    InvalidCredentials,
    InvalidRefreshToken,
    NotFound,
    PasswordBlocklisted,
)
from service.login_guard import login_guard
from service.schemas import (
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    SessionList,
    SessionsEnded,
    TokenPair,
    UserCreated,
)

blueprint = Blueprint("auth", __name__, url_prefix="/v1/auth")

# RFC 6749 section 5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@blueprint.post("/register")
@operation("Register an account", request_model=RegisterRequest, responses={201: UserCreated},
           errors=(EmailTaken, PasswordBlocklisted), tags=("auth",),
           description="422 `password_blocklisted` when the password is a commonly used one, one the operator "
                       "blocked, or the email address, its part before the @-sign or the service's name, "
                       "also with digits or punctuation around it.")
def register(body: RegisterRequest) -> Response:
    svc = services()
    user = users.register(svc.database, svc.passwords, body.email, body.password)
    metrics.REGISTRATIONS.inc()
    return json_response(UserCreated(id=user.id, email=user.email, created_at=user.created_at), 201)


@blueprint.post("/login")
@operation("Log in and receive a token pair", request_model=LoginRequest, responses={200: TokenPair},
           errors=(InvalidCredentials, AccountDisabled), tags=("auth",), caching=("no-store", "token-no-cache"))
def login(body: LoginRequest) -> Response:
    pair = auth.login(services(), body.email, body.password,
                      user_agent=_user_agent(), ip=request.remote_addr or "", guard=login_guard())
    return json_response(pair, headers=NO_STORE)


def _user_agent() -> str:
    """Return the User-Agent header as text. WSGI passes header bytes as Latin-1, and clients send UTF-8."""
    return request.headers.get("User-Agent", "").encode("latin-1").decode("utf-8", errors="replace")


@blueprint.post("/refresh")
@operation("Exchange a refresh token for a new token pair", request_model=RefreshRequest,
           responses={200: TokenPair}, errors=(InvalidRefreshToken,), tags=("auth",),
           caching=("no-store", "token-no-cache"))
def refresh(body: RefreshRequest) -> Response:
    pair = auth.refresh(services(), body.refresh_token, ip=request.remote_addr or "")
    return json_response(pair, headers=NO_STORE)


@blueprint.post("/logout")
@operation("End the current session", responses={204: None}, bearer=True, tags=("auth",))
def logout() -> Response:
    auth.logout(services(), current_principal().claims.session_id)
    return Response(status=204)


@blueprint.post("/logout-all")
@operation("End every session of the caller, this one included", responses={200: SessionsEnded}, bearer=True,
           tags=("sessions",))
def logout_all() -> Response:
    ended = auth.logout_all(services(), current_principal().user.id)
    return json_response(SessionsEnded(sessions_ended=ended))


@blueprint.get("/sessions")
@operation("The caller's active sessions, newest first", responses={200: SessionList}, bearer=True,
           tags=("sessions",))
def list_sessions() -> Response:
    principal = current_principal()
    sessions = services().sessions.list(principal.user.id)
    return json_response(SessionList(sessions=[session_view(session, principal.claims.session_id)
                                               for session in sessions]))


@blueprint.delete("/sessions/<id:session_id>")
@operation("End one of the caller's sessions", responses={204: None}, errors=(NotFound,), bearer=True,
           tags=("sessions",))
def end_session(session_id: str) -> Response:
    auth.end_session(services(), current_principal().user.id, session_id)
    return Response(status=204)
