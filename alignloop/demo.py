"""Moved to ``alignloop.pipelines.demo``; this name keeps working (it is the same module object)."""

import sys

import alignloop.pipelines.demo as _moved

sys.modules[__name__] = _moved
