"""Moved to ``alignloop.registry.commands``; this name keeps working (it is the same module object)."""

import sys

import alignloop.registry.commands as _moved

sys.modules[__name__] = _moved
