"""Alembic environment of the registry chain (own version table, own metadata: never touches feedback tables)."""

from alembic import context

from alignloop.core.db import run_alembic_env
from alignloop.registry.migrations import VERSION_TABLE
from alignloop.registry.tables import RegistryBase

run_alembic_env(context, RegistryBase.metadata, version_table=VERSION_TABLE)
