"""Moved to ``alignloop.pipelines.loop``; this name keeps working (it is the same module object)."""

import sys

import alignloop.pipelines.loop as _moved

sys.modules[__name__] = _moved
