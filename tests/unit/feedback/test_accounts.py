"""Accounts: offboarding (deactivate, reset, revoke, end sessions), token expiry and last use, the audit log,
and sign-in: throttled in the database, the hash outside the write lock and run for every kind of account."""

from __future__ import annotations

import datetime as dt
import re
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.requests import Request

from alignloop.feedback import access, accounts, auth
from alignloop.feedback.api import create_app
from alignloop.feedback.store import ApiToken, AuditEvent, Labeler, LoginThrottle, create_labeler, create_project
from alignloop.feedback.web.deps import client_address, parse_proxies

PASSWORD = "correct horse battery"


@pytest.fixture
def app(db):
    with db.write() as s:
        p = create_project(s, "proj")
        admin = create_labeler(s, "admin", role="admin")
        ann = create_labeler(s, "ann", password=PASSWORD)
        create_labeler(s, "bob")  # no password: tokens only
        access.add_member(s, p, ann, "labeler", "test")
        tokens = {"admin": auth.new_token(s, admin), "ann": auth.new_token(s, ann)}
    client = TestClient(create_app(db))
    client.tokens, client.db = tokens, db
    return client


def bearer(client, who):
    return {"Authorization": f"Bearer {client.tokens[who]}"}


def login(client, name="ann", password=PASSWORD):
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token, "next": "/"},
                       follow_redirects=False)


def actions(db) -> list[tuple[str, str, str, bool]]:
    with db.read() as s:
        return [(e.actor, e.action, e.target, e.ok) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
                if e.actor != "test"]  # (the fixture's own)


def test_deactivate_ends_sessions_and_revokes_tokens_at_once(app):
    assert login(app).status_code == 303
    assert app.get("/api/me").status_code == 200 and app.get("/api/me", headers=bearer(app, "ann")).status_code == 200
    cookie = app.cookies.get("alignloop_session")
    r = app.post("/api/users/ann/deactivate", headers=bearer(app, "admin"))
    assert r.json() == {"name": "ann", "active": False, "sessions": 1, "tokens": 1}
    assert app.get("/api/me").status_code == 401  # the open session is over
    assert app.get("/api/me", headers=bearer(app, "ann")).status_code == 401  # and the token is gone
    assert login(app).headers["location"].startswith("/login?error=wrong")
    # reactivating lets her sign in again; the old token stays revoked and a new one comes only on request
    assert app.post("/api/users/ann/reactivate", headers=bearer(app, "admin")).status_code == 200
    assert app.get("/api/me", headers=bearer(app, "ann")).status_code == 401
    assert app.get("/api/me", headers={"Cookie": f"alignloop_session={cookie}"}).status_code == 401
    assert login(app).status_code == 303 and app.get("/api/me").status_code == 200
    assert app.post("/api/users/admin/deactivate", headers=bearer(app, "admin")).status_code == 409  # not oneself
    assert actions(app.db) == [
        ("ann", "login", "ann", True), ("admin", "sessions.end", "ann", True), ("admin", "tokens.revoke", "ann", True),
        ("admin", "user.deactivate", "ann", True), ("ann", "login", "ann", False),
        ("admin", "user.reactivate", "ann", True), ("ann", "login", "ann", True)]


