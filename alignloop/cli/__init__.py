"""The ``alignloop`` command: parse -> validate -> record -> run. Nothing in the library imports this package."""

from alignloop.cli.main import build_parser, main, parse, run, top_help  # noqa: F401
