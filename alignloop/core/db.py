"""The one database handle: an engine from a URL, read and write sessions, and the Alembic runner.

The feedback studio and the model registry keep their tables in one database (default: ``alignloop.db`` under
the alignloop home) and both open it through ``Database``, so both get the same guarantees:

- SQLite: WAL (readers never wait for the writer), ``synchronous=FULL`` (a commit survives a power loss),
  foreign keys enforced, a 30 s busy timeout for other processes, and ``BEGIN IMMEDIATE`` for writers; the
  writing threads of one handle queue on a lock.
- PostgreSQL (``postgresql+psycopg://``): a pooled engine that checks a connection before use when it sat idle
  for a while (``PING_AFTER_IDLE``); no lock, the server's row locks and the unique constraints do that work.
  ``lookup()`` runs a single read statement without a transaction (no BEGIN and COMMIT round trips).

Each package keeps its own tables and its own Alembic chain (``upgrade`` runs one on a handle's engine, and
``run_alembic_env`` is the body of each chain's ``env.py``). ``core`` imports no torch and nothing outside core.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from alignloop.core.errors import AlignloopError
from alignloop.core.paths import alignloop_home

#: constraint names for ``MetaData(naming_convention=...)``: later migrations can drop or alter a constraint only
#: by its name (SQLite batch mode needs them)
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}


class DatabaseError(AlignloopError):
    """The database could not be read or written (unreachable, locked too long, not a database, wrong schema).
    The message names the database; the driver's error is chained as ``__cause__``."""


def utcnow() -> dt.datetime:
    # naive UTC everywhere: SQLite drops time zones, and mixing aware/naive values breaks comparisons
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def default_db_url() -> str:
    """The database the studio and the registry share unless ``--db`` says otherwise."""
    home = alignloop_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'alignloop.db'}"


def run(s: Session, statement: Any, params: dict | None = None) -> Any:
    """Execute a plain statement (columns, not entities: its rows are tuples) on the session's connection, in its
    transaction. ``Session.execute`` sends a statement built from mapped classes through the ORM's compile step,
    which doubled the Python cost of a look-up (266 against 125 µs, an update 366 against 149, PostgreSQL); the
    hot paths of the studio run theirs here. Pending ORM changes are flushed first, as ``Session.execute``
    would (autoflush)."""
    if s.autoflush:
        s.flush()
    return s.connection().execute(statement, params or {})


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{path}"


def display_url(url: Any) -> str:
    """A database URL fit to print or log: its password replaced by ``***`` (the text as given when unparsable)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy knows: show nothing of it that could be a secret
        return "(a database URL SQLAlchemy cannot parse)"


def split_password(url: str) -> tuple[str, str | None]:
    """``(the URL without its password, the password)``: for a file others may read (a job's config) while the
    password travels apart (``$PGPASSWORD``, which libpq reads when the URL has none). ``(url, None)`` when it has
    no password or is not a URL SQLAlchemy can parse."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: nothing to split
        return url, None
    if parsed.password is None:
        return url, None
    bare = URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database,
                      parsed.query)  # (URL.set(password=None) keeps the password)
    return bare.render_as_string(hide_password=False), str(parsed.password)


def make_parent_folder(url: str) -> None:
    """Create the folder of a SQLite file (SQLite creates the file, not its folder)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_setup(engine: Engine) -> None:
    """WAL for concurrent readers, FULL sync so a commit survives power loss, and BEGIN IMMEDIATE for writers:
    a deferred transaction that later writes fails at once (SQLITE_BUSY_SNAPSHOT) instead of waiting."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own handling breaks savepoints)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        options = conn.get_execution_options()
        if not options.get("lookup"):  # (a lone statement runs in its own implicit transaction)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("writer") else "BEGIN")


#: seconds a pooled PostgreSQL connection may sit unused before its next check-out checks it with a round trip.
#: (``pool_pre_ping`` checked every check-out: a round trip per transaction, two per labeling request.) A
#: connection used within this time is taken as alive; when the server went away meanwhile, the first statement
#: fails, SQLAlchemy sees the disconnect and drops the pool's connections, and the next request gets new ones.
PING_AFTER_IDLE = 10.0