def test_reset_password_ends_sessions_and_tokens_expire(app):
    assert login(app).status_code == 303
    adm = bearer(app, "admin")
    r = app.post("/api/users/ann/reset-password", json={"password": "a new long password"}, headers=adm)
    assert r.json() == {"name": "ann", "password": "a new long password", "sessions_ended": 1}
    assert app.get("/api/me").status_code == 401
    assert login(app).headers["location"].startswith("/login?error=wrong")
    assert login(app, password="a new long password").status_code == 303
    # a token issued on request, with its expiry and its last use
    r = app.post("/api/users/bob/tokens", json={"days": 2, "name": "ci"}, headers=adm)
    bob = {"Authorization": f"Bearer {r.json()['token']}"}
    assert app.get("/api/me", headers=bob).json()["name"] == "bob"
    listed = app.get("/api/users/bob/tokens", headers=adm).json()
    assert [(t["name"], t["expired"], t["last_used_at"] is not None) for t in listed] == [("ci", False, True)]
    made = dt.datetime.fromisoformat(listed[0]["created_at"][:-1])
    assert dt.datetime.fromisoformat(listed[0]["expires_at"][:-1]) - made == dt.timedelta(days=2)
    with app.db.write() as s:
        s.scalar(select(ApiToken).where(ApiToken.id == listed[0]["id"])).expires_at = auth.utcnow() - \
            dt.timedelta(seconds=1)
    assert app.get("/api/me", headers=bob).status_code == 401  # expired
    assert app.get("/api/users/bob/tokens", headers=adm).json()[0]["expired"] is True
    assert app.delete(f"/api/users/bob/tokens?token_id={listed[0]['id']}", headers=adm).json()["revoked"] == 1
    assert app.post("/api/users/bob/tokens", json={"days": 400}, headers=adm).status_code == 422


def count_hashes(monkeypatch, check=None) -> list[int]:
    calls = []
    real = auth._hasher

    class Counting:
        def hash(self, password):
            return real.hash(password)

        def verify(self, stored, password):
            if check is not None:
                check()
            calls.append(1)
            return real.verify(stored, password)

    monkeypatch.setattr(auth, "_hasher", Counting())
    return calls


def test_password_check_runs_outside_the_write_lock(app, monkeypatch):
    lock = app.db._write_lock  # SQLite: one process-wide lock; PostgreSQL: none (a nullcontext), trivially free
    locked = getattr(lock, "locked", lambda: False)

    def not_locked():
        assert not locked(), "the argon2 check ran inside the database's write lock"

    calls = count_hashes(monkeypatch, not_locked)
    assert login(app).status_code == 303
    assert login(app, password="wrong password").headers["location"].startswith("/login?error=wrong")
    assert len(calls) == 2


def test_new_passwords_are_hashed_outside_the_write_lock(app, monkeypatch):
    """Creating a user and resetting a password (API and admin page) hash the password (slow on purpose) before
    the write lock is taken, as signing in checks it: other users' writes do not wait for argon2."""
    lock = app.db._write_lock
    locked = getattr(lock, "locked", lambda: False)
    hashed = []
    real = auth._hasher

    class Checking:
        def hash(self, password):
            assert not locked(), "a password was hashed inside the database's write lock"
            hashed.append(1)
            return real.hash(password)

        def verify(self, stored, password):
            return real.verify(stored, password)

    monkeypatch.setattr(auth, "_hasher", Checking())
    adm = bearer(app, "admin")
    assert app.post("/api/users", json={"name": "eve"}, headers=adm).status_code == 201
    assert app.post("/api/users/ann/reset-password", headers=adm).status_code == 200
    assert app.post("/admin/users/ann/reset-password", headers=adm).status_code == 200
    assert len(hashed) == 3


def test_the_hash_runs_for_unknown_inactive_and_passwordless_accounts(app, monkeypatch):
    with app.db.write() as s:
        s.scalar(select(Labeler).where(Labeler.name == "admin")).password_hash = auth.hash_password(PASSWORD)
    app.post("/api/users/ann/deactivate", headers=bearer(app, "admin"))
    calls = count_hashes(monkeypatch)
    for name in ("nobody", "bob", "ann", "admin"):  # unknown, password-less, inactive, real
        r = login(app, name=name, password="wrong password")
        assert r.headers["location"].startswith("/login?error=wrong"), name
    assert len(calls) == 4  # one argon2 run each: the time tells nothing about which names exist


