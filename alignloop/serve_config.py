"""Moved to ``alignloop.serve.config``; this name keeps working (it is the same module object)."""

import sys

import alignloop.serve.config as _moved

sys.modules[__name__] = _moved
