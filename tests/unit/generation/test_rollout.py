"""The vLLM backend of RL rollouts, on CPU with a fake ``vllm`` module that records what the rollout asks of it."""

import sys
import types

import torch

from alignloop.generation import rollout


class FakeLLM:
    """Stands in for ``vllm.LLM``: the attribute path ``_push_weights`` loads weights through, and the calls."""

    def __init__(self, log, **kw):
        self.log = log
        log.append(("LLM", kw["model"], kw["enable_prefix_caching"]))
        model = types.SimpleNamespace(load_weights=lambda items: log.append(("load_weights", [n for n, _ in items])))
        worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))

    def reset_prefix_cache(self):
        self.log.append(("reset_prefix_cache",))
        return True

    def generate(self, prompts, params, use_tqdm=False):
        self.log.append(("generate", [p["prompt_token_ids"] for p in prompts]))
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[7, 2, 9])]) for _ in prompts]


class Policy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)
        self.config = types.SimpleNamespace(_name_or_path="policy-name")


class Tok:
    eos_token, eos_token_id, pad_token_id, unk_token_id = None, 2, 0, None

    def convert_tokens_to_ids(self, tok):
        return None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_vllm_prefix_cache_is_reset_after_every_weight_push(monkeypatch):
    """Prefix-cached KV blocks were computed with the previous weights: each push must empty the cache, after the
    weights are in and before sampling (issue #17, item 7)."""
    log = []
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: FakeLLM(log, **kw)
    fake.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    policy = Policy()
    for _ in range(2):
        out = rollout.generate_rollout(policy, Tok(), [[5, 6], [8]], max_new_tokens=4, temperature=1.0,
                                       backend="vllm")
        assert out.response_ids == [[7, 2], [7, 2]] and out.ended == [True, True]
    push = [("load_weights", ["proj.weight", "proj.bias"]), ("reset_prefix_cache",), ("generate", [[5, 6], [8]])]
    assert log == [("LLM", "policy-name", True)] + push + push
