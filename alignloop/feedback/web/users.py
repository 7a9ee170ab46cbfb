"""Signing in and out, who am I and my API tokens, the admin's user management (create, deactivate,
reactivate, reset a password, end sessions, issue / list / revoke tokens) and the audit log."""

from __future__ import annotations

import secrets
from typing import Annotated, Optional
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from alignloop.feedback import accounts, auth
from alignloop.feedback.errors import Conflict, Throttled
from alignloop.feedback.models import ApiToken, Database, Labeler
from alignloop.feedback.queries import create_labeler
from alignloop.feedback.web.deps import (
    SESSION_COOKIE,
    AdminUser,
    CurrentLabeler,
    DbDep,
    FormUser,
    HTTPProblem,
    OptionalRowId,
    Principal,
    ReadSession,
    RowId,
    client_address,
)
from alignloop.feedback.web.schemas import PasswordIn, TokenIn, UserIn
from alignloop.feedback.web.views import render

LOGIN_CSRF_COOKIE = "alignloop_login_csrf"

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/", error: str = "") -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    resp = render(request, "login.html", None, login_csrf=token, next=safe_next(next), error=error)
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", max_age=3600)
    return resp


@router.post("/login")
def login(request: Request, db: DbDep, name: Annotated[str, Form(max_length=200)],
          password: Annotated[str, Form(max_length=200)], csrf_token: Annotated[str, Form(max_length=100)] = "",
          next: Annotated[str, Form(max_length=500)] = "/") -> Response:
    # double-submit check: a cross-site form cannot read our cookie to copy it into the form
    if not auth.same(request.cookies.get(LOGIN_CSRF_COOKIE), csrf_token):
        return RedirectResponse("/login?error=expired", status_code=303)
    try:
        result = accounts.sign_in(db, name, password, client_address(request))
    except Throttled as exc:
        return RedirectResponse(f"/login?error=throttled&next={quote(safe_next(next))}", status_code=303,
                                headers={"Retry-After": str(exc.retry_after)})
    if result is None:
        return RedirectResponse(f"/login?error=wrong&next={quote(safe_next(next))}", status_code=303)
    raw, _sess = result
    resp = RedirectResponse(safe_next(next), status_code=303)
    resp.set_cookie(SESSION_COOKIE, raw, httponly=True, samesite="lax", max_age=auth.SESSION_DAYS * 86400,
                    secure=request.url.scheme == "https")
    resp.delete_cookie(LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout")
def logout(request: Request, who: FormUser, db: DbDep) -> Response:
    with db.write() as s:
        auth.logout(s, request.cookies.get(SESSION_COOKIE, ""))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp


@router.get("/api/me")
def me(who: CurrentLabeler) -> dict:
    lab = who.labeler
    return {"name": lab.name, "role": lab.role, "kind": lab.kind,
            "csrf_token": who.session.csrf_token if who.session else None}


@router.get("/api/me/tokens")
def my_tokens(who: CurrentLabeler, s: ReadSession) -> list[dict]:
    return accounts.list_tokens(s, who.labeler)


@router.post("/api/me/tokens", status_code=201)
def new_my_token(body: TokenIn, who: CurrentLabeler, db: DbDep) -> dict:
    with db.write() as s:
        lab = s.get(Labeler, who.labeler.id)
        token = accounts.issue_token(s, lab, who.name, body.days, body.name, who.client)
        token_id = s.scalar(select(ApiToken.id).where(ApiToken.token_hash == auth.hash_token(token)))
        return {"token": token, "id": token_id, "days": body.days}


@router.delete("/api/me/tokens/{token_id}")
def revoke_my_token(token_id: RowId, who: CurrentLabeler, db: DbDep) -> dict:
    with db.write() as s:
        return {"revoked": accounts.revoke_tokens(s, s.get(Labeler, who.labeler.id), who.name, who.client, token_id)}


@router.get("/api/users")
def users(who: AdminUser, s: ReadSession) -> list[dict]:
    return accounts.user_rows(s)


@router.post("/api/users", status_code=201)
async def add_user(body: UserIn, who: AdminUser, db: DbDep) -> dict:
    password = body.password or auth.new_password()
    password_hash = await run_in_threadpool(auth.hash_password, password)  # slow on purpose: not under the lock
    return await run_in_threadpool(_add_user, db, body, who, password, password_hash)


def _add_user(db, body: UserIn, who, password: str, password_hash: str) -> dict:  # noqa: ANN001
    with db.write() as s:
        lab = create_labeler(s, body.name, role=body.role, kind=body.kind, identity=body.identity)
        lab.password_hash = password_hash
        accounts.audit(s, "user.create", who.name, lab.name, who.client, role=lab.role, kind=lab.kind)
        token = accounts.issue_token(s, lab, who.name, body.token_days, "created with the user", who.client) \
            if body.token else None
    return {"name": lab.name, "role": lab.role, "kind": lab.kind, "password": password,
            **({"token": token} if token else {})}


@router.post("/api/users/{name}/deactivate")
def deactivate(name: str, who: AdminUser, db: DbDep) -> dict:
    return deactivate_user(db, name, who)


@router.post("/api/users/{name}/reactivate")
def reactivate(name: str, who: AdminUser, db: DbDep) -> dict:
    return reactivate_user(db, name, who)


@router.post("/api/users/{name}/reset-password")
def reset_password(name: str, who: AdminUser, db: DbDep, body: Optional[PasswordIn] = None) -> dict:
    return reset_user_password(db, name, who, body.password if body else None)


@router.post("/api/users/{name}/end-sessions")
def end_sessions(name: str, who: AdminUser, db: DbDep) -> dict:
    return end_user_sessions(db, name, who)


@router.get("/api/users/{name}/tokens")
def list_tokens(name: str, who: AdminUser, s: ReadSession) -> list[dict]:
    return accounts.list_tokens(s, accounts.get_user(s, name))


@router.post("/api/users/{name}/tokens", status_code=201)
def issue_token(name: str, body: TokenIn, who: AdminUser, db: DbDep) -> dict:
    with db.write() as s:
        lab = accounts.get_user(s, name)
        if not lab.active:
            raise Conflict(f"'{name}' is deactivated; reactivate them first", field="name")
        return {"name": name, "token": accounts.issue_token(s, lab, who.name, body.days, body.name, who.client),
                "days": body.days}


@router.delete("/api/users/{name}/tokens")
def revoke_tokens(name: str, who: AdminUser, db: DbDep, token_id: OptionalRowId = None) -> dict:
    return revoke_user_tokens(db, name, who, token_id)


@router.get("/api/audit")
def audit_log(who: AdminUser, s: ReadSession, limit: int = 100, target: Optional[str] = None) -> list[dict]:
    if not 1 <= limit <= 10_000:
        raise HTTPProblem(422, "must be from 1 to 10000", "limit")
    return accounts.audit_rows(s, limit, target)


# What an admin does to an account, from the API or from the admin's pages (web/manage.py): one place each.


def deactivate_user(db: Database, name: str, who: Principal) -> dict:
    with db.write() as s:
        lab = accounts.get_user(s, name)
        if lab.id == who.labeler.id:
            raise Conflict("you cannot deactivate yourself; ask another admin", field="name")
        return {"name": name, "active": False, **accounts.deactivate(s, lab, who.name, who.client)}


def reactivate_user(db: Database, name: str, who: Principal) -> dict:
    with db.write() as s:
        accounts.reactivate(s, accounts.get_user(s, name), who.name, who.client)
    return {"name": name, "active": True}


def reset_user_password(db: Database, name: str, who: Principal, password: str | None = None) -> dict:
    """A new password (``password``, or a generated one) for ``name``, whose sessions end. The hash (slow on
    purpose) is made before the write lock is taken. Run it in a worker thread (sync routes are)."""
    password = password or auth.new_password()
    password_hash = auth.hash_password(password)
    with db.write() as s:
        n = accounts.reset_password(s, accounts.get_user(s, name), password_hash, who.name, who.client)
    return {"name": name, "password": password, "sessions_ended": n}


def end_user_sessions(db: Database, name: str, who: Principal) -> dict:
    with db.write() as s:
        return {"name": name, "sessions_ended": accounts.end_sessions(s, accounts.get_user(s, name), who.name,
                                                                      who.client)}


def revoke_user_tokens(db: Database, name: str, who: Principal, token_id: int | None = None) -> dict:
    with db.write() as s:
        return {"name": name, "revoked": accounts.revoke_tokens(s, accounts.get_user(s, name), who.name, who.client,
                                                                token_id)}


def safe_next(target: str) -> str:
    # only local paths: an open redirect would let a phishing link bounce through the login page
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
