"""Moved to ``alignloop.trainers.engine``; this name keeps working (it is the same module object)."""

import sys

import alignloop.trainers.engine as _moved

sys.modules[__name__] = _moved
