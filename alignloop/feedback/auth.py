"""Passwords (argon2), API tokens and login sessions with CSRF tokens.

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
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from alignloop.feedback.models import ApiToken, Labeler, LoginSession, utcnow

SESSION_DAYS = 7
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


def new_token(s: Session, labeler: Labeler) -> str:
    """Create an API token for scripts (``Authorization: Bearer ...``); only its hash is stored."""
    token = "al_" + secrets.token_urlsafe(32)
    s.add(ApiToken(labeler_id=labeler.id, token_hash=hash_token(token)))
    return token


def labeler_for_token(s: Session, token: str) -> Labeler | None:
    row = s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    lab = s.get(Labeler, row.labeler_id) if row else None
    return lab if lab is not None and lab.active else None


def login(s: Session, name: str, password: str) -> tuple[str, LoginSession] | None:
    """Check the password; on success open a session and return (cookie value, session)."""
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    if lab is None or not lab.active or not verify_password(lab.password_hash, password):
        if lab is None:
            verify_password(_dummy_hash(), password)  # same time whether or not the name exists
        return None
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
    sess = s.scalar(select(LoginSession).where(LoginSession.session_hash == hash_token(raw)))
    if sess is None or sess.expires_at < utcnow():
        return None
    lab = s.get(Labeler, sess.labeler_id)
    return (lab, sess) if lab is not None and lab.active else None


def logout(s: Session, raw: str) -> None:
    s.execute(delete(LoginSession).where(LoginSession.session_hash == hash_token(raw)))


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
