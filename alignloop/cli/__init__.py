"""The ``alignloop`` command: parse -> validate -> record -> run. Nothing in the library imports this package."""

from alignloop.cli.main import build_parser, main, parse, top_help  # noqa: F401
from alignloop.pipelines.stages import run  # noqa: F401  (the CLI runs stages through the one owner)
