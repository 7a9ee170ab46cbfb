"""The old name of ``alignloop.trainers``, kept so that ``alignloop.train.dpo``, ``alignloop.train.reward.run`` and
the other dotted names in docs and user code keep working: each module here is an alias of the trainer module
(the same module object). New code imports ``alignloop.trainers``; nothing inside alignloop imports this package.

``alignloop.train`` is also the library's entry point, ``alignloop.train("sft", model=..., data=...)``. Python
binds a package's name to the subpackage once one of its modules is imported, which would shadow that function;
so this package module is itself callable with the same signature.
"""

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, stage: str, config: Any = None, **fields: Any) -> Any:
        from alignloop import run_stage

        return run_stage(stage, config, **fields)


sys.modules[__name__].__class__ = _CallableModule
