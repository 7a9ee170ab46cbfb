"""Alembic environment of the registry chain (own version table, own metadata: never touches feedback tables)."""

from alembic import context
from sqlalchemy import create_engine

from alignloop.registry.store import RegistryBase
from alignloop.registry.migrations import VERSION_TABLE

config = context.config
target_metadata = RegistryBase.metadata


def _include(obj, name, type_, reflected, compare_to):  # noqa: ANN001
    # autogenerate must only see the registry's tables, not the feedback studio's in the same database
    return not (type_ == "table" and reflected and compare_to is None)


def _migrate(connection) -> None:  # noqa: ANN001
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      version_table=VERSION_TABLE, include_object=_include)
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).begin() as conn:
        _migrate(conn)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run()
