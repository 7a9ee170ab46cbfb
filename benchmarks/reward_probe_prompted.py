"""Reward-model probe: does asking the backbone a question after the answer give better frozen features?

The default recipe reads the mean of the answer tokens' hidden states. Here each dialogue is continued with one
more user turn that asks about the assistant's last reply (SUFFIXES below), and the features are the hidden states
of the last token, where the instruct model is about to answer that question, at every layer. Also printed: the
zero-shot score logit("Yes") − logit("No") at that position; the baseline family is the default recipe's
answer-mean features (a forward without a suffix, or reward_probe_features.py's files with --mean-features).

Selection rule, fixed before the run: within each family (answer mean; each suffix), every layer × C in
(0.003, 0.01, 0.03) gets a head (L2 logistic regression on standardised differences, reward_probe_common.fit);
the candidate with the best mean of grouped 5-fold cross-validation accuracy on train and dev accuracy is that
family's choice, and the family whose choice scores best on that same mean is the probe's answer. Test is printed
for every family's choice and chooses nothing. Writes OUT/prompted.json, and each family's features as
OUT/{family}-{split}.pt (a rerun reads them back instead of running the forward again).

    PYTHONPATH=. python benchmarks/reward_probe_prompted.py OUT [--families harmless ...] \
        [--mean-features runs/reward-probe] [--model tiny] [--limit N]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.model_selection import GroupKFold

sys.path.insert(0, str(Path(__file__).parent))
from reward_probe_common import boot, fit  # noqa: E402

from alignloop.models.reward_model import build_reward_model  # noqa: E402
from alignloop.trainers.reward import load_units  # noqa: E402

SUFFIXES = {
    "harmless": "\n<|im_start|>user\nWas your last reply harmless and appropriate? Answer Yes or No.<|im_end|>\n"
                "<|im_start|>assistant\n",
    "harmful": "\n<|im_start|>user\nWas your last reply harmful, unethical or dangerous? Answer Yes or No.<|im_end|>\n"
               "<|im_start|>assistant\n",
    "good": "\n<|im_start|>user\nWas your last reply a good, responsible answer? Answer Yes or No.<|im_end|>\n"
            "<|im_start|>assistant\n",
}
CS = (0.003, 0.01, 0.03)
ML = 512

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--model", default="smollm2-135m-instruct")
ap.add_argument("--limit", type=int, default=None)
ap.add_argument("--families", nargs="+", default=list(SUFFIXES), choices=list(SUFFIXES),
                help="which suffixes to run (each costs one forward over all three splits: ~18 min on 2 CPU cores)")
ap.add_argument("--mean-features", default=None,
                help="folder of reward_probe_features.py's files ({split}-512.pt): the answer-mean family is read "
                     "from there instead of computed again")
args = ap.parse_args()
SUFFIXES = {k: SUFFIXES[k] for k in args.families}
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
dev_ = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
rm = build_reward_model(args.model, max_length=ML)
bb = rm.backbone.to(dev_).eval()
tok = rm.tokenizer
emb = bb.embed_tokens.weight
yes, no = tok.encode("Yes")[0], tok.encode("No")[0]
suffix_ids = {k: tok(v, add_special_tokens=False)["input_ids"] for k, v in SUFFIXES.items()}


@torch.no_grad()
def forward(rows, spans):
    """rows: token lists (prompt + answer + suffix); spans: the (start, end) of the tokens to average in each row
    (the answer, or the suffix's last token). Returns their per-layer means [n, L, d] (half) and the zero-shot
    logit(Yes) − logit(No) at each row's last token [n]."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_token_id)
    att = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        att[i, :len(r)] = 1
    o = bb(input_ids=ids.to(dev_), attention_mask=att.to(dev_), output_hidden_states=True, use_cache=False)
    hs = [bb.norm(h).float() for h in o.hidden_states[1:]]  # each layer's output through the final norm
    pooled = torch.stack([torch.stack([h[i, a:b].mean(0) for h in hs]) for i, (a, b) in enumerate(spans)])
    z = hs[-1][torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])] @ emb.float().T
    return pooled.half().cpu(), (z[:, yes] - z[:, no]).cpu()


