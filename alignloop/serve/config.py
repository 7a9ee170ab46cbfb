"""``alignloop serve``: its config (kept apart from the app so ``--help`` does not import torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from alignloop.core.config import StageConfig, check_db_url, opt, positive

API_KEYS_ENV = "ALIGNLOOP_API_KEYS"


@dataclass
class ServeConfig(StageConfig):
    """Serve a model over an OpenAI-compatible HTTP API with request batching, user-feedback capture into the
    feedback store, and training jobs (DB-backed queue, one worker process per job)."""

    command: ClassVar[tuple[str, ...]] = ("serve",)
    runner: ClassVar[str] = "alignloop.serve.app:run_serve"

    model: str = opt("smollm2-135m-instruct",
                     "Model to serve by default: a registry id or name, an alias, or a folder.")
    host: str = opt("127.0.0.1", "Address to listen on (0.0.0.0 for every interface; set API keys then).")
    port: int = opt(8000, "Port to listen on.")
    api_key: list[str] = opt([], f"Accepted API key (repeatable); also read from ${API_KEYS_ENV} (comma-separated). "
                             "With no key at all the API is open (a warning says so).", repeat=True)
    db: Optional[str] = opt(None, "Database URL (registry, jobs, feedback store); default: alignloop.db in the "
                            "alignloop home, the same file the feedback studio uses.")
    max_batch_size: int = opt(16, "Most sequences decoded together in one forward pass.")
    batch_wait_ms: float = opt(10.0, "How long the batcher waits for more requests after the first one arrives.")
    max_prompt_tokens: int = opt(2048, "Longest prompt accepted, in tokens (longer: 422).")
    max_tokens_limit: int = opt(1024, "Largest max_tokens a request may ask for (larger: 422).")
    default_max_tokens: int = opt(256, "max_tokens when a request does not set it.")
    max_n: int = opt(4, "Most choices (n) per request.")
    max_request_bytes: int = opt(1_000_000, "Largest request body for completions and feedback (larger: 413).")
    max_upload_bytes: int = opt(64_000_000,
                                "Largest request body for training jobs (they carry the data; larger: 413).")
    max_loaded_models: int = opt(2, "Models kept in memory at once (registry models load on first request).")
    allow_registry_models: bool = opt(True, "Let requests name any registered model, not only --model.")
    precision: Literal["auto", "bf16", "fp32"] = opt("fp32", "Inference precision (bf16 halves memory on a GPU; on "
                                                     "CPU fp32 is usually as fast for small models).")
    chat_template: bool = opt(True, "Apply the tokenizer's chat template to chat messages.")
    store_answers: bool = opt(True, "Keep served answers (masked) in the database so users can give feedback on them.")
    feedback_project: str = opt("served",
                                "Feedback-store project for user feedback (NAME, NAME-rewrite, NAME-pairwise).")
    mask_personal_data: list[str] = opt(["email", "phone", "card", "iban", "account"],
                                        "Personal data masked in stored prompts, answers and feedback text; "
                                        "'none' turns masking off.")
    jobs: bool = opt(True, "Run queued training jobs in this server (one at a time; one such server per SQLite file).")
    resume_interrupted_jobs: bool = opt(False, "On start, re-queue jobs that were running when the server stopped, "
                                        "with --resume (continues from their last checkpoint), "
                                        "instead of failing them.")
    jobs_folder: Optional[str] = opt(None, "Where job folders (config, log, output) go; "
                                     "default: jobs/ in the alignloop home.")
    log_level: Literal["debug", "info", "warning", "error"] = opt("info", "Server log level.")

    def keys(self) -> list[str]:
        env = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
        return list(dict.fromkeys([k for k in self.api_key if k] + env))

    def mask_kinds(self) -> list[str]:
        off = [k.lower() for k in self.mask_personal_data] in (["none"], ["off"], [])
        return [] if off else list(self.mask_personal_data)

    def check(self) -> list[str]:
        from alignloop.serve.pii import KINDS

        p = positive(self, "port", "max_batch_size", "max_prompt_tokens", "max_tokens_limit", "default_max_tokens",
                     "max_n", "max_request_bytes", "max_upload_bytes", "max_loaded_models")
        p += positive(self, "batch_wait_ms", allow_zero=True)
        if self.default_max_tokens > self.max_tokens_limit:
            p.append(f"default_max_tokens: {self.default_max_tokens} is above max_tokens_limit {self.max_tokens_limit}")
        bad = [k for k in self.mask_kinds() if k not in KINDS]
        if bad:
            p.append(f"mask_personal_data: unknown kind(s) {', '.join(bad)}; choose from {', '.join(KINDS)} or none")
        p += check_db_url(self.db)
        if not self.model:
            p.append("model: which model to serve? (--model ID_OR_PATH)")
        return p
