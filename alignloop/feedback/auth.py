"""Passwords (argon2), API tokens (with an expiry) and login sessions with CSRF tokens.

Secrets are stored only as hashes: argon2 for passwords (slow on purpose), SHA-256 for tokens and session
ids (they are 256-bit random strings, so a fast hash is enough and keeps every request cheap).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.orm import Session

from alignloop.feedback.errors import Invalid
from alignloop.feedback.models import ApiToken, Labeler, LoginSession, utcnow

SESSION_DAYS = 7
TOKEN_DAYS = 90  # an API token's life unless asked otherwise
MAX_TOKEN_DAYS = 366
LAST_USED_EVERY = dt.timedelta(minutes=1)
# argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): ~0.2 s on a small CPU, so a login
# stays quick while a stolen hash still costs an attacker that much per guess
_hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    if not stored:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def new_password() -> str:
    return secrets.token_urlsafe(12)


def check_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored``. A missing hash (unknown, password-less or inactive account: pass
    None) is checked against a dummy hash, so every answer costs one argon2 run and the time tells nothing.
    Call it outside the database's write lock: it takes ~0.2 s on purpose."""
    if not stored:
        verify_password(_dummy_hash(), password)
        return False
    return verify_password(stored, password)


def new_token(s: Session, labeler: Labeler, days: int = TOKEN_DAYS, name: str = "") -> str:
    """Create an API token for scripts (``Authorization: Bearer ...``) that expires after ``days``; only its
    hash is stored."""
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_TOKEN_DAYS:
        raise Invalid(f"must be a whole number of days from 1 to {MAX_TOKEN_DAYS}", field="days")
    token, now = "al_" + secrets.token_urlsafe(32), utcnow()
    s.add(ApiToken(labeler_id=labeler.id, token_hash=hash_token(token), name=name[:100], created_at=now,
                   expires_at=now + dt.timedelta(days=days)))
    return token


def token_for(s: Session, token: str) -> tuple[Labeler, ApiToken] | None:
    """The active labeler and the token row of an unexpired API token."""
    found = s.execute(_token_statement(), {"hash": hash_token(token)}).first()
    if found is None or found.ApiToken.expires_at < utcnow():
        return None
    row, lab = found
    return (lab, row) if lab.active else None


def labeler_for_token(s: Session, token: str) -> Labeler | None:
    found = token_for(s, token)
    return found[0] if found else None


def stale_use(row: ApiToken) -> bool:
    """Whether the token's last-used time is old enough to write again (at most once a minute per token, so
    scripts do not queue on the write lock for it)."""
    return row.last_used_at is None or row.last_used_at < utcnow() - LAST_USED_EVERY


def open_session(s: Session, lab: Labeler) -> tuple[str, LoginSession]:
    """A new login session for ``lab`` (whose password was checked); returns (cookie value, session)."""
    raw = secrets.token_urlsafe(32)
    sess = LoginSession(labeler_id=lab.id, session_hash=hash_token(raw), csrf_token=secrets.token_urlsafe(24),
                        expires_at=utcnow() + dt.timedelta(days=SESSION_DAYS))
    s.add(sess)
    s.execute(delete(LoginSession).where(LoginSession.expires_at < utcnow()))
    return raw, sess


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash("not a real password")


def session_for_cookie(s: Session, raw: str) -> tuple[Labeler, LoginSession] | None:
    found = s.execute(_session_statement(), {"hash": hash_token(raw)}).first()
    if found is None or found.LoginSession.expires_at < utcnow():
        return None
    sess, lab = found
    return (lab, sess) if lab.active else None


# every request checks its token or cookie: one statement (the row and its labeler), built once
@functools.cache
def _token_statement() -> Select:
    return select(ApiToken, Labeler).join(Labeler, Labeler.id == ApiToken.labeler_id).where(
        ApiToken.token_hash == bindparam("hash"))


@functools.cache
def _session_statement() -> Select:
    return select(LoginSession, Labeler).join(Labeler, Labeler.id == LoginSession.labeler_id).where(
        LoginSession.session_hash == bindparam("hash"))


def logout(s: Session, raw: str) -> None:
    s.execute(delete(LoginSession).where(LoginSession.session_hash == hash_token(raw)))


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
