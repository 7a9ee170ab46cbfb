"""The config machinery every stage shares: typed dataclass fields filled from YAML and flags, validated once.

Each package keeps its stages' configs in its own ``config.py`` (``trainers/config.py``, ``serve/config.py``, ...);
the fields all stages that load a model share (``ModelOptions``) live here.

Every field is a flag of the same name (``max_steps`` is ``--max-steps``) and a YAML key (either spelling).
Flags override the file. ``validate`` collects *every* problem and raises once, before any work starts
(the litgpt habit), so a user fixes their config in one go.

This module imports only the standard library and PyYAML: ``alignloop --help`` must stay fast.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from alignloop.core.errors import AlignloopError
from alignloop.core.files import write_text


class ConfigError(AlignloopError, ValueError):
    """One or more invalid config values; the message lists all of them."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {source} ({len(self.problems)} problem{'s' * (len(self.problems) != 1)}):\n{lines}")


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A documented config field. ``meta`` may hold ``positional=True``, ``short="-o"``, ``repeat=True``."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# --------------------------------------------------------------------------------------------------
# Base: type checking, choices, YAML / flag merging
# --------------------------------------------------------------------------------------------------


@dataclass
class StageConfig:
    """Base of every stage config. Subclasses add fields with ``opt`` and may override ``check``."""

    #: the stage's command, e.g. ``("reward", "train")``; set on each subclass
    command: ClassVar[tuple[str, ...]] = ()
    #: ``"module:function"`` that runs the stage with the config
    runner: ClassVar[str] = ""

    # ---- hooks --------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Stage-specific problems (cross-field rules). Return messages; never raise."""
        return []

    # ---- machinery ----------------------------------------------------------------------------
    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    def validate(self) -> "StageConfig":
        problems: list[str] = []
        hints = self.field_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problems += _check_type(f.name, value, hints[f.name])
        if not problems:  # cross-field rules assume the types are right
            problems += self.check()
        if problems:
            raise ConfigError(problems, source=f"{' '.join(self.command) or type(self).__name__} config")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "StageConfig":
        """Build from a mapping (YAML keys or flag names), converting strings where the type says so."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        hints = cls.field_types()
        kwargs: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in names:
                close = [n for n in names if n.startswith(name[:4])]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(f"{source}: unknown key '{key}'{hint}")
                continue
            try:
                kwargs[name] = _coerce(value, hints[name])
            except (TypeError, ValueError) as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ConfigError(problems, source=source)
        cfg = cls(**kwargs)
        return cfg

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> "StageConfig":
        """Read a YAML file, apply ``overrides`` (flags), validate."""
        import yaml

        p = Path(path)
        if not p.exists():
            raise ConfigError([f"config file not found: {p}"])
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark else str(p)
            raise ConfigError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
        if not isinstance(data, dict):
            raise ConfigError([f"{p}: expected a mapping of keys to values at the top level"])
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        data.update(overrides or {})
        return cls.from_dict(data, source=str(p)).validate()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, folder: str | os.PathLike, name: str = "config.yaml") -> Path:
        """Write the resolved config beside a checkpoint (atomically)."""
        return write_text(Path(folder) / name, self.to_yaml())

    def replace(self, **changes: Any) -> "StageConfig":
        return dataclasses.replace(self, **changes)


def _origin(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    return typing.get_origin(tp), typing.get_args(tp)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin, args = _origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return False, tp


def _coerce(value: Any, tp: Any) -> Any:
    """Convert YAML/flag values to the field type where it is unambiguous (strings from the command line)."""
    optional, inner = _is_optional(tp)
    if value is None:
        return None
    if isinstance(value, str) and optional and value.lower() in ("none", "null"):
        return None
    origin, args = _origin(inner)
    if inner is bool and isinstance(value, str):
        low = value.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"expected true or false, got '{value}'")
    if inner is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got '{value}'") from None
    if inner is float and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got '{value}'") from None
    if origin is list and isinstance(value, str):
        value = [v for v in value.split(",") if v] if "," in value else [value]
    if origin is list and isinstance(value, list) and args and args[0] in (int, float):
        return [_coerce(v, args[0]) for v in value]  # list[int] flags (e.g. --stages 100 200) arrive as strings
    if origin is list and isinstance(value, list) and args and args[0] is str:
        # a YAML list of numbers for a list of strings (the demo's `stages: [0, 0.5, all]`)
        return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
    return value


def _check_type(name: str, value: Any, tp: Any) -> list[str]:
    optional, inner = _is_optional(tp)
    if value is None:
        return [] if optional else [f"{name}: a value is required"]
    origin, args = _origin(inner)
    if origin is Literal:
        if value not in args:
            return [f"{name}: '{value}' is not one of {', '.join(map(str, args))}"]
        return []
    if inner is bool:
        return [] if isinstance(value, bool) else [f"{name}: expected true or false, got {value!r}"]
    if inner is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{name}: expected an integer, got {value!r}"]
    if inner is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{name}: expected a number, got {value!r}"]
    if inner is str:
        return [] if isinstance(value, str) else [f"{name}: expected a string, got {value!r}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{name}: expected a list, got {value!r}"]
        return [p for v in value for p in _check_type(name, v, args[0] if args else Any)]
    if origin is dict:
        return [] if isinstance(value, dict) else [f"{name}: expected a mapping, got {value!r}"]
    return []


def positive(cfg: Any, *names: str, allow_zero: bool = False) -> list[str]:
    """Problems for fields that must be > 0 (or >= 0)."""
    out = []
    for n in names:
        v = getattr(cfg, n)
        if v is None:
            continue
        if v < 0 or (v == 0 and not allow_zero):
            out.append(f"{n}: must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return out


def in_range(cfg: Any, name: str, lo: float, hi: float) -> list[str]:
    v = getattr(cfg, name)
    if v is not None and not (lo <= v <= hi):
        return [f"{name}: must be between {lo} and {hi}, got {v}"]
    return []


def existing_file(cfg: Any, *names: str) -> list[str]:
    out = []
    for n in names:
        v = getattr(cfg, n)
        if v and not Path(v).exists():
            out.append(f"{n}: file not found: {v}")
    return out


def check_db_url(url: Optional[str], name: str = "db") -> list[str]:
    """A database URL must be SQLite or PostgreSQL (the two the studio and the registry are tested on)."""
    if url and not (url.startswith("sqlite:") or url.startswith("postgresql")):
        return [f"{name}: '{url}' is not a sqlite:/// or postgresql+psycopg:// URL"]
    return []


# --------------------------------------------------------------------------------------------------
# Shared field groups (composed into stages by dataclass inheritance of *fields* only)
# --------------------------------------------------------------------------------------------------

Precision = Literal["auto", "bf16", "fp32"]


@dataclass
class ModelOptions(StageConfig):
    model: str = opt("smollm2-135m-instruct", "Model to start from: an alias (smollm2-135m-instruct, tiny), a local "
                     "Hugging Face folder, an earlier --output, a .gguf file, or a hub id already in the local cache.")
    lora: bool = opt(False, "Train a LoRA adapter instead of all weights.")
    lora_r: int = opt(16, "LoRA rank.")
    lora_alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input (0 keeps runs reproducible).")
    lora_targets: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                  "Module names that get LoRA adapters.")
    merge_lora: bool = opt(True, "Merge the LoRA adapter into the weights when saving the final model, so plain "
                           "transformers loads it; false saves the adapter alone (peft folder).")
    precision: Precision = opt("auto", "Compute precision: bf16 autocast with fp32 master weights, or fp32; auto "
                               "picks bf16 where the CPU/GPU supports it fast.")
    chat_template: bool = opt(True, "Apply the tokenizer's chat template to conversational prompts.")

    def check(self) -> list[str]:
        return positive(self, "lora_r", "lora_alpha") + in_range(self, "lora_dropout", 0.0, 1.0)
