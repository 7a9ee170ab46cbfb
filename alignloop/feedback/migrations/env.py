"""Alembic environment: uses the connection handed in by ``migrations.upgrade`` or, from the alembic command
line, ``sqlalchemy.url`` (``alembic -c alignloop/feedback/alembic.ini -x db=URL upgrade head``)."""

from alembic import context

from alignloop.core.db import run_alembic_env
from alignloop.feedback.models import Base

run_alembic_env(context, Base.metadata, compare_type=True)
