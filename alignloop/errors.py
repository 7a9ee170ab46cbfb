"""Moved to ``alignloop.core.errors``; this name keeps working (it is the same module object)."""

import sys

import alignloop.core.errors as _moved

sys.modules[__name__] = _moved
