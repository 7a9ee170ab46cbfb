"""``alignloop eval``'s config (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from alignloop.core.config import StageConfig, existing_file, opt, positive
from alignloop.core.paths import REPO_DATA
from alignloop.data.context import CONTEXT_CHARS

FINANCEBENCH = REPO_DATA / "financebench" / "questions.jsonl"


HH_TEST = REPO_DATA / "hh-harmless" / "test.jsonl.gz"


Task = Literal["qa", "refusal", "winrate", "best_of_n", "reward", "kl"]


@dataclass
class EvalConfig(StageConfig):
    """Evaluate a model: QA scores (FinanceBench rules, llmware points), refusal rates, win rate, best-of-N."""

    command: ClassVar[tuple[str, ...]] = ("eval",)
    runner: ClassVar[str] = "alignloop.pipelines.evaluation:run"

    model: str = opt("smollm2-135m-instruct", "Model to evaluate (alias, folder, earlier --output, registered "
                     "model's name or id).")
    compare: Optional[str] = opt(None, "A second model (e.g. the base) evaluated on the same items, side by side.")
    db: Optional[str] = opt(None, "Registry database URL where --model / --compare names are looked up; default: "
                            "the SQLite file under the alignloop home.")
    tasks: list[str] = opt(["qa"], "What to evaluate, comma-separated: qa, refusal, winrate, best_of_n, reward, kl.")
    data: str = opt(str(FINANCEBENCH), "QA items with a gold 'answer' (question + context/evidence).")
    context_chars: int = opt(CONTEXT_CHARS, "FinanceBench evidence becomes the passages most relevant to the "
                             "question within this many characters (docs/data.md); 0 keeps all of it. A 'context' "
                             "column is used as given.")
    split: Literal["all", "train", "test"] = opt("all", "FinanceBench rows to use: all, or the fixed train/test "
                                                 "split of the demo (test = held-out questions).")
    harmful: str = opt(str(HH_TEST), "Harmful prompts for the refusal rate (HH pairs: their prompts).")
    harmless: str = opt(str(FINANCEBENCH), "Harmless prompts for the over-refusal rate.")
    output: str = opt("runs/eval", "Output folder: summary.json and a CSV of per-item results per task (an earlier "
                      "evaluation's files there are replaced).")
    reward_model: Optional[str] = opt(None, "Reward model folder (reward, best_of_n, reward accuracy on --pairs).")
    pairs: Optional[str] = opt(None, "Preference pairs for reward-model accuracy.")
    judge: Literal["reference", "local", "http", "reward"] = opt("reference", "Judge for the win rate.")
    judge_model: Optional[str] = opt(None, "Local judge model, or the HTTP judge's model name.")
    judge_base_url: Optional[str] = opt(None, "HTTP judge endpoint (OpenAI-compatible base URL).")
    num_samples: int = opt(4, "N for best-of-N.")
    max_new_tokens: int = opt(64, "Longest answer in tokens.")
    max_prompt_length: int = opt(512, "Prompts (question + context) longer than this are cut from the left.")
    temperature: float = opt(0.0, "Sampling temperature for answers (0: greedy); best-of-N uses max(0.7, this).")
    batch_size: int = opt(8, "Prompts answered together.")
    limit: Optional[int] = opt(None, "Evaluate only the first N items of each set.")
    seed: int = opt(0, "Sampling seed.")

    def check(self) -> list[str]:
        p = []
        if not self.output:
            p.append("output: an output folder is required (--output DIR)")  # only when set to ""
        bad = [t for t in self.tasks if t not in Task.__args__]  # type: ignore[attr-defined]
        if bad:
            p.append(f"tasks: unknown {', '.join(bad)} (choose from {', '.join(Task.__args__)})")  # type: ignore
        if "winrate" in self.tasks and not self.compare:
            p.append("winrate: needs --compare MODEL (the model to win against)")
        if any(t in self.tasks for t in ("best_of_n", "reward")) and not self.reward_model:
            p.append("best_of_n/reward: need --reward-model DIR")
        p += existing_file(self, "data")
        p += positive(self, "num_samples", "max_new_tokens", "max_prompt_length", "batch_size", "limit")
        p += positive(self, "context_chars", allow_zero=True)
        return p
