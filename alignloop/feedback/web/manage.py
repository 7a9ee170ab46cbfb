"""The pages that manage people: an admin's users (deactivate, reactivate, reset a password, end sessions, list and
revoke tokens) and the audit log; a lead's members of their own project.

Server-rendered like the other pages. Each action is a plain HTML form (POST, with the session's CSRF token as
its ``csrf_token`` field) that calls the same function as the JSON API (``users``, ``projects``), then redirects
back to the page with a fixed message (``?done=...``); errors come back as a page with the same status and message
as the API's. Nothing on these pages runs script: every name is escaped text.
"""

from __future__ import annotations

from typing import Annotated, Optional
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from alignloop.feedback import access, accounts
from alignloop.feedback.web.deps import MAX_ROW_ID, AdminUser, CurrentLabeler, DbDep, FormAdmin, FormUser, ReadSession
from alignloop.feedback.web.projects import add_member_as, remove_member_as
from alignloop.feedback.web.users import (
    deactivate_user,
    end_user_sessions,
    reactivate_user,
    reset_user_password,
    revoke_user_tokens,
)
from alignloop.feedback.web.views import render

router = APIRouter()

# what the page says after each action (a code in the URL, so the URL carries no text of its own)
DONE = {
    "deactivated": "Deactivated: every session ended and every token revoked.",
    "reactivated": "Reactivated: they can sign in again (their old tokens stay revoked).",
    "sessions-ended": "Every session ended: they must sign in again.",
    "tokens-revoked": "Revoked.",
    "added": "Member added.",
    "removed": "Member removed.",
}
AUDIT_LIMIT = 200


def seg(value: str) -> str:
    """A name as one URL path segment (a name may hold '/', '?' or '#')."""
    return quote(str(value), safe="")


def back(url: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{url}?done={done}", status_code=303)


# --------------------------------------------------------------------------------------------------
# Users (admins)
# --------------------------------------------------------------------------------------------------


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, who: AdminUser, s: ReadSession) -> HTMLResponse:
    return render(request, "admin_users.html", who, users=accounts.user_rows(s))


@router.get("/admin/users/{name}", response_class=HTMLResponse)
def user_page(request: Request, name: str, who: AdminUser, s: ReadSession, done: str = "") -> HTMLResponse:
    lab = accounts.get_user(s, name)
    return render(request, "admin_user.html", who, user=accounts.user_rows(s, name)[0],
                  tokens=accounts.list_tokens(s, lab), projects=access.projects_of(s, lab),
                  events=accounts.audit_rows(s, 50, target=name), done=DONE.get(done, ""),
                  is_me=lab.id == who.labeler.id)


@router.post("/admin/users/{name}/deactivate")
def deactivate(name: str, who: FormAdmin, db: DbDep) -> RedirectResponse:
    deactivate_user(db, name, who)
    return back(f"/admin/users/{seg(name)}", "deactivated")


@router.post("/admin/users/{name}/reactivate")
def reactivate(name: str, who: FormAdmin, db: DbDep) -> RedirectResponse:
    reactivate_user(db, name, who)
    return back(f"/admin/users/{seg(name)}", "reactivated")


@router.post("/admin/users/{name}/reset-password", response_class=HTMLResponse)
def reset_password(request: Request, name: str, who: FormAdmin, db: DbDep) -> HTMLResponse:
    # the new password is shown on this answer only (no redirect: it must not travel in a URL)
    out = reset_user_password(db, name, who)
    return render(request, "password.html", who, user=name, password=out["password"],
                  sessions_ended=out["sessions_ended"])


@router.post("/admin/users/{name}/end-sessions")
def end_sessions(name: str, who: FormAdmin, db: DbDep) -> RedirectResponse:
    end_user_sessions(db, name, who)
    return back(f"/admin/users/{seg(name)}", "sessions-ended")


@router.post("/admin/users/{name}/revoke-tokens")
def revoke_tokens(name: str, who: FormAdmin, db: DbDep,
                  token_id: Annotated[Optional[int], Form(ge=1, le=MAX_ROW_ID)] = None) -> RedirectResponse:
    """Revoke one token (the form's ``token_id``) or, without one, all of them."""
    revoke_user_tokens(db, name, who, token_id)
    return back(f"/admin/users/{seg(name)}", "tokens-revoked")


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(request: Request, who: AdminUser, s: ReadSession, target: str = "") -> HTMLResponse:
    return render(request, "admin_audit.html", who, target=target,
                  events=accounts.audit_rows(s, AUDIT_LIMIT, target=target or None), limit=AUDIT_LIMIT)


# --------------------------------------------------------------------------------------------------
# Members (a project's lead, or an admin)
# --------------------------------------------------------------------------------------------------


@router.get("/lead/{name}/members", response_class=HTMLResponse)
def members_page(request: Request, name: str, who: CurrentLabeler, s: ReadSession, done: str = "") -> HTMLResponse:
    project = access.project_to_manage(s, name, who.labeler)
    return render(request, "members.html", who, project=project, members=access.members(s, project),
                  done=DONE.get(done, ""))


@router.post("/lead/{name}/members")
def add_member(name: str, who: FormUser, db: DbDep, member: Annotated[str, Form(min_length=1, max_length=200)],
               role: Annotated[str, Form(max_length=20)] = "labeler") -> RedirectResponse:
    add_member_as(db, name, member.strip(), role, who)
    return back(f"/lead/{seg(name)}/members", "added")


@router.post("/lead/{name}/members/{user}/remove")
def remove_member(name: str, user: str, who: FormUser, db: DbDep) -> RedirectResponse:
    remove_member_as(db, name, user, who)
    return back(f"/lead/{seg(name)}/members", "removed")
