"""The studio tests' fixtures (SQLite and PostgreSQL databases, artifacts), shared with tests/feedback_fixtures.py."""

from feedback_fixtures import artifacts, db, db_url  # noqa: F401
