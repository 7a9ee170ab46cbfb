"""DPO trainer on the tiny model: the prefix-sharing layout, reference caching, metrics, KTO, accuracy."""

import json
import math
from pathlib import Path

import pytest
import torch

from alignloop.data.readers import write_jsonl
from alignloop.data.records import Preference, Prompt
from alignloop.evaluate.metrics import bootstrap_ci, length_baseline
from alignloop.models.load import load_causal_lm
from alignloop.trainers.config import DPOConfig
from alignloop.trainers.dpo import (
    Segment,
    answer_logps,
    build_batch,
    build_flat_batch,
    kl_segments,
    ordered,
    pack_rows,
    tokenize_unpaired,
    unpair,
)


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_causal_lm("tiny")
    model.eval()
    return model, tok


def separate_logps(model, prompt, answer):
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(answer))


def test_prefix_sharing_equals_separate_forwards(tiny):
    model, tok = tiny
    segs = [Segment([5, 6, 7], [[8, 9], [10, 11, 12]]), Segment([20, 21], [[22], [23, 24, 25, 26]]),
            Segment([30, 31, 32, 33], [[34, 35, 36], [37]])]
    want = [separate_logps(model, s.prompt_ids, a) for s in segs for a in s.answers]
    for budget in (100, 12, 1):  # one row; two rows with padding; one row per pair
        rows = pack_rows(segs, budget)
        order = ordered(rows, segs)
        for build in (build_batch, build_flat_batch):
            batch = build(segs, rows, tok.pad_token_id)
            with torch.no_grad():
                sums, lens = answer_logps(model, batch)
            got = sums.view(-1, 2)
            for k, i in enumerate(order):
                assert got[k].tolist() == pytest.approx(want[2 * i:2 * i + 2], abs=1e-4)
                assert lens.view(-1, 2)[k].tolist() == [len(a) for a in segs[i].answers]


def test_mask_rejected_does_not_see_chosen(tiny):
    _, tok = tiny
    b = build_batch([Segment([1, 2], [[3, 4], [5]])], [[0]], tok.pad_token_id)
    m = b.attention_mask[0, 0].int().tolist()
    # tokens: p p c c r ; positions 0 1 2 3 2
    assert m == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 2]
    # logits kept: prompt end predicts both first answer tokens; targets are the answers' tokens
    assert b.keep[0].tolist() == [1, 2, 1] and b.targets[0].tolist() == [3, 4, 5]
    assert b.num_tokens == 5


def test_pack_rows_first_fit_decreasing():
    segs = [Segment([0] * 5, [[1]]), Segment([0] * 2, [[1]]), Segment([0] * 9, [[1]]), Segment([0] * 3, [[1]])]
    # lengths 6, 3, 10, 4; budget 10: [10], [6, 4], [3]... first fit: 10 | 6 -> new row | 4 fits with 6 | 3 new
    assert pack_rows(segs, 10) == [[2], [0, 3], [1]]


def test_unpair():
    p = Preference(Prompt([{"role": "user", "content": "hi"}]), "good", "bad")
    u = unpair([p])
    assert [(x.completion, x.label) for x in u] == [("good", True), ("bad", False)]


