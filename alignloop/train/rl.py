"""Moved to ``alignloop.trainers.rl_common``; this name keeps working (it is the same module object)."""

import sys

import alignloop.trainers.rl_common as _moved

sys.modules[__name__] = _moved
