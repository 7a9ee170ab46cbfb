"""Moved to ``alignloop.core.config``; this name keeps working (it is the same module object)."""

import sys

import alignloop.core.config as _moved

sys.modules[__name__] = _moved
