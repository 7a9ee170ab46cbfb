"""AI judges: ``judge(prompt, completions) -> Verdict`` from a local model, an HTTP endpoint, a reward model, or a
gold answer. See :mod:`alignloop.judges.base`."""

from alignloop.judges.base import HHH_PRINCIPLES, Judge, Verdict  # noqa: F401
