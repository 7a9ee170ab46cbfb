"""Moved to ``alignloop.trainers.grpo``; this name keeps working (it is the same module object)."""

import sys

import alignloop.trainers.grpo as _moved

sys.modules[__name__] = _moved
