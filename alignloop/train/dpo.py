"""Moved to ``alignloop.trainers.dpo``; this name keeps working (it is the same module object)."""

import sys

import alignloop.trainers.dpo as _moved

sys.modules[__name__] = _moved
