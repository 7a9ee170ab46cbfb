"""The models a server holds: the default model, plus registry models loaded on first request (least recently
used ones unloaded), each with its own batcher."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignloop.generation.abstention import read_abstention
from alignloop.models.load import load_causal_lm
from alignloop.registry.store import resolve_model_ref
from alignloop.serve.batcher import Batcher
from alignloop.serve.config import ServeConfig
from alignloop.serve.errors import ApiError

log = logging.getLogger("alignloop.serve")


@dataclass
class LoadedModel:
    id: str  # registry id when registered, else the reference as given
    name: str
    path: str
    model: Any
    tokenizer: Any
    batcher: Batcher
    abstention: Any = None  # the folder's rule for declining when unsure (``/v1/predict`` applies it)
    created: int = field(default_factory=lambda: int(time.time()))
    last_used: float = field(default_factory=time.monotonic)


class ModelPool:
    """The default model plus registry models loaded on first request (least recently used ones unloaded)."""

    def __init__(self, cfg: ServeConfig, registry: Any):
        self.cfg, self.reg = cfg, registry
        self.models: dict[str, LoadedModel] = {}
        self.lock = threading.Lock()
        self.default = self._load(cfg.model)

    def _load(self, ref: str) -> LoadedModel:
        path, model_id = resolve_model_ref(ref, self.cfg.db) if self.reg is not None else (ref, None)
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float32
        model, tok = load_causal_lm(path, dtype=dtype)
        abstention = read_abstention(path)
        if abstention is not None:
            # declining needs the whole answer first: chat and text completions stream tokens as they are sampled
            log.warning("%s: declines when unsure (abstention.json, below %s) on /v1/predict, as model.predict "
                        "does; chat and text completions answer without it", ref, abstention.min_confidence)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = model.to(device).eval()
        name = ref
        if model_id is not None and self.reg is not None:
            name = self.reg.find_model(model_id).name
        lm = LoadedModel(model_id or ref, name, str(path), model, tok,
                         Batcher(model, tok, self.cfg.max_batch_size, self.cfg.batch_wait_ms,
                                 max_queue=self.cfg.max_queue), abstention)
        self.models[lm.id] = lm
        return lm

    def aliases(self, lm: LoadedModel) -> set[str]:
        return {lm.id, lm.name, lm.path}

    def get(self, ref: str | None) -> LoadedModel:
        """The loaded model for a request's ``model`` field; loads a registry model when allowed."""
        if not ref:
            return self.default
        with self.lock:
            for lm in self.models.values():
                if ref in self.aliases(lm) or (lm is self.default and ref == self.cfg.model):
                    lm.last_used = time.monotonic()
                    return lm
            m = self._registered(ref)
            if m is None:
                raise ApiError(404, f"model '{ref}' is not served here: this server serves '{self.default.id}'"
                               + (" and registered models (GET /v1/models)" if self.cfg.allow_registry_models else ""),
                               param="model", code="model_not_found")
            if m.id in self.models:
                return self.models[m.id]
            self._make_room()
            return self._load(m.id)

    def _registered(self, ref: str) -> Any:
        """The registry's model named ``ref`` when requests may load registered models (a folder never is)."""
        if not self.cfg.allow_registry_models or self.reg is None:
            return None
        try:
            return self.reg.find_model(ref) if not Path(ref).exists() else None
        except Exception:
            return None

    def _make_room(self) -> None:
        """Unload least recently used models (never the default) until one more fits."""
        while len(self.models) >= self.cfg.max_loaded_models:
            victims = [x for x in self.models.values() if x is not self.default]
            if not victims:
                break
            old = min(victims, key=lambda x: x.last_used)
            old.batcher.stop()
            del self.models[old.id]

    def close(self) -> None:
        for lm in list(self.models.values()):
            lm.batcher.stop()
