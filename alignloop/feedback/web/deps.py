"""Typed dependencies of the routes: the database, a read session and who is asking.

Writes open ``db.write()`` inside the handler instead of taking a session dependency: on SQLite the write lock
must be taken and released by the one thread that runs the transaction. A yield dependency would hold it across
hops between threadpool threads, and under load every pool thread could end up waiting for a lock whose holder
needs a thread to finish.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Annotated, Iterator, Optional

from fastapi import Depends, Form, Header, Path, Query, Request
from sqlalchemy.orm import Session

from alignloop.feedback import accounts, auth
from alignloop.feedback.consensus import METHODS
from alignloop.feedback.models import Database, Labeler, LoginSession, utcnow

SESSION_COOKIE = "alignloop_session"
# the largest row id a database holds (PostgreSQL's INTEGER): a larger one names no row, and sent to the database
# it fails there (SQLite: over 2**63, PostgreSQL: over 2**31 - 1) with a 500 instead of an answer
MAX_ROW_ID = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
OptionalRowId = Annotated[Optional[int], Query(ge=1, le=MAX_ROW_ID)]


class HTTPProblem(Exception):
    """An error answered as ``{"detail": message, "field": field}`` with ``status``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        self.status, self.message, self.field = status, message, field


@dataclass
class Principal:
    labeler: Labeler
    session: Optional[LoginSession]  # None when signed in with an API token

    client: str = ""  # the client's address (``client_address``), for the audit log

    @property
    def is_admin(self) -> bool:
        return self.labeler.role == "admin"

    @property
    def name(self) -> str:
        return self.labeler.name


async def get_db(request: Request) -> Database:  # (async: no thread pool hop for a lookup)
    return request.app.state.db


DbDep = Annotated[Database, Depends(get_db)]


async def now(request: Request) -> dt.datetime:
    """The current time by the app's clock: ``app.state.clock`` when set (tests move it on instead of sleeping),
    else ``utcnow``."""
    clock = getattr(request.app.state, "clock", None)
    return clock() if clock is not None else utcnow()


Now = Annotated[dt.datetime, Depends(now)]


def read_session(db: DbDep) -> Iterator[Session]:
    with db.read() as s:
        yield s


# scope="function": the session closes when the handler returns, before the response is sent
ReadSession = Annotated[Session, Depends(read_session, scope="function")]


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def principal(request: Request, db: DbDep, authorization: Annotated[Optional[str], Header()] = None,
              x_csrf_token: Annotated[Optional[str], Header()] = None) -> Principal:
    """The signed-in labeler: by API token (``Authorization: Bearer``, unexpired) or by session cookie, whose
    state-changing requests must carry the session's CSRF token in the ``X-CSRF-Token`` header."""
    who = identify(request, db, authorization)
    if who.session is not None and request.method not in SAFE_METHODS and \
            not auth.same(x_csrf_token, who.session.csrf_token):
        raise HTTPProblem(403, "missing or wrong CSRF token (send the X-CSRF-Token header)")
    return who


def form_principal(request: Request, db: DbDep, authorization: Annotated[Optional[str], Header()] = None,
                   csrf_token: Annotated[str, Form(max_length=100)] = "") -> Principal:
    """The signed-in labeler of a page's form (sign-out, the admin's and the lead's pages): a session's form must
    carry the session's CSRF token as its ``csrf_token`` field (a form cannot send headers)."""
    who = identify(request, db, authorization)
    if who.session is not None and not auth.same(csrf_token, who.session.csrf_token):
        raise HTTPProblem(403, "missing or wrong CSRF token (reload the page and try again)", "csrf_token")
    return who


def identify(request: Request, db: Database, authorization: Optional[str]) -> Principal:
    """Who is asking, by API token or session cookie (401 if neither is valid); the callers check CSRF."""
    client = client_address(request)
    if authorization:
        scheme, _, token = authorization.partition(" ")
        with db.lookup() as s:  # one statement, no transaction: the handler opens its own
            found = auth.token_for(s, token.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            raise HTTPProblem(401, "invalid, expired or revoked API token")
        lab, row = found
        if auth.stale_use(row):
            accounts.touch_token(db, row.id)
        return Principal(lab, None, client)
    with db.lookup() as s:
        raw = request.cookies.get(SESSION_COOKIE)
        found = auth.session_for_cookie(s, raw) if raw else None
    if found is None:
        raise HTTPProblem(401, "sign in first (POST /login) or send Authorization: Bearer <token>")
    lab, sess = found
    return Principal(lab, sess, client)


def client_address(request: Request) -> str:
    """The client's address: the peer, or, when the peer is one of the configured proxies
    (``app.state.trusted_proxies``), the last address in X-Forwarded-For that is not one of them. A header
    from anyone else is ignored: clients could write any address there and dodge the sign-in throttle."""
    peer = request.client.host if request.client else ""
    trusted = getattr(request.app.state, "trusted_proxies", ())
    if not trusted or not _in(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _in(address: str, networks) -> bool:  # noqa: ANN001
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def parse_proxies(values: list[str] | tuple[str, ...]) -> tuple:
    """``--trusted-proxy`` values (addresses or CIDR networks) as networks; a bad one raises ValueError."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


CurrentLabeler = Annotated[Principal, Depends(principal)]


def require_admin(who: CurrentLabeler) -> Principal:
    if not who.is_admin:
        raise HTTPProblem(403, "this needs the admin role")
    return who


AdminUser = Annotated[Principal, Depends(require_admin)]
FormUser = Annotated[Principal, Depends(form_principal)]


def require_form_admin(who: FormUser) -> Principal:
    return require_admin(who)


FormAdmin = Annotated[Principal, Depends(require_form_admin)]


def consensus_method(method: str) -> str:
    """A ``?method=`` value, checked where the handler needs it (after the project is found)."""
    if method not in METHODS:
        raise HTTPProblem(422, f"'{method}' is not one of {', '.join(METHODS)}", "method")
    return method
