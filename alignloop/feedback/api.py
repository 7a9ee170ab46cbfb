"""The studio's web app: server-rendered pages, a small static front end and a JSON API.

Access: every route needs a signed-in user except ``/login``, ``/health`` and ``/static`` (CSS/JS, no data).
Browsers sign in with a password and get a session cookie; every state-changing request made with that
cookie must carry the session's CSRF token (``X-CSRF-Token`` header or ``csrf_token`` form field). Scripts
use ``Authorization: Bearer <token>`` instead (no cookie, so no CSRF; tokens expire and are issued only on
request). Labelers reach only the projects they are members of, and there only their own assignments and
judgments; a project's lead manages it; admins reach everything (``alignloop.feedback.access``). Requests that
change something are POST/PUT/PATCH/DELETE, never GET.

In this HTTP API, a pairwise choice ``A``/``B`` means the completion shown first/second to that labeler
(left/right); the server maps it to the task's canonical order with the assignment's stored display order.

The routes live in ``web/``, one router per resource; ``create_app`` puts them together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from urllib.parse import quote

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import DataError as RefusedValue

from alignloop.core.db import DatabaseError
from alignloop.core.errors import DataError
from alignloop.feedback.config import DEFAULT_THREADS
from alignloop.feedback.errors import StoreError
from alignloop.feedback.models import Database
from alignloop.feedback.web import assignments, exports, judgments, lead, manage, pages, projects, users
from alignloop.feedback.web.deps import (  # noqa: F401  (the names this module had before web/)
    SESSION_COOKIE,
    HTTPProblem,
    Principal,
    parse_proxies,
    principal,
    require_admin,
)
from alignloop.feedback.web.middleware import CSP, MAX_BODY, MAX_IMPORT_BODY, Limits  # noqa: F401
from alignloop.feedback.web.schemas import GuidelinesIn, JudgmentIn, ProjectIn, ProjectPatch, UserIn  # noqa: F401
from alignloop.feedback.web.users import LOGIN_CSRF_COOKIE  # noqa: F401
from alignloop.feedback.web.views import render

WEB = Path(__file__).resolve().parent / "web"
LOG = logging.getLogger("alignloop.feedback")
ROUTERS = (pages.router, manage.router, users.router, projects.router, assignments.router, judgments.router,
           exports.router, lead.router)


def create_app(db: Database | str, trusted_proxies: tuple[str, ...] | list[str] = (),
               threads: int = DEFAULT_THREADS) -> FastAPI:
    """The studio app on ``db``. ``trusted_proxies``: addresses or networks of reverse proxies whose
    X-Forwarded-For is believed (for the sign-in throttle and the audit log); from anyone else it is ignored.
    ``threads``: requests the process works on at once once served (its handler threads; a ``db`` given as a URL
    gets as many database connections)."""
    db = Database(db, connections=threads) if isinstance(db, str) else db
    app = FastAPI(title="alignloop feedback studio", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_lifespan(threads))
    app.state.db = db
    app.state.trusted_proxies = parse_proxies(list(trusted_proxies))
    app.state.templates = Jinja2Templates(directory=str(WEB / "templates"))
    app.state.templates.env.filters["seg"] = manage.seg
    app.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")
    app.add_exception_handler(HTTPProblem, _problem)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(DatabaseError, _database_error)
    for router in ROUTERS:
        app.include_router(router)
    return Limits(app)  # type: ignore[return-value]


#: the environment ``alignloop label serve --workers N`` sets for its server processes (``app_from_environment``)
DB_ENV, PROXIES_ENV, THREADS_ENV = "ALIGNLOOP_STUDIO_DB", "ALIGNLOOP_STUDIO_TRUSTED_PROXIES", "ALIGNLOOP_STUDIO_THREADS"


def app_from_environment() -> FastAPI:
    """The studio app of one of several server processes (uvicorn's factory): the database URL, the trusted
    proxies (a JSON list) and the handler threads from the environment that ``label serve --workers`` set."""
    return create_app(os.environ[DB_ENV], trusted_proxies=json.loads(os.environ.get(PROXIES_ENV) or "[]"),
                      threads=int(os.environ.get(THREADS_ENV) or DEFAULT_THREADS))


def _lifespan(threads: int):  # noqa: ANN202
    """The app's lifespan: its handlers (plain functions: Starlette runs them in AnyIO's thread pool) run at most
    ``threads`` at a time, not AnyIO's default 40. On 2 cores, 40 threads that all wanted the GIL and a database
    connection cost more CPU per request than they overlapped (benchmarks/README.md, "Threads and connections");
    a request over the limit waits for a thread, as it would for a connection. Then the process warms up
    (``warm_up``) before it takes its first request."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        await warm_up(app, threads)
        yield

    return lifespan


