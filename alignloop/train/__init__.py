"""The trainers (sft, reward, dpo, ppo, grpo/rloo) and the engine they share.

``alignloop.train`` is also the library's entry point, ``alignloop.train("sft", model=..., data=...)``. Python
binds a package's name to the subpackage once one of its modules is imported, which would shadow the function;
so the package module itself is made callable with the same signature.
"""

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, stage: str, config: Any = None, **fields: Any) -> Any:
        from alignloop import run_stage

        return run_stage(stage, config, **fields)


sys.modules[__name__].__class__ = _CallableModule
