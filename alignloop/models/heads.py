"""Moved to ``alignloop.models.reward_model``; this name keeps working (it is the same module object)."""

import sys

import alignloop.models.reward_model as _moved

sys.modules[__name__] = _moved
