"""``alignloop serve``: its config (kept apart from the app so ``--help`` does not import torch)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from alignloop.core.config import StageConfig, check_db_url, opt, positive

API_KEYS_ENV = "ALIGNLOOP_API_KEYS"
ADMIN_KEYS_ENV = "ALIGNLOOP_ADMIN_KEYS"
#: the python: reward functions jobs may name over HTTP unless --reward-function says otherwise (the built-in ones)
BUILT_IN_REWARDS = ["alignloop.rewards:financebench_numeric", "alignloop.rewards:financebench_graded"]


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
    api_key: list[str] = opt([], f"Inference key (repeatable): completions, predict, models, feedback; never jobs. "
                             f"Better read from ${API_KEYS_ENV} (comma-separated): a command line is visible to "
                             "every user of the machine. With no key of any kind the API is open (a warning says so).",
                             repeat=True)
    admin_key: list[str] = opt([], "Admin key (repeatable): everything an inference key may do, plus training jobs. "
                               f"Better read from ${ADMIN_KEYS_ENV} (comma-separated).", repeat=True)
    trusted_host: list[str] = opt([], "Host name clients reach this server by (repeatable; the Host header is "
                                  "checked, against DNS rebinding); localhost, 127.0.0.1, [::1] and --host are "
                                  "always trusted; '*.example.org' trusts its subdomains, '*' any.", repeat=True)
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
    max_request_tokens: int = opt(4096, "Most new tokens one request may ask for: prompts x n x max_tokens "
                                  "(more: 422).")
    max_queue: int = opt(64, "Most requests waiting for a batch, per model (more: 429, retry later).")
    max_concurrent_per_key: int = opt(16, "Most generation requests one key (or, with no keys, one client address) "
                                      "may have running at once (more: 429); 0: no limit.")
    key_tokens_per_minute: int = opt(0, "New tokens one key (with no keys: all callers together) may ask for per "
                                     "minute, counted as prompts x n x max_tokens when a request is admitted "
                                     "(more: 429); 0: no budget.")
    max_loaded_models: int = opt(2, "Models kept in memory at once (registry models load on first request).")
    allow_registry_models: bool = opt(False, "Let requests name any registered model, not only --model "
                                      "(each one loads into memory on first use).")
    precision: Literal["auto", "bf16", "fp32"] = opt("fp32", "Inference precision (bf16 halves memory on a GPU; on "
                                                     "CPU fp32 is usually as fast for small models).")
    chat_template: bool = opt(True, "Apply the tokenizer's chat template to chat messages.")
    store_answers: bool = opt(True, "Keep served answers (masked) in the database so users can give feedback on them.")
    feedback_project: str = opt("served",
                                "Feedback-store project for user feedback (NAME, NAME-rewrite, NAME-pairwise).")
    mask_personal_data: list[str] = opt(["email", "phone", "card", "iban", "account"],
                                        "Personal data masked in stored prompts, answers and feedback text; "
                                        "'none' turns masking off.")
    jobs: bool = opt(False, "Run training jobs in this server (one at a time; one such server per SQLite file). "
                     "Jobs need an admin key (--admin-key); the server refuses to start with jobs and none.")
    resume_interrupted_jobs: bool = opt(False, "On start, re-queue jobs that were running when the server stopped, "
                                        "with --resume (continues from their last checkpoint), "
                                        "instead of failing them.")
    jobs_folder: Optional[str] = opt(None, "Where job folders (config, log, output) go; "
                                     "default: jobs/ in the alignloop home.")
    data_root: list[str] = opt([], "Folder whose files jobs may read (data, prompts, model and reward-model "
                               "folders; repeatable). Without one a job reads only what it uploads, aliases and "
                               "registered models.", repeat=True)
    reward_function: list[str] = opt(BUILT_IN_REWARDS, "python: reward function (module:function) jobs may name "
                                     "(repeatable); no other python: reward is accepted over HTTP.", repeat=True)
    docs: bool = opt(False, "Serve the API's own documentation (/docs, /openapi.json), behind the API key.")
    log_level: Literal["debug", "info", "warning", "error"] = opt("info", "Server log level.")

    def keys(self) -> list[str]:
        """The inference keys (flags and ``$ALIGNLOOP_API_KEYS``)."""
        return _keys(self.api_key, API_KEYS_ENV)

    def admin_keys(self) -> list[str]:
        """The admin keys (flags and ``$ALIGNLOOP_ADMIN_KEYS``)."""
        return _keys(self.admin_key, ADMIN_KEYS_ENV)

    def trusted_hosts(self) -> list[str]:
        """The ``Host`` header names answered: the loopback names (``localhost``, ``127.0.0.1``, ``[::1]``), ``--host``
        unless it is every interface, and ``--trusted-host``; IPv6 addresses as a Host header writes them."""
        extra = [self.host] if self.host not in ("0.0.0.0", "::", "[::]", "") else []
        names = ["localhost", "127.0.0.1", "::1", *extra, *self.trusted_host]
        return list(dict.fromkeys(host_header_name(h) for h in names))

    def mask_kinds(self) -> list[str]:
        off = [k.lower() for k in self.mask_personal_data] in (["none"], ["off"], [])
        return [] if off else list(self.mask_personal_data)

    def check(self) -> list[str]:
        from alignloop.serve.pii import KINDS

        p = positive(self, "port", "max_batch_size", "max_prompt_tokens", "max_tokens_limit", "default_max_tokens",
                     "max_n", "max_request_bytes", "max_upload_bytes", "max_loaded_models", "max_request_tokens",
                     "max_queue")
        p += positive(self, "max_concurrent_per_key", "key_tokens_per_minute", allow_zero=True)
        p += positive(self, "batch_wait_ms", allow_zero=True)
        if self.default_max_tokens > self.max_tokens_limit:
            p.append(f"default_max_tokens: {self.default_max_tokens} is above max_tokens_limit {self.max_tokens_limit}")
        bad = [k for k in self.mask_kinds() if k not in KINDS]
        if bad:
            p.append(f"mask_personal_data: unknown kind(s) {', '.join(bad)}; choose from {', '.join(KINDS)} or none")
        p += check_db_url(self.db)
        if not self.model:
            p.append("model: which model to serve? (--model ID_OR_PATH)")
        if self.jobs and not self.admin_keys():
            p.append(f"jobs: training jobs need an admin key (--admin-key or ${ADMIN_KEYS_ENV}); "
                     "without one, leave jobs off (no --jobs)")
        both = set(self.keys()) & set(self.admin_keys())
        if both:
            p.append("admin_key: a key cannot be both an inference key and an admin key")
        bad = [h for h in self.trusted_host if h != "*" and ("*" in h[1:] or (h.startswith("*") and
                                                                           not h.startswith("*.")))]
        if bad:
            p.append(f"trusted_host: '{bad[0]}' is not a host name, '*' (any) or '*.domain' (its subdomains)")
        bad = [f for f in self.reward_function if f.count(":") != 1 or f.startswith("python:")]
        if bad:
            p.append(f"reward_function: '{bad[0]}' is not module:function (e.g. {BUILT_IN_REWARDS[0]})")
        return p


def host_header_name(host: str) -> str:
    """How a ``Host`` header names ``host``: an IPv6 address in brackets and in its short form (``::1`` and
    ``[0:0:0:0:0:0:0:1]`` are ``[::1]``), anything else in lower case."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return host.lower()
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


def _keys(given: list[str], env_name: str) -> list[str]:
    env = [k.strip() for k in os.environ.get(env_name, "").split(",") if k.strip()]
    return list(dict.fromkeys([k for k in given if k] + env))
