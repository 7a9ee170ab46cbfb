"""Moved to ``alignloop.cli.launch``; this name keeps working (it is the same module object)."""

import sys

import alignloop.cli.launch as _moved

sys.modules[__name__] = _moved