def test_sign_in_is_throttled_per_account_and_address_in_the_database(app, monkeypatch):
    # the throttle's clock stands still: a 1 s lock must not run out while a loaded machine hashes six passwords
    # (it did, on a fresh clone's test run: the right password then got in)
    now = auth.utcnow()
    monkeypatch.setattr(accounts, "utcnow", lambda: now)
    calls = count_hashes(monkeypatch)
    for _ in range(accounts.FREE_ACCOUNT_FAILURES):
        assert login(app, password="wrong password").headers["location"].startswith("/login?error=wrong")
    assert login(app, password="wrong password").headers["location"].startswith("/login?error=wrong")  # 6th
    with app.db.read() as s:
        row = s.get(LoginThrottle, "name:ann")
        assert (row.failures, row.locked_until - row.last_failure_at) == (6, dt.timedelta(seconds=1))
    # another worker on the same database sees the lock: even the right password is refused, unhashed
    other = TestClient(create_app(app.db))
    r = login(other)
    assert r.headers["location"].startswith("/login?error=throttled") and r.headers["retry-after"] == "1"
    assert len(calls) == 6
    with app.db.write() as s:  # the lock ran out; the next failure locks twice as long
        s.get(LoginThrottle, "name:ann").locked_until = now - dt.timedelta(seconds=1)
    login(app, password="wrong password")
    with app.db.read() as s:
        row = s.get(LoginThrottle, "name:ann")
        assert (row.failures, row.locked_until - row.last_failure_at) == (7, dt.timedelta(seconds=2))
        row_addr = s.get(LoginThrottle, "addr:testclient")
        assert (row_addr.failures, row_addr.locked_until) == (7, None)
    # one address guessing many names is locked too, after FREE_ADDRESS_FAILURES
    for i in range(accounts.FREE_ADDRESS_FAILURES - 7 + 1):
        login(app, name=f"guess{i}", password="wrong password")
    assert login(app, name="someone-new", password="x" * 8).headers["location"].startswith("/login?error=throttled")
    # a success clears the account's count
    with app.db.write() as s:
        s.execute(LoginThrottle.__table__.delete().where(LoginThrottle.key.like("addr:%")))
        s.get(LoginThrottle, "name:ann").locked_until = None
    assert login(app).status_code == 303
    with app.db.read() as s:
        assert s.get(LoginThrottle, "name:ann") is None


def request_from(peer: str, forwarded: str | None, trusted: list[str]) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    app = SimpleNamespace(state=SimpleNamespace(trusted_proxies=parse_proxies(trusted)))
    return Request({"type": "http", "client": (peer, 5000), "headers": headers, "app": app})


def test_x_forwarded_for_is_believed_only_from_configured_proxies():
    assert client_address(request_from("203.0.113.9", "1.2.3.4", [])) == "203.0.113.9"
    assert client_address(request_from("203.0.113.9", "1.2.3.4", ["10.0.0.0/8"])) == "203.0.113.9"
    assert client_address(request_from("10.0.0.2", "1.2.3.4", ["10.0.0.0/8"])) == "1.2.3.4"
    # a client's own X-Forwarded-For entries come first; the proxy appends the address it saw
    assert client_address(request_from("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.7", ["10.0.0.0/8"])) == "1.2.3.4"
    assert client_address(request_from("10.0.0.2", None, ["10.0.0.2"])) == "10.0.0.2"


def test_my_tokens_and_the_audit_log(app):
    ann = bearer(app, "ann")
    r = app.post("/api/me/tokens", json={"days": 7, "name": "notebook"}, headers=ann)
    assert r.status_code == 201 and r.json()["days"] == 7
    assert [t["name"] for t in app.get("/api/me/tokens", headers=ann).json()] == ["", "notebook"]
    assert app.delete(f"/api/me/tokens/{r.json()['id']}", headers=ann).json() == {"revoked": 1}
    assert app.delete(f"/api/me/tokens/{r.json()['id']}", headers=ann).status_code == 404
    log = app.get("/api/audit?target=ann", headers=bearer(app, "admin")).json()
    assert [(e["actor"], e["action"]) for e in log] == [("ann", "tokens.revoke"), ("ann", "token.issue"),
                                                        ("test", "member.add")]
    assert app.get("/api/audit", headers=ann).status_code == 403
