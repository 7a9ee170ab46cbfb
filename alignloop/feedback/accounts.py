"""Accounts: a user's lifecycle (deactivate, reactivate, reset the password, issue / list / revoke API tokens,
end sessions), the audit log of those actions and of every sign-in, and sign-in throttling.

Throttling counts failed sign-ins per account name and per client address in the database (``login_throttle``),
so several server workers share it. After ``free`` failures each further one locks the key for twice as long as
the one before (1 s, 2 s, 4 s ... up to 15 min); a success clears the account's count, and a key with no
failure for an hour starts over. Unknown names are counted like real ones, so the lockout tells nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from alignloop.feedback import auth
from alignloop.feedback.errors import NotFound, Throttled
from alignloop.feedback.models import ApiToken, AuditEvent, Database, Labeler, LoginSession, LoginThrottle, utcnow

CLI_ACTOR = "cli"  # the actor of actions taken with ``alignloop label user ...`` (shell access to the database)
FREE_ACCOUNT_FAILURES = 5
FREE_ADDRESS_FAILURES = 20  # many users may share one address (an office behind NAT)
MAX_LOCK = dt.timedelta(minutes=15)
FORGET_AFTER = dt.timedelta(hours=1)


def audit(s: Session, action: str, actor: str = "", target: str = "", client: str = "", ok: bool = True,
          **detail: Any) -> None:
    s.add(AuditEvent(at=utcnow(), actor=actor[:200], action=action, target=target[:200], client=client[:100], ok=ok,
                     detail=detail))


def audit_rows(s: Session, limit: int = 100, target: str | None = None) -> list[dict]:
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if target is not None:
        q = q.where(AuditEvent.target == target)
    return [{"id": e.id, "at": e.at.isoformat() + "Z", "actor": e.actor, "action": e.action, "target": e.target,
             "client": e.client, "ok": e.ok, "detail": e.detail} for e in s.scalars(q)]


def user_rows(s: Session, name: str | None = None) -> list[dict]:
    """Every account (or the one named), with how many unexpired tokens and sessions it holds."""
    now = utcnow()
    counts = {}
    for table in (ApiToken, LoginSession):
        counts[table] = dict(s.execute(select(table.labeler_id, func.count(table.id)).where(table.expires_at > now)
                                       .group_by(table.labeler_id)).all())
    q = select(Labeler).order_by(Labeler.name)
    if name is not None:
        q = q.where(Labeler.name == name)
    return [{"name": u.name, "role": u.role, "kind": u.kind, "identity": u.identity, "active": u.active,
             "has_password": u.password_hash is not None, "tokens": counts[ApiToken].get(u.id, 0),
             "sessions": counts[LoginSession].get(u.id, 0)} for u in s.scalars(q)]


def get_user(s: Session, name: str) -> Labeler:
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    if lab is None:
        raise NotFound(f"no user named '{name}'", field="name")
    return lab


# --------------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------------


def end_sessions(s: Session, lab: Labeler, actor: str, client: str = "") -> int:
    n = s.execute(delete(LoginSession).where(LoginSession.labeler_id == lab.id)).rowcount or 0
    audit(s, "sessions.end", actor, lab.name, client, sessions=n)
    return n


def revoke_tokens(s: Session, lab: Labeler, actor: str, client: str = "", token_id: int | None = None) -> int:
    """Revoke one token (``token_id``) or all of them; returns how many went."""
    q = delete(ApiToken).where(ApiToken.labeler_id == lab.id)
    if token_id is not None:
        q = q.where(ApiToken.id == token_id)
    n = s.execute(q).rowcount or 0
    if token_id is not None and n == 0:
        raise NotFound(f"'{lab.name}' has no token {token_id}", field="token_id")
    audit(s, "tokens.revoke", actor, lab.name, client, tokens=n, **({"token_id": token_id} if token_id else {}))
    return n


def deactivate(s: Session, lab: Labeler, actor: str, client: str = "") -> dict:
    """Sign the user out everywhere at once: inactive, every session ended and every token revoked."""
    lab.active = False
    out = {"sessions": end_sessions(s, lab, actor, client), "tokens": revoke_tokens(s, lab, actor, client)}
    audit(s, "user.deactivate", actor, lab.name, client, **out)
    return out


def reactivate(s: Session, lab: Labeler, actor: str, client: str = "") -> None:
    """Allow signing in again (old tokens stay revoked; issue new ones on request)."""
    lab.active = True
    audit(s, "user.reactivate", actor, lab.name, client)


def reset_password(s: Session, lab: Labeler, password_hash: str, actor: str, client: str = "") -> int:
    """Store a new password (hash it with ``auth.hash_password`` before taking the write lock) and end the
    user's sessions; returns how many ended."""
    lab.password_hash = password_hash
    n = s.execute(delete(LoginSession).where(LoginSession.labeler_id == lab.id)).rowcount or 0
    audit(s, "user.reset_password", actor, lab.name, client, sessions=n)
    return n


