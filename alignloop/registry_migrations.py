"""Moved to ``alignloop.registry.migrations``; this name keeps working (it is the same module object)."""

import sys

import alignloop.registry.migrations as _moved

sys.modules[__name__] = _moved
