"""Moved to ``alignloop.trainers.reward_sources``; this name keeps working (it is the same module object)."""

import sys

import alignloop.trainers.reward_sources as _moved

sys.modules[__name__] = _moved
