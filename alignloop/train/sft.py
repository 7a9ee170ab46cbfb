"""Moved to ``alignloop.trainers.sft``; this name keeps working (it is the same module object)."""

import sys

import alignloop.trainers.sft as _moved

sys.modules[__name__] = _moved
