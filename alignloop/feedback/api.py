"""The studio's web app: server-rendered pages, a small static front end and a JSON API.

Access: every route needs a signed-in user except ``/login``, ``/health`` and ``/static`` (CSS/JS, no data).
Browsers sign in with a password and get a session cookie; every state-changing request made with that
cookie must carry the session's CSRF token (``X-CSRF-Token`` header or ``csrf_token`` form field). Scripts
use ``Authorization: Bearer <token>`` instead (no cookie, so no CSRF). Labelers reach only their own
assignments and judgments; admins reach everything.

In this HTTP API, a pairwise choice ``A``/``B`` means the completion shown first/second to that labeler
(left/right); the server maps it to the task's canonical order with the assignment's stored display order.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.core.errors import DataError
from alignloop.feedback import assign, auth
from alignloop.feedback.store import (PROJECT_FIELDS, Assignment, Completion, Database, Judgment, Labeler,
                                      LoginSession, Project, Prompt, StoreError, Task, add_judgment,
                                      create_labeler, create_project, get_project, set_guidelines,
                                      update_project, utcnow)

WEB = Path(__file__).resolve().parent / "web"
SESSION_COOKIE = "alignloop_session"
LOGIN_CSRF_COOKIE = "alignloop_login_csrf"
MAX_BODY = 1 << 20  # 1 MiB for ordinary requests
MAX_IMPORT_BODY = 64 << 20  # imports through the API
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        self.status, self.message, self.field = status, message, field


@dataclass
class Principal:
    labeler: Labeler
    session: Optional[LoginSession]  # None when signed in with an API token

    @property
    def is_admin(self) -> bool:
        return self.labeler.role == "admin"


# --------------------------------------------------------------------------------------------------
# Middleware: body size limit and security headers (pure ASGI, so it also covers streamed bodies)
# --------------------------------------------------------------------------------------------------


class Limits:
    def __init__(self, app):  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = MAX_IMPORT_BODY if scope["path"].endswith("/import") else MAX_BODY
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, limit)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        async def secured_send(message):  # noqa: ANN001
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            await self.app(scope, counted_receive, secured_send)
        except _TooLarge:
            await _too_large(send, limit)


class _TooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:  # noqa: ANN001
    body = json.dumps({"detail": f"request body is larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------------


class JudgmentIn(BaseModel):
    choice: Optional[str] = Field(None, max_length=20)
    strength: Optional[str] = Field(None, max_length=20)
    ranking: Optional[list[int]] = Field(None, max_length=64)
    ratings: Optional[dict[str, dict[str, int]]] = None
    flags: Optional[dict[str, dict[str, bool]]] = None
    rewrite: Optional[str] = None  # length checked by the store so the message names the limit
    skip_reason: Optional[str] = None
    duration_ms: Optional[int] = Field(None, ge=0)
    idempotency_key: Optional[str] = Field(None, max_length=100)


class ProjectIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=200)
    task_type: str = "pairwise"
    guidelines: str = ""
    content_warning: str = ""
    criteria: Optional[list[str]] = None
    flags: Optional[list[str]] = None
    scale: Optional[int] = None
    overlap: Optional[int] = None
    gold_rate: Optional[float] = None
    order: Optional[str] = None
    lease_minutes: Optional[int] = None


class ProjectPatch(BaseModel):
    criteria: Optional[list[str]] = None
    flags: Optional[list[str]] = None
    scale: Optional[int] = None
    overlap: Optional[int] = None
    gold_rate: Optional[float] = None
    order: Optional[str] = None
    lease_minutes: Optional[int] = None


class GuidelinesIn(BaseModel):
    text: str = Field(..., max_length=200_000)
    content_warning: Optional[str] = Field(None, max_length=5_000)


class UserIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=200)
    role: str = "labeler"
    kind: str = "human"
    identity: str = ""
    password: Optional[str] = Field(None, min_length=8, max_length=200)


# --------------------------------------------------------------------------------------------------
# Who is asking (module level: FastAPI resolves the string annotations here)
# --------------------------------------------------------------------------------------------------


def principal(request: Request, authorization: Annotated[Optional[str], Header()] = None,
              x_csrf_token: Annotated[Optional[str], Header()] = None) -> Principal:
    db: Database = request.app.state.db
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


Who = Annotated[Principal, Depends(principal)]


def require_admin(who: Who) -> Principal:
    if not who.is_admin:
        raise HTTPProblem(403, "this needs the admin role")
    return who


Admin = Annotated[Principal, Depends(require_admin)]


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


def create_app(db: Database | str) -> FastAPI:
    db = Database(db) if isinstance(db, str) else db
    app = FastAPI(title="alignloop feedback studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db = db
    templates = Jinja2Templates(directory=str(WEB / "templates"))
    app.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")

    # ---- errors -----------------------------------------------------------------------------------
    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        if exc.status == 401 and _wants_html(request):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        body = {"detail": exc.message, **({"field": exc.field} if exc.field else {})}
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(StoreError)
    async def _store(_request: Request, exc: StoreError):
        return JSONResponse({"detail": str(exc), **({"field": exc.field} if exc.field else {})},
                            status_code=exc.status)

    @app.exception_handler(DataError)
    async def _data(_request: Request, exc: DataError):
        return JSONResponse({"detail": str(exc), "line": exc.line, "field": exc.field}, status_code=422)

    def page(request: Request, name: str, who: Principal | None, **ctx: Any) -> HTMLResponse:
        csrf = who.session.csrf_token if who and who.session else ""
        return templates.TemplateResponse(request, name, {"me": who.labeler if who else None, "csrf": csrf, **ctx})

    # ---- public -----------------------------------------------------------------------------------
    @app.get("/health")
    def health() -> dict:
        with db.read() as s:
            s.execute(select(1))
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/", error: str = "") -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        resp = page(request, "login.html", None, login_csrf=token, next=_safe_next(next), error=error)
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", max_age=3600)
        return resp

    @app.post("/login")
    def login(request: Request, name: Annotated[str, Form(max_length=200)],
              password: Annotated[str, Form(max_length=200)], csrf_token: Annotated[str, Form(max_length=100)] = "",
              next: Annotated[str, Form(max_length=500)] = "/") -> Response:
        # double-submit check: a cross-site form cannot read our cookie to copy it into the form
        if not auth.same(request.cookies.get(LOGIN_CSRF_COOKIE), csrf_token):
            return RedirectResponse("/login?error=expired", status_code=303)
        with db.write() as s:
            result = auth.login(s, name, password)
        if result is None:
            return RedirectResponse(f"/login?error=wrong&next={quote(_safe_next(next))}", status_code=303)
        raw, _sess = result
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(SESSION_COOKIE, raw, httponly=True, samesite="lax", max_age=auth.SESSION_DAYS * 86400,
                        secure=request.url.scheme == "https")
        resp.delete_cookie(LOGIN_CSRF_COOKIE)
        return resp

    # ---- pages ------------------------------------------------------------------------------------
    @app.post("/logout")
    def logout(request: Request, who: Who, csrf_token: Annotated[str, Form(max_length=100)] = "") -> Response:
        if who.session is not None and not auth.same(csrf_token, who.session.csrf_token):
            raise HTTPProblem(403, "missing or wrong CSRF token", "csrf_token")
        with db.write() as s:
            auth.logout(s, request.cookies.get(SESSION_COOKIE, ""))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request, who: Who) -> HTMLResponse:
        with db.read() as s:
            projects = list(s.scalars(select(Project).order_by(Project.name)))
            rows = [{"project": p, **assign.labeler_progress(s, p, who.labeler)} for p in projects]
        return page(request, "home.html", who, rows=rows)

    @app.get("/p/{name}", response_class=HTMLResponse)
    def label_page(request: Request, name: str, who: Who) -> HTMLResponse:
        with db.read() as s:
            project = get_project(s, name)
        return page(request, "label.html", who, project=project)

    @app.get("/p/{name}/guidelines", response_class=HTMLResponse)
    def guidelines_page(request: Request, name: str, who: Who) -> HTMLResponse:
        from markdown_it import MarkdownIt

        with db.read() as s:
            project = get_project(s, name)
        # html=False: raw HTML in the guidelines is shown as text, never run
        html = MarkdownIt("commonmark", {"html": False}).render(project.guidelines or "*No guidelines yet.*")
        return page(request, "guidelines.html", who, project=project, guidelines_html=html)

    @app.get("/lead/{name}", response_class=HTMLResponse)
    def lead_page(request: Request, name: str, who: Admin, method: str = "majority") -> HTMLResponse:
        from alignloop.feedback.stats import project_stats

        with db.read() as s:
            project = get_project(s, name)
            stats = project_stats(s, project, method=_method(method))
        return page(request, "lead.html", who, project=project, stats=stats, method=method)

    # ---- API: identity, projects ------------------------------------------------------------------
    @app.get("/api/me")
    def me(who: Who) -> dict:
        lab = who.labeler
        return {"name": lab.name, "role": lab.role, "kind": lab.kind,
                "csrf_token": who.session.csrf_token if who.session else None}

    @app.get("/api/projects")
    def list_projects(who: Who) -> list[dict]:
        with db.read() as s:
            return [_project_public(p) for p in s.scalars(select(Project).order_by(Project.name))]

    @app.post("/api/projects", status_code=201)
    def new_project(body: ProjectIn, who: Admin) -> dict:
        settings = {k: v for k, v in body.model_dump().items() if k in PROJECT_FIELDS and v is not None}
        with db.write() as s:
            p = create_project(s, body.name, guidelines=body.guidelines, content_warning=body.content_warning,
                               **settings)
            return _project_public(p)

    @app.get("/api/projects/{name}")
    def show_project(name: str, who: Who) -> dict:
        with db.read() as s:
            p = get_project(s, name)
            return {**_project_public(p), "guidelines": p.guidelines, "content_warning": p.content_warning,
                    "progress": assign.labeler_progress(s, p, who.labeler)}

    @app.patch("/api/projects/{name}")
    def patch_project(name: str, body: ProjectPatch, who: Admin) -> dict:
        with db.write() as s:
            return _project_public(update_project(s, get_project(s, name), **body.model_dump()))

    @app.put("/api/projects/{name}/guidelines")
    def put_guidelines(name: str, body: GuidelinesIn, who: Admin) -> dict:
        with db.write() as s:
            version = set_guidelines(s, get_project(s, name), body.text, body.content_warning)
        return {"guidelines_version": version}

    @app.post("/api/projects/{name}/import")
    async def import_into(name: str, request: Request, who: Admin, labeler: Optional[str] = None) -> dict:
        from alignloop.feedback.io import import_records

        text = (await request.body()).decode("utf-8", errors="replace")
        records = _parse_upload(text)
        fmt = "labelstudio" if records and all(isinstance(r, dict) and "data" in r for _, r in records) else "jsonl"
        from starlette.concurrency import run_in_threadpool

        def work() -> dict:
            with db.write() as s:  # one transaction: a bad line leaves nothing behind
                return import_records(s, get_project(s, name), records, source="upload", fmt=fmt, labeler=labeler)

        return await run_in_threadpool(work)

    @app.get("/api/projects/{name}/stats")
    def stats(name: str, who: Admin, method: str = "majority") -> dict:
        from alignloop.feedback.stats import project_stats

        with db.read() as s:
            return project_stats(s, get_project(s, name), method=_method(method))

    @app.get("/api/projects/{name}/export")
    def export(name: str, who: Admin, format: str = "trl", method: str = "majority",
               min_judgments: int = 1) -> Response:
        from alignloop.feedback.io import FORMATS, export_rows, record_export

        if format not in FORMATS:
            raise HTTPProblem(422, f"'{format}' is not one of {', '.join(FORMATS)}", "format")
        with db.write() as s:
            p = get_project(s, name)
            rows, used, summary = export_rows(s, p, format, _method(method), min_judgments)
            ex = record_export(s, p, format, used, path="(download)", n_rows=len(rows), summary=summary,
                               method=method if format in ("trl", "kto") else "")
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return PlainTextResponse(body, media_type="application/x-ndjson", headers={"X-Export-Id": str(ex.id)})

    @app.get("/api/projects/{name}/judgments")
    def project_judgments(name: str, who: Who) -> list[dict]:
        with db.read() as s:
            p = get_project(s, name)
            q = select(Judgment).join(Task, Task.id == Judgment.task_id).where(Task.project_id == p.id)
            if not who.is_admin:  # a labeler sees only their own judgments
                q = q.where(Judgment.labeler_id == who.labeler.id)
            return [_judgment_public(j) for j in s.scalars(q.order_by(Judgment.id))]

    # ---- API: labeling ----------------------------------------------------------------------------
    @app.get("/api/projects/{name}/next")
    def next_task(name: str, who: Who) -> dict:
        with db.write() as s:
            p = get_project(s, name)
            a = assign.next_assignment(s, p, who.labeler)
            view = _assignment_view(s, a, p) if a is not None else None
        with db.read() as s:  # counted after the commit, outside the write lock
            progress = assign.labeler_progress(s, get_project(s, name), who.labeler)
        return {"done": view is None, **(view or {}), "progress": progress}

    @app.get("/api/assignments/{assignment_id}")
    def show_assignment(assignment_id: int, who: Who) -> dict:
        with db.read() as s:
            a = _own_assignment(s, assignment_id, who)
            task = s.get(Task, a.task_id)
            return _assignment_view(s, a, s.get(Project, task.project_id))

    @app.post("/api/assignments/{assignment_id}/judgment")
    def submit(assignment_id: int, body: JudgmentIn, who: Who, response: Response,
               idempotency_key: Annotated[Optional[str], Header(max_length=100)] = None) -> dict:
        key = idempotency_key or body.idempotency_key
        with db.write() as s:
            a = _own_assignment(s, assignment_id, who)
            task = s.get(Task, a.task_id)
            choice = _canonical_choice(body.choice, task, a)
            j, created = add_judgment(
                s, task.id, who.labeler, choice, strength=body.strength, ranking=body.ranking,
                ratings=body.ratings, flags=body.flags, rewrite=body.rewrite, skip_reason=body.skip_reason,
                assignment=a, idempotency_key=key, duration_ms=body.duration_ms)
            out = {"judgment_id": j.id, "created": created, "skipped": j.skipped}
        # the transaction is committed here, before the response goes out
        response.status_code = 201 if created else 200
        return out

    @app.get("/api/me/judgments")
    def my_judgments(who: Who) -> list[dict]:
        with db.read() as s:
            q = select(Judgment).where(Judgment.labeler_id == who.labeler.id).order_by(Judgment.id)
            return [_judgment_public(j) for j in s.scalars(q)]

    # ---- API: users -------------------------------------------------------------------------------
    @app.get("/api/users")
    def users(who: Admin) -> list[dict]:
        with db.read() as s:
            return [{"name": u.name, "role": u.role, "kind": u.kind, "identity": u.identity, "active": u.active}
                    for u in s.scalars(select(Labeler).order_by(Labeler.name))]

    @app.post("/api/users", status_code=201)
    def add_user(body: UserIn, who: Admin) -> dict:
        password = body.password or auth.new_password()
        with db.write() as s:
            lab = create_labeler(s, body.name, role=body.role, kind=body.kind, identity=body.identity,
                                 password=password)
            token = auth.new_token(s, lab)
        return {"name": lab.name, "role": lab.role, "kind": lab.kind, "password": password, "token": token}

    return Limits(app)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and not request.url.path.startswith("/api/") and \
        "text/html" in request.headers.get("accept", "")


def _safe_next(target: str) -> str:
    # only local paths: an open redirect would let a phishing link bounce through the login page
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _method(method: str) -> str:
    from alignloop.feedback.consensus import METHODS

    if method not in METHODS:
        raise HTTPProblem(422, f"'{method}' is not one of {', '.join(METHODS)}", "method")
    return method


def _parse_upload(text: str) -> list[tuple[int, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return [(i + 1, r) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise HTTPProblem(422, f"line {exc.lineno}: not valid JSON ({exc.msg})", "body") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise HTTPProblem(422, f"line {n}: not valid JSON ({exc.msg})", "body") from None
    if not out:
        raise HTTPProblem(422, "no records in the request body", "body")
    return out


def _project_public(p: Project) -> dict:
    return {"name": p.name, "task_type": p.task_type, "criteria": p.criteria, "flags": p.flags, "scale": p.scale,
            "overlap": p.overlap, "gold_rate": p.gold_rate, "order": p.order, "lease_minutes": p.lease_minutes,
            "guidelines_version": p.guidelines_version, "has_content_warning": bool(p.content_warning)}


def _judgment_public(j: Judgment) -> dict:
    return {"id": j.id, "task_id": j.task_id, "choice": j.choice, "strength": j.strength, "ranking": j.ranking,
            "ratings": j.ratings, "flags": j.flags, "rewrite": j.rewrite, "skipped": j.skipped,
            "skip_reason": j.skip_reason, "guideline_version": j.guideline_version,
            "created_at": j.created_at.isoformat() + "Z"}


def _own_assignment(s: Session, assignment_id: int, who: Principal) -> Assignment:
    a = s.get(Assignment, assignment_id)
    if a is None or a.labeler_id != who.labeler.id:  # someone else's assignment looks exactly like none
        raise HTTPProblem(404, f"no assignment {assignment_id} for you", "assignment_id")
    if a.status == "expired":
        raise HTTPProblem(409, "this assignment expired; fetch the next task", "assignment_id")
    return a


def _canonical_choice(choice: Optional[str], task: Task, a: Assignment) -> Optional[str]:
    """Displayed A/B (first/second on screen) -> the task's canonical A/B."""
    if task.task_type != "pairwise" or choice not in ("A", "B"):
        return choice
    shown = a.display_order[0] if choice == "A" else a.display_order[1]
    return "A" if shown == task.completion_ids[0] else "B"


def _assignment_view(s: Session, a: Assignment, p: Project) -> dict:
    """What the labeler's page needs. Model names are left out on purpose (labelers must not know them)."""
    task = s.get(Task, a.task_id)
    prompt = s.get(Prompt, task.prompt_id)
    comps = {c.id: c for c in s.scalars(select(Completion).where(Completion.id.in_(task.completion_ids)))}
    letters = "ABCDEFGHIJKLMNOP"
    return {"assignment_id": a.id, "task_id": task.id, "task_type": task.task_type, "prompt": prompt.prompt,
            "context": prompt.context,
            "completions": [{"id": cid, "label": letters[i], "text": comps[cid].text}
                            for i, cid in enumerate(a.display_order)],
            "criteria": p.criteria, "flags": p.flags, "scale": p.scale,
            "guidelines_version": p.guidelines_version, "content_warning": p.content_warning,
            "started_at": a.created_at.isoformat() + "Z"}
