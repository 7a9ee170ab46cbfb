"""Moved to ``alignloop.serve.jobs``; this name keeps working (it is the same module object)."""

import sys

import alignloop.serve.jobs as _moved

sys.modules[__name__] = _moved
