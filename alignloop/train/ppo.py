"""Moved to ``alignloop.trainers.ppo``; this name keeps working (it is the same module object)."""

import sys

import alignloop.trainers.ppo as _moved

sys.modules[__name__] = _moved
