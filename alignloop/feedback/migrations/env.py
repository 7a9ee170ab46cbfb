"""Alembic environment: uses the connection handed in by ``migrations.upgrade`` or, from the alembic command
line, ``sqlalchemy.url`` (``alembic -c alignloop/feedback/alembic.ini -x db=URL upgrade head``)."""

from alembic import context
from sqlalchemy import create_engine

from alignloop.feedback.store import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        _migrate(conn)


def _include(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
    # other parts of alignloop (the model registry) keep their own tables and migration chain in the same
    # database; autogenerate must not offer to drop tables it does not own
    return not (type_ == "table" and reflected and compare_to is None)


def _migrate(connection) -> None:  # noqa: ANN001
    # batch mode lets later revisions ALTER tables on SQLite (which cannot drop or change columns in place)
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True, include_object=_include)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run()
