"""Typed dependencies of the routes: the database, a read session and who is asking.

Writes open ``db.write()`` inside the handler instead of taking a session dependency: on SQLite the write lock
must be taken and released by the one thread that runs the transaction. A yield dependency would hold it across
hops between threadpool threads, and under load every pool thread could end up waiting for a lock whose holder
needs a thread to finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Iterator, Optional

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from alignloop.feedback import auth
from alignloop.feedback.consensus import METHODS
from alignloop.feedback.models import Database, Labeler, LoginSession

SESSION_COOKIE = "alignloop_session"


class HTTPProblem(Exception):
    """An error answered as ``{"detail": message, "field": field}`` with ``status``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        self.status, self.message, self.field = status, message, field


@dataclass
class Principal:
    labeler: Labeler
    session: Optional[LoginSession]  # None when signed in with an API token

    @property
    def is_admin(self) -> bool:
        return self.labeler.role == "admin"


def get_db(request: Request) -> Database:
    return request.app.state.db


DbDep = Annotated[Database, Depends(get_db)]


def read_session(db: DbDep) -> Iterator[Session]:
    with db.read() as s:
        yield s


# scope="function": the session closes when the handler returns, before the response is sent
ReadSession = Annotated[Session, Depends(read_session, scope="function")]


def principal(request: Request, db: DbDep, authorization: Annotated[Optional[str], Header()] = None,
              x_csrf_token: Annotated[Optional[str], Header()] = None) -> Principal:
    """The signed-in labeler: by API token (``Authorization: Bearer``) or by session cookie, whose state-changing
    requests must carry the session's CSRF token."""
    with db.read() as s:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            lab = auth.labeler_for_token(s, token.strip()) if scheme.lower() == "bearer" else None
            if lab is None:
                raise HTTPProblem(401, "invalid API token")
            return Principal(lab, None)
        raw = request.cookies.get(SESSION_COOKIE)
        found = auth.session_for_cookie(s, raw) if raw else None
        if found is None:
            raise HTTPProblem(401, "sign in first (POST /login) or send Authorization: Bearer <token>")
        lab, sess = found
        # (the sign-out form sends its token as a form field; the /logout handler checks that one)
        if request.method not in ("GET", "HEAD", "OPTIONS") and request.url.path != "/logout" \
                and not auth.same(x_csrf_token, sess.csrf_token):
            raise HTTPProblem(403, "missing or wrong CSRF token (send the X-CSRF-Token header)")
        return Principal(lab, sess)


CurrentLabeler = Annotated[Principal, Depends(principal)]


def require_admin(who: CurrentLabeler) -> Principal:
    if not who.is_admin:
        raise HTTPProblem(403, "this needs the admin role")
    return who


AdminUser = Annotated[Principal, Depends(require_admin)]


def consensus_method(method: str) -> str:
    """A ``?method=`` value, checked where the handler needs it (after the project is found)."""
    if method not in METHODS:
        raise HTTPProblem(422, f"'{method}' is not one of {', '.join(METHODS)}", "method")
    return method