def test_kto_kl_pairs_take_answers_from_other_prompts(tiny):
    """z0 must come from mismatched pairs: unpair() puts a pair's chosen and rejected side by side, so a shift by
    one gave each prompt the other answer of its own pair (issue #17, item 5)."""
    _, tok = tiny
    prefs = [Preference(Prompt([{"role": "user", "content": f"question {k}?"}]), f"good answer {k}",
                        f"bad answer {k}") for k in range(3)]
    segs, report = tokenize_unpaired(unpair(prefs), tok, 64, "left")
    assert len(segs) == 6 and [s.index for s in segs] == [0, 1, 2, 3, 4, 5]
    answers = [tuple(s.answers[0]) for s in segs]
    assert len(set(answers)) == 6

    def source(seed):  # which example's answer each KL example uses
        kl = kl_segments(segs, seed)
        assert [k.prompt_ids for k in kl] == [s.prompt_ids for s in segs] and [k.index for k in kl] == list(range(6))
        return [answers.index(tuple(k.answers[0])) for k in kl]

    src = source(0)
    assert all(j // 2 != i // 2 for i, j in enumerate(src)), src  # never an answer of the prompt's own pair
    assert src == [5, 4, 1, 0, 2, 3]  # seed 0: pair 0's prompt takes pair 2's answers, 1 takes 0's, 2 takes 1's
    assert source(0) == src  # fixed given the seed (the reference log-probs of these pairs are cached)
    assert source(1) == [2, 3, 5, 4, 1, 0]
    # one completion per prompt (native KTO data): TRL's shuffle, then shift by one; every answer used once
    single = [Segment([10 + k], [[100 + k]], index=k) for k in range(4)]
    assert [k.answers[0][0] - 100 for k in kl_segments(single, 0)] == [1, 3, 0, 2]
    # a prompt holding 3 of 4 examples: unavoidable for some, but never an example's own answer
    crowded = [Segment([10], [[100 + k]], index=k) for k in range(3)] + [Segment([11], [[103]], index=3)]
    assert [k.answers[0][0] - 100 for k in kl_segments(crowded, 0)] == [3, 2, 1, 0]


def test_bootstrap_and_length_baseline():
    lo, hi = bootstrap_ci([1.0] * 8 + [0.0] * 2, seed=0)
    assert 0.4 <= lo < 0.8 < hi <= 1.0
    assert bootstrap_ci([1.0, 1.0], seed=3) == (1.0, 1.0)
    assert bootstrap_ci([0.0, 1.0] * 50, seed=1) == bootstrap_ci([0.0, 1.0] * 50, seed=1)
    assert length_baseline([5, 3, 4], [2, 7, 4]) == pytest.approx((1 + 0 + 0.5) / 3)  # longer wins 0.5
    assert length_baseline([5, 3, 3], [2, 7, 4]) == pytest.approx(2 / 3)  # shorter wins 2 of 3: the better rule


def test_config_defaults_and_checks():
    assert DPOConfig(loss="dpo").defaults() == (0.1, 0.0)
    assert DPOConfig(loss="simpo").defaults() == (2.0, 0.0)
    assert DPOConfig(loss="robust").defaults() == (0.1, 0.1)
    probs = DPOConfig(data="x", output="o", loss="ipo", label_smoothing=0.6).check()
    assert any("label_smoothing: must be in [0, 0.5)" in p for p in probs)
    assert any("only used by --loss dpo or robust" in p for p in probs)


def _pairs(tmp_path: Path, n=8) -> Path:
    if (tmp_path / "pairs.jsonl").exists():  # rewriting it would change its fingerprint (and miss the caches)
        return tmp_path / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"question {i}?"}],
             "chosen": [{"role": "assistant", "content": f"a helpful answer number {i}"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(n)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _train(tmp_path, monkeypatch, name, **kw):
    from alignloop.models.load import models_home, resolve_model

    resolve_model("tiny")  # built once in the real home; each test gets a fresh cache folder that links to it
    home = tmp_path / "home"
    if not home.exists():
        home.mkdir()
        (home / "models").symlink_to(models_home())
    monkeypatch.setenv("ALIGNLOOP_HOME", str(home))
    data = _pairs(tmp_path)
    fields = dict(model="tiny", data=str(data), output=str(tmp_path / name), max_steps=2, batch_size=4,
                  learning_rate=1e-3, lr_schedule="constant", max_length=64, precision="fp32")
    fields.update(kw)
    # (not alignloop.train(): once alignloop.train the package is imported, it shadows that function)
    from alignloop.trainers.dpo import run

    run(DPOConfig.from_dict(fields).validate())
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "time/reference_s" in rows[0]
    return rows[1:]


def test_train_dpo_lora_metrics_and_reference_cache(tmp_path, monkeypatch, capsys):
    rows = _train(tmp_path, monkeypatch, "run1", lora=True, dev_data=None)
    first = rows[0]
    for k in ("loss", "grad_norm", "tokens_per_s", "rewards/chosen", "rewards/rejected", "rewards/margins",
              "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert k in first, k
    # LoRA starts as the identity (B = 0), so the policy equals its reference and the loss is log 2 exactly
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert rows[1]["rewards/margins"] > 0  # one step at lr 1e-3 moves towards the chosen answers
    assert (tmp_path / "run1" / "final" / "config.json").exists()
    capsys.readouterr()
    _train(tmp_path, monkeypatch, "run2", lora=True)
    assert "reference log-probs for train: from cache" in capsys.readouterr().err


@pytest.mark.parametrize("loss", ["ipo", "robust", "hinge", "simpo"])
def test_train_each_loss_starts_at_its_value(tmp_path, monkeypatch, loss):
    rows = _train(tmp_path, monkeypatch, loss, loss=loss, max_steps=1)
    want = {"ipo": (0 - 1 / 0.2) ** 2, "robust": math.log(2), "hinge": 1.0}
    if loss in want:  # policy == reference at step 1: h = 0
        assert rows[0]["loss"] == pytest.approx(want[loss], rel=1e-4)
    assert math.isfinite(rows[0]["loss"])


def test_train_kto_on_unpaired_and_paired(tmp_path, monkeypatch):
    rows = [{"prompt": f"q{i}", "completion": f"answer {i}", "label": i % 2 == 0} for i in range(6)]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    out = _train(tmp_path, monkeypatch, "kto", loss="kto", data=str(data), max_steps=1)
    # policy == reference, KL = 0: every example's loss is 1 - σ(0) = 0.5
    assert out[0]["loss"] == pytest.approx(0.5, abs=1e-5)
    assert out[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    out = _train(tmp_path, monkeypatch, "kto2", loss="kto", max_steps=1)  # paired data, unpaired on the fly
    assert out[0]["loss"] == pytest.approx(0.5, abs=1e-5)


def test_dev_and_test_accuracy_written(tmp_path, monkeypatch):
    data = _pairs(tmp_path)
    _train(tmp_path, monkeypatch, "ev", dev_data=str(data), test_data=str(data), max_steps=3)
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    for part in ("dev", "test"):
        assert ev[part]["n"] == 8 and 0 <= ev[part]["accuracy"] <= 1
        assert ev[part]["length_baseline"] == 1.0  # every chosen answer is longer than "no"
        assert ev[part]["ci95"][0] <= ev[part]["accuracy"] <= ev[part]["ci95"][1]


def test_wrong_data_kind_is_a_clear_error(tmp_path, monkeypatch):
    from alignloop.core.errors import DataError

    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match="needs preference pairs"):
        _train(tmp_path, monkeypatch, "bad", data=str(data))


def test_preference_accuracy_of_a_model_against_itself_is_one_half(tmp_path):
    from alignloop.trainers.dpo import preference_accuracy

    data = _pairs(tmp_path)
    res = preference_accuracy("tiny", str(data), reference="tiny", max_length=64, precision="fp32")
    # identical policy and reference: every margin is 0, a tie, which counts half
    assert res["n"] == 8 and res["accuracy"] == 0.5 and list(res["ci95"]) == [0.5, 0.5]
    assert res["length_baseline"] == 1.0 and res["mean_margin"] == 0.0


def test_tied_pairs_are_left_out_of_dpo_and_kto_and_counted(tiny, tmp_path):
    """A tie / both-bad pair says neither answer is better: DPO and KTO leave it out (and say so) instead of
    training it as chosen > rejected (#17, found with item 8)."""
    from alignloop.trainers.dpo import TIED, load_segments

    _, tok = tiny
    rows = [{"prompt": "q0?", "chosen": "yes", "rejected": "no"},
            {"prompt": "q1?", "chosen": "maybe", "rejected": "perhaps", "tie": True},
            {"prompt": "q2?", "chosen": "a", "rejected": "b", "choice": "both_bad"},
            {"prompt": "q3?", "chosen": "right", "rejected": "wrong"}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = DPOConfig(model="tiny", data=str(data), output=str(tmp_path / "o"), max_length=64)
    segs, report, n = load_segments(cfg, tok, str(data), None)
    assert ["q0?" in tok.decode(s.prompt_ids) for s in segs] == [True, False]  # q0 then q3; q1, q2 left out
    assert ["q3?" in tok.decode(s.prompt_ids) for s in segs] == [False, True]
    assert len(segs) == 2 and n == 4
    assert report.reasons[TIED] == 2
    assert report.summary(n).startswith("2 of 4 rows used")
    kto, kreport, kn = load_segments(cfg.replace(loss="kto"), tok, str(data), None)
    assert len(kto) == 4 and kreport.reasons[TIED] == 2  # two pairs -> 2 desirable + 2 undesirable examples


def test_dpo_reads_and_trains_on_an_empty_chosen_answer(tiny, tmp_path, monkeypatch):
    """An empty answer is data (issue 20): the chosen answer "" is its end-of-turn token alone, and a step trains."""
    from alignloop.trainers.dpo import load_segments

    _, tok = tiny
    rows = [{"prompt": "Reply with nothing at all.", "chosen": "", "rejected": "Here is a long reply."},
            {"prompt": [{"role": "user", "content": "q1?"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": ""}]}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = DPOConfig(model="tiny", data=str(data), output=str(tmp_path / "o"), max_length=64)
    segs, report, n = load_segments(cfg, tok, str(data), None)
    assert n == 2 and len(segs) == 2 and not report.reasons
    eos = tok.eos_token_id
    assert segs[0].answers == [[eos], tok("Here is a long reply.", add_special_tokens=False)["input_ids"] + [eos]]
    assert segs[1].answers == [tok("yes", add_special_tokens=False)["input_ids"] + [eos], [eos]]
    out = _train(tmp_path, monkeypatch, "empty", data=str(data), max_steps=1, batch_size=2, dev_data=None)
    assert math.isfinite(out[0]["loss"]) and math.isfinite(out[0]["logps/chosen"])
