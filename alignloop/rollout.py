"""Moved to ``alignloop.generation.rollout``; this name keeps working (it is the same module object)."""

import sys

import alignloop.generation.rollout as _moved

sys.modules[__name__] = _moved
