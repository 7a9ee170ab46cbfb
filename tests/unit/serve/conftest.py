"""The serve tests' fixtures: the tiny model behind a batcher, shared with tests/serve_fixtures.py."""

from serve_fixtures import tiny_pool  # noqa: F401
