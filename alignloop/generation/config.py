"""``alignloop generate``'s config (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from alignloop.core.config import ModelOptions, existing_file, in_range, opt, positive


@dataclass
class GenerateConfig(ModelOptions):
    """Sample K completions per prompt."""

    command: ClassVar[tuple[str, ...]] = ("generate",)
    runner: ClassVar[str] = "alignloop.generation.commands:run_generate"

    prompts: str = opt("", "Prompts file (any supported format with a prompt, messages or question column).")
    output: str = opt("", "Output JSONL: prompt, completions, model and sampling parameters per line.")
    num_completions: int = opt(2, "Completions per prompt (K).")
    max_new_tokens: int = opt(128, "Longest answer in tokens.")
    temperature: float = opt(0.8, "Sampling temperature (0: greedy).")
    top_p: float = opt(1.0, "Nucleus sampling threshold.")
    top_k: int = opt(0, "Keep only the k most likely tokens (0: off).")
    batch_size: int = opt(16, "Sequences sampled together.")
    max_prompt_length: int = opt(1024, "Prompts longer than this are cut from the left.")
    seed: int = opt(0, "Sampling seed.")
    limit: Optional[int] = opt(None, "Use only the first N prompts.")

    def check(self) -> list[str]:
        p = super().check()
        if not self.prompts:
            p.append("prompts: a prompts file is required (--prompts FILE)")
        if not self.output:
            p.append("output: an output file is required (--output FILE)")
        p += existing_file(self, "prompts")
        p += positive(self, "num_completions", "max_new_tokens", "batch_size", "max_prompt_length", "limit")
        p += positive(self, "temperature", "top_k", allow_zero=True)
        p += in_range(self, "top_p", 0.0, 1.0)
        return p
