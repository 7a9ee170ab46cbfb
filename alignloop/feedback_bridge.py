"""Moved to ``alignloop.serve.capture``; this name keeps working (it is the same module object)."""

import sys

import alignloop.serve.capture as _moved

sys.modules[__name__] = _moved