def issue_token(s: Session, lab: Labeler, actor: str, days: int = auth.TOKEN_DAYS, name: str = "",
                client: str = "") -> str:
    token = auth.new_token(s, lab, days=days, name=name)
    audit(s, "token.issue", actor, lab.name, client, days=days, name=name[:100])
    return token


def list_tokens(s: Session, lab: Labeler) -> list[dict]:
    now = utcnow()
    rows = s.scalars(select(ApiToken).where(ApiToken.labeler_id == lab.id).order_by(ApiToken.id))
    return [{"id": t.id, "name": t.name, "created_at": t.created_at.isoformat() + "Z",
             "expires_at": t.expires_at.isoformat() + "Z", "expired": t.expires_at < now,
             "last_used_at": t.last_used_at.isoformat() + "Z" if t.last_used_at else None} for t in rows]


def touch_token(db: Database, token_id: int) -> None:
    """Record that a token was used (the caller checks ``auth.stale_use`` first, so this is rare)."""
    with db.write() as s:
        row = s.get(ApiToken, token_id)
        if row is not None:
            row.last_used_at = utcnow()


# --------------------------------------------------------------------------------------------------
# Signing in
# --------------------------------------------------------------------------------------------------


def throttle_keys(name: str, client: str) -> list[tuple[str, int]]:
    keys = [(f"name:{name.strip().lower()[:200]}", FREE_ACCOUNT_FAILURES)]
    return keys + [(f"addr:{client[:100]}", FREE_ADDRESS_FAILURES)] if client else keys


def locked_for(s: Session, keys: list[tuple[str, int]]) -> int:
    """Seconds until every key is unlocked (0: sign-in may go ahead)."""
    now = utcnow()
    until = s.scalar(select(func.max(LoginThrottle.locked_until)).where(
        LoginThrottle.key.in_([k for k, _ in keys]), LoginThrottle.locked_until > now))
    return max(1, math.ceil((until - now).total_seconds())) if until is not None else 0


def record_failure(s: Session, keys: list[tuple[str, int]]) -> None:
    now = utcnow()
    for key, free in keys:
        row = s.get(LoginThrottle, key)
        if row is None:
            row = LoginThrottle(key=key, failures=0, last_failure_at=now)
            s.add(row)
        elif row.last_failure_at < now - FORGET_AFTER:
            row.failures, row.locked_until = 0, None
        row.failures += 1
        row.last_failure_at = now
        if row.failures > free:
            row.locked_until = now + min(dt.timedelta(seconds=2 ** min(row.failures - free - 1, 20)), MAX_LOCK)


def sign_in(db: Database, name: str, password: str, client: str = "") -> tuple[str, LoginSession] | None:
    """Check a password and open a session: (cookie value, session), or None for a wrong name or password.
    Raises ``Throttled`` while the account or the address is locked out.

    The argon2 check runs between two short transactions, outside the write lock (other users' writes do not
    wait for it), and it runs for unknown, inactive and password-less accounts too (against a dummy hash), so
    the answer's timing does not tell which names exist."""
    keys = throttle_keys(name, client)
    with db.read() as s:
        wait = locked_for(s, keys)
        lab = s.scalar(select(Labeler).where(Labeler.name == name))
        stored = lab.password_hash if lab is not None and lab.active else None
    if wait:
        with db.write() as s:
            audit(s, "login", name, name, client, ok=False, reason="throttled")
        raise Throttled(wait)
    ok = auth.check_password(stored, password)
    with db.write() as s:
        lab = s.scalar(select(Labeler).where(Labeler.name == name)) if ok else None
        # the account may have changed while the hash ran; a lockout that started meanwhile also holds
        if lab is not None and lab.active and lab.password_hash == stored and not locked_for(s, keys):
            s.execute(delete(LoginThrottle).where(LoginThrottle.key == keys[0][0]))
            audit(s, "login", name, name, client)
            return auth.open_session(s, lab)
        record_failure(s, keys)
        audit(s, "login", name, name, client, ok=False, reason="wrong name or password")
    return None
