"""Moved to ``alignloop.trainers.reward``; this name keeps working (it is the same module object)."""

import sys

import alignloop.trainers.reward as _moved

sys.modules[__name__] = _moved