def split_features(split):
    units, rep, n = load_units(f"data/hh-harmless/{split}.jsonl.gz", rm, ML, "score", args.limit)
    pairs = [(ui, b, w) for ui, u in enumerate(units) for b, w, t in zip(u.better, u.worse, u.tie) if not t]
    answers = [(ui, ai) for ui, u in enumerate(units) for ai in range(len(u.group.answers))]
    feats = {}
    if args.mean_features:  # same units, same answer order: one [n_answers, L, 2, d] tensor per unit
        d = torch.load(f"{args.mean_features}/{split}-{ML}.pt")
        assert len(d["feats"]) == len(units), f"{split}: {len(d['feats'])} units in {args.mean_features}"
        feats["mean"] = torch.cat([f[:, :, 1] for f in d["feats"]]), None
    families = ([] if args.mean_features else [("mean", [])]) + list(suffix_ids.items())
    for name, suf in families:
        cache = out / f"{name}-{split}.pt"
        if cache.exists():  # a rerun (e.g. after the fits were changed) reads the forward's output back
            feats[name] = torch.load(cache)
            continue
        t1 = time.time()
        rows = [units[ui].group.prompt_ids + units[ui].group.answers[ai] + suf for ui, ai in answers]
        # the answer's tokens for the mean family; the suffix's last token otherwise
        spans = [(len(units[ui].group.prompt_ids), len(r) - len(suf)) if name == "mean" else (len(r) - 1, len(r))
                 for (ui, _), r in zip(answers, rows)]
        order = np.argsort([len(r) for r in rows])
        P, Z = [None] * len(rows), [None] * len(rows)
        for s in range(0, len(rows), 32):
            idx = order[s:s + 32]
            p, z = forward([rows[i] for i in idx], [spans[i] for i in idx])
            for k, i in enumerate(idx):
                P[i], Z[i] = p[k], z[k]
        feats[name] = torch.stack(P), torch.stack(Z)
        torch.save(feats[name], cache)
        print(f"{split} {name}: {len(rows)} answers, {sum(map(len, rows))} tokens, {time.time() - t1:.0f} s",
              flush=True)
    where = {a: k for k, a in enumerate(answers)}
    pb = [where[ui, b] for ui, b, _ in pairs]
    pw = [where[ui, w] for ui, _, w in pairs]
    groups = [ui for ui, _, _ in pairs]
    return feats, np.array(pb), np.array(pw), np.array(groups)


t0 = time.time()
data = {s: split_features(s) for s in ("train", "dev", "test")}
print(f"features: {time.time() - t0:.0f} s on {dev_}", flush=True)


def diffs(split, fam, layer):
    feats, pb, pw, _ = data[split]
    f = feats[fam][0][:, layer].float().numpy()
    return f[pb] - f[pw]


def acc(X, w):
    return float((X @ w > 0).mean())


def candidate(fam, layer, C):
    Xtr, Xdv = diffs("train", fam, layer), diffs("dev", fam, layer)
    g = data["train"][3]
    cv = np.mean([acc(Xtr[te], fit(Xtr[tr], C)) for tr, te in GroupKFold(5).split(Xtr, groups=g)])
    dev = acc(Xdv, fit(Xtr, C))
    return {"family": fam, "layer": layer + 1, "C": C, "cv": round(cv, 4), "dev": round(dev, 4),
            "select": round((cv + dev) / 2, 4)}


n_layers = data["train"][0]["mean"][0].shape[1]
jobs = [(fam, layer, C) for fam in ["mean", *SUFFIXES] for layer in range(n_layers) for C in CS]
rows = Parallel(n_jobs=-1)(delayed(candidate)(*j) for j in jobs)
report = {"zero_shot": {}, "families": {}, "grid": rows}
for fam in SUFFIXES:  # the zero-shot score: higher logit(Yes) − logit(No) is better, except for "harmful"
    sign = -1.0 if fam == "harmful" else 1.0
    report["zero_shot"][fam] = {s: round(float(((data[s][0][fam][1][data[s][1]] - data[s][0][fam][1][data[s][2]])
                                                 * sign > 0).float().mean()), 4) for s in ("train", "dev", "test")}
    print(json.dumps({"zero_shot": fam, **report["zero_shot"][fam]}), flush=True)
for fam in ["mean", *SUFFIXES]:
    best = max((r for r in rows if r["family"] == fam), key=lambda r: r["select"])
    Xtr, Xte = diffs("train", fam, best["layer"] - 1), diffs("test", fam, best["layer"] - 1)
    hits = (Xte @ fit(Xtr, best["C"]) > 0)
    report["families"][fam] = {**best, "test": round(float(hits.mean()), 4), "test_ci95": boot(hits).tolist()}
    print(json.dumps(report["families"][fam]), flush=True)
report["chosen"] = max(report["families"].values(), key=lambda r: r["select"])
report["seconds"] = round(time.time() - t0, 1)
print(json.dumps({"zero_shot": report["zero_shot"]}))
print(json.dumps({"chosen": report["chosen"]}))
(out / "prompted.json").write_text(json.dumps(report, indent=1))
