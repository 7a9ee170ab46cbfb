"""``alignloop judge``'s config (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from alignloop.core.config import StageConfig, existing_file, opt, positive


@dataclass
class JudgeConfig(StageConfig):
    """Label preferences with an AI judge (local model, HTTP endpoint, reward model, or gold answers)."""

    command: ClassVar[tuple[str, ...]] = ("judge",)
    runner: ClassVar[str] = "alignloop.judges.commands:run"

    data: Optional[str] = opt(None, "Rows with prompt + completions (and 'answer' for the reference judge).")
    output: Optional[str] = opt(None, "Preferences JSONL (decisive verdicts); judgments.jsonl is written beside it.")
    judge: Literal["local", "http", "reward", "reference"] = opt("local", "Which judge.")
    model: Optional[str] = opt(None, "local: the judge model (default smollm2-135m-instruct); http: the model name; "
                               "reward: the reward-model folder.")
    base_url: Optional[str] = opt(None, "http: the OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = opt("OPENAI_API_KEY", "http: the environment variable that holds the API key.")
    principles: Optional[str] = opt(None, "The judge's constitution: text, or a path to a text file; default HHH "
                                    "(helpful, honest, harmless).")
    timeout: float = opt(60.0, "http: seconds per request.")
    retries: int = opt(4, "http: retries on timeouts, 429 and 5xx (exponential backoff).")
    concurrency: int = opt(4, "http: requests in flight at once.")
    cache_dir: Optional[str] = opt(None, "http: response cache (default: the alignloop home's cache/judge).")
    margin: float = opt(0.0, "reward: score differences within this margin are ties.")
    db: Optional[str] = opt(None, "Feedback-studio database URL: store the verdicts as 'ai' judgments.")
    project: Optional[str] = opt(None, "Feedback-studio project whose pairwise tasks to judge (needs --db).")
    limit: Optional[int] = opt(None, "Judge only the first N rows / tasks.")

    def check(self) -> list[str]:
        p = []
        if not self.data and not self.project:
            p.append("data: give rows to judge (--data FILE) or a feedback project (--db URL --project NAME)")
        if self.data and not self.output:
            p.append("output: a preferences file is required with --data (--output FILE)")
        if self.project and not self.db:
            p.append("db: --project needs --db URL")
        if self.judge == "http" and not (self.base_url and self.model):
            p.append("base_url/model: the http judge needs --base-url and --model")
        if self.judge == "reward" and not self.model:
            p.append("model: the reward judge needs --model REWARD_DIR")
        p += existing_file(self, "data")
        p += positive(self, "timeout", "concurrency", "limit") + positive(self, "retries", "margin", allow_zero=True)
        return p