#: PostgreSQL connections a process keeps open. The studio's server works on as many requests at once as it has
#: handler threads (``label serve --threads``, the same number by default), a transaction on a connection each.
#: It kept 20: with 50 labelers at once, dozens of transactions then ran side by side on 2 cores, each slower for
#: the others (benchmarks/README.md, "Threads and connections").
DEFAULT_CONNECTIONS = 4
#: connections opened (and closed again) beyond those when all are in use. A request holds its connection a little
#: past its handler thread (FastAPI closes a request's session in a hop of its own, after the handler), so a burst
#: of requests holds more connections than there are threads: with 4 + 4, 24 requests at once to /health waited
#: the pool's 30 s and failed (tests/integration/feedback/test_workers.py). 4 + 64 is what the 20 + 40 of before
#: allowed, and under PostgreSQL's default max_connections (100) for one process.
OVERFLOW_CONNECTIONS = 64


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, only for connections idle longer than ``PING_AFTER_IDLE`` (a dead one is replaced)."""

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_conn, record):  # noqa: ANN001
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn, record):  # noqa: ANN001
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy):  # noqa: ANN001
        if time.monotonic() - record.info.get("idle_since", 0.0) <= PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
            dbapi_conn.rollback()  # (the ping opened a transaction on a non-autocommit connection)
        except Exception as exc:
            if isinstance(exc, engine.dialect.loaded_dbapi.Error) and engine.dialect.is_disconnect(exc, dbapi_conn,
                                                                                                  None):
                raise DisconnectionError(str(exc)) from exc  # the pool connects anew and tries again
            raise


class Database:
    """An engine plus ``read()`` / ``write()`` sessions; ``write()`` commits on success, rolls back on error.

    A driver error in a session (other than a unique or foreign-key violation, which callers handle) comes out
    as ``DatabaseError`` naming the database, so the CLI prints a message instead of a traceback."""

    def __init__(self, url: str, connections: int = DEFAULT_CONNECTIONS):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=connections, max_overflow=OVERFLOW_CONNECTIONS)
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_setup(self.engine)
        else:
            _ping_when_idle(self.engine)
        self._write_lock: contextlib.AbstractContextManager = threading.Lock() if self.is_sqlite else \
            contextlib.nullcontext()
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self.engine.execution_options(writer=True), expire_on_commit=False)
        # one statement needs no transaction: on PostgreSQL an autocommit connection saves BEGIN and COMMIT, two of
        # the three round trips of a lone look-up; on SQLite the statement runs in its own implicit transaction
        self._lookup = sessionmaker(self.engine.execution_options(
            **({"lookup": True} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"})), expire_on_commit=False)

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        # SQLite has one writer at a time. Threads of this process queue on a lock (woken at once) rather
        # than in SQLite's busy handler, which sleeps in growing steps and wrecks latency under load;
        # busy_timeout still covers other processes.
        with self._errors(), self._write_lock, self._writer() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._errors(), self._reader() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def lookup(self) -> Iterator[Session]:
        """A session for one read statement (the sign-in check of every request): without a transaction on
        PostgreSQL, so several statements here do not see one snapshot; use ``read()`` for those."""
        with self._errors(), self._lookup() as s, s.begin():
            yield s

    def has_tables(self, *names: str) -> bool:
        """Whether every one of these tables exists (another package's tables may not be there yet)."""
        with self._errors(), self.engine.connect() as conn:
            found = inspect(conn)
            return all(found.has_table(n) for n in names)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError:
            raise
        except DBAPIError as exc:
            where = display_url(self.engine.url)
            raise DatabaseError(f"database {where}: {exc.__class__.__name__}: {exc.orig}") from exc


# --------------------------------------------------------------------------------------------------
# Alembic: each package's chain, run on a handle's engine
# --------------------------------------------------------------------------------------------------


def alembic_config(script_location: Path, url: str | None = None) -> Any:
    """An Alembic config for the chain in ``script_location`` (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, script_location: Path, revision: str = "head") -> None:
    """Bring the chain in ``script_location`` to ``revision`` on ``engine`` (a no-op when already there)."""
    from alembic import command

    cfg = alembic_config(script_location)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine, version_table: str = "alembic_version") -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": version_table}).get_current_revision()


def _only_own_tables(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
    # the studio and the registry keep their own tables and chains in one database; autogenerate must not
    # offer to drop the tables of the other chain
    return not (type_ == "table" and reflected and compare_to is None)


def run_alembic_env(context: Any, target_metadata: Any, **configure: Any) -> None:
    """The body of a chain's ``env.py``: migrate the connection handed in by ``upgrade`` or, from the alembic
    command line, the database named by ``-x db=URL`` or ``sqlalchemy.url``.

    Batch mode lets revisions ALTER tables on SQLite (which cannot drop or change columns in place)."""
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; run against a database")

    def migrate(connection) -> None:  # noqa: ANN001
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          include_object=_only_own_tables, **configure)
        with context.begin_transaction():
            context.run_migrations()

    connection = context.config.attributes.get("connection")
    if connection is not None:
        migrate(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db") or context.config.get_main_option("sqlalchemy.url")
    with create_engine(url).begin() as conn:
        migrate(conn)