async def warm_up(app: FastAPI, threads: int) -> None:
    """What a process's first labeling requests would pay, paid before it listens: the round's database reads on
    ``threads`` connections (``web.assignments.warm_up``: compiled statements, PostgreSQL's table descriptions per
    connection, a full pool), and one unsigned request to each of the two labeling routes (FastAPI builds a
    router's routes on its first request; the answer is a 401 that changes nothing). A freshly started server
    under 50 judgments a second had next-task p99s of 330 ms against 36 warm (benchmarks/README.md). Best effort:
    a server that cannot warm up (its database not there yet) still starts, and says why."""
    try:
        await anyio.to_thread.run_sync(assignments.warm_up, app.state.db, threads)
        for path in ("/api/projects/-/next", "/api/assignments/0/judgment"):
            await _unsigned_request(app, "POST", path)
    except Exception as exc:  # noqa: BLE001  (see the docstring: warming up is never a reason not to serve)
        LOG.warning("warm-up skipped: %s: %s", type(exc).__name__, exc)


async def _unsigned_request(app: FastAPI, method: str, path: str) -> None:
    """One request through the app in this process, with a bearer token that matches nothing; the answer is
    dropped."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"warm-up"), (b"authorization", b"Bearer warm-up"),
                         (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": {}}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(_message: dict) -> None:
        return None

    await app(scope, receive, send)


async def _problem(request: Request, exc: HTTPProblem):
    if _wants_html(request):
        return _page_problem(request, exc.status, exc.message)
    body = {"detail": exc.message, **({"field": exc.field} if exc.field else {})}
    return JSONResponse(body, status_code=exc.status)


async def _store_error(request: Request, exc: StoreError):
    if _wants_html(request):
        return _page_problem(request, exc.status, str(exc))
    return JSONResponse({"detail": str(exc), **({"field": exc.field} if exc.field else {})}, status_code=exc.status)


TITLES = {401: "Sign in first", 403: "Not allowed", 404: "Not found", 409: "Not possible now", 422: "Not valid"}


def _page_problem(request: Request, status: int, message: str):
    """A browser's page or form gets a page, not JSON: the sign-in page for 401 (back here afterwards, for a
    page), else the API's message with the same status."""
    if status == 401:
        target = f"/login?next={quote(request.url.path)}" if request.method == "GET" else "/login"
        return RedirectResponse(target, status_code=303)
    return render(request, "error.html", None, status_code=status, status=status,
                  title=TITLES.get(status, "Something went wrong"), message=message)


async def _data_error(_request: Request, exc: DataError):
    return JSONResponse({"detail": str(exc), "line": exc.line, "field": exc.field}, status_code=422)


async def _database_error(_request: Request, exc: DatabaseError):
    # a value the database refuses (PostgreSQL: text with a NUL character, a number out of range) is bad input;
    # the request's checks catch the known cases first, this is the net under the rest. Anything else stays a 500.
    if isinstance(exc.__cause__, RefusedValue):
        return JSONResponse({"detail": "the database cannot store a value of this request (text with a NUL "
                                       "character, or a number out of range); nothing was changed"}, status_code=422)
    raise exc


def _wants_html(request: Request) -> bool:
    """A browser asking for a page or sending a page's form (never the JSON API)."""
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")
