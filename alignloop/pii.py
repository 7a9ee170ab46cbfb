"""Moved to ``alignloop.serve.pii``; this name keeps working (it is the same module object)."""

import sys

import alignloop.serve.pii as _moved

sys.modules[__name__] = _moved
