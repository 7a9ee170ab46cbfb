"""Signing in and out, who am I, and the admin's user management."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from alignloop.feedback import auth
from alignloop.feedback.models import Labeler
from alignloop.feedback.queries import create_labeler
from alignloop.feedback.web.deps import SESSION_COOKIE, AdminUser, CurrentLabeler, DbDep, HTTPProblem, ReadSession
from alignloop.feedback.web.schemas import UserIn
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
    with db.write() as s:
        result = auth.login(s, name, password)
    if result is None:
        return RedirectResponse(f"/login?error=wrong&next={quote(safe_next(next))}", status_code=303)
    raw, _sess = result
    resp = RedirectResponse(safe_next(next), status_code=303)
    resp.set_cookie(SESSION_COOKIE, raw, httponly=True, samesite="lax", max_age=auth.SESSION_DAYS * 86400,
                    secure=request.url.scheme == "https")
    resp.delete_cookie(LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout")
def logout(request: Request, who: CurrentLabeler, db: DbDep,
           csrf_token: Annotated[str, Form(max_length=100)] = "") -> Response:
    if who.session is not None and not auth.same(csrf_token, who.session.csrf_token):
        raise HTTPProblem(403, "missing or wrong CSRF token", "csrf_token")
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


@router.get("/api/users")
def users(who: AdminUser, s: ReadSession) -> list[dict]:
    return [{"name": u.name, "role": u.role, "kind": u.kind, "identity": u.identity, "active": u.active}
            for u in s.scalars(select(Labeler).order_by(Labeler.name))]


@router.post("/api/users", status_code=201)
def add_user(body: UserIn, who: AdminUser, db: DbDep) -> dict:
    password = body.password or auth.new_password()
    with db.write() as s:
        lab = create_labeler(s, body.name, role=body.role, kind=body.kind, identity=body.identity, password=password)
        token = auth.new_token(s, lab)
    return {"name": lab.name, "role": lab.role, "kind": lab.kind, "password": password, "token": token}


def safe_next(target: str) -> str:
    # only local paths: an open redirect would let a phishing link bounce through the login page
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
