"""Reward-model probe, step 1: per-layer features of the frozen default backbone for the HH train/dev/test splits.

For every answer: each layer's output through the final norm, at the answer's last token and meaned over the
answer's tokens ([n_answers, 30 layers, 2, 576], float16), and the answer's own log-likelihood (sum, mean), one fp32
forward pass (prefix-shared packed rows, as alignloop scores). Written to runs/reward-probe/{split}-{max_length}.pt
($REWARD_PROBE_DIR to change it) for
reward_probe_fit.py.

    PYTHONPATH=. python benchmarks/reward_probe_features.py 512      # ~18 min on the 2-core AVX2 CPU
"""

import sys
import time

import torch
from reward_probe_common import FEATURES, features_file

from alignloop.models.reward_model import build_reward_model, shared_batch, token_budget_batches
from alignloop.trainers.reward import load_units

torch.manual_seed(0)
ML = int(sys.argv[1]) if len(sys.argv) > 1 else 512
rm = build_reward_model("smollm2-135m-instruct", max_length=ML)
rm.eval()
bb = rm.backbone
for split in ["dev", "test", "train"]:
    units, rep, n = load_units(f"data/hh-harmless/{split}.jsonl.gz", rm, ML, "score", None)
    print(split, len(units), rep.summary(n), flush=True)
    order = token_budget_batches([len(u.group) for u in units], 16, 4096)
    out = [None] * len(units)
    lp = [None] * len(units)
    t0 = time.time()
    ntok = 0
    with torch.no_grad():
        for bi, idx in enumerate(order):
            groups = [units[i].group for i in idx]
            b = shared_batch(groups, "cpu", rm.row_tokens, 0)
            taken = []
            hooks = [layer.register_forward_hook(
                         lambda m, i, o, taken=taken: taken.append(o[0] if isinstance(o, tuple) else o))
                     for layer in bb.layers]
            if True:
                bb(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask, use_cache=False)
            for h in hooks:
                h.remove()
            lens = [len(a) for g in groups for a in g.answers]
            last = b.last.tolist()
            per = []
            # answer log-likelihood under the model itself (tokens 2..n of each answer, predicted from inside the
            # answer: in the prefix-shared layout the token before answer 2's first token is answer 1's last)
            ids = b.input_ids.reshape(-1)
            hf = bb.norm(taken[-1]).float().reshape(-1, taken[-1].shape[-1])
            lps = []
            for end, n in zip(last, lens):
                if n < 2:
                    lps.append(torch.zeros(2))
                    continue
                logits = hf[end - n + 1:end] @ bb.embed_tokens.weight.float().T
                tok = torch.log_softmax(logits, -1).gather(1, ids[end - n + 2:end + 1, None])[:, 0]
                lps.append(torch.stack([tok.sum(), tok.mean()]))
            lps = torch.stack(lps)
            for h in taken:
                h = bb.norm(h).float().reshape(-1, h.shape[-1])
                lt = h[b.last]
                mn = torch.stack([h[end - n + 1:end + 1].mean(0) for end, n in zip(last, lens)])
                per.append(torch.stack([lt, mn], 1))
            feats = torch.stack(per, 1).half()  # [n_ans, L, 2, d]
            k = 0
            for i in idx:
                na = len(units[i].group.answers)
                out[i] = feats[k:k + na]
                lp[i] = lps[k:k + na]
                k += na
            ntok += b.input_ids.numel()
            if bi % 20 == 0:
                print(split, bi, len(order), f"{time.time()-t0:.0f}s", f"{ntok/(time.time()-t0):.0f} tok/s",
                      flush=True)
    meta = [(u.better, u.worse, u.answer_chars, u.tie) for u in units]
    FEATURES.mkdir(parents=True, exist_ok=True)
    torch.save({"feats": out, "logp": lp, "meta": meta}, features_file(split, ML))
    print(split, "done", time.time() - t0, flush=True)
