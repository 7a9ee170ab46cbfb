"""Put the probe's answer-mean features into alignloop's feature cache (the same forward, same model, data and
settings, so `alignloop reward train --freeze-backbone --pooling mean --max-length 512` on train (and on dev)
skips its ~17-minute forward). Units are matched by their token ids; a unit missing from the probe fails loudly.

    PYTHONPATH=. python benchmarks/reward_probe_warm_cache.py
"""

import torch
from reward_probe_common import features_file

from alignloop.core.paths import alignloop_home
from alignloop.data.batching import cache_key, file_fingerprint, save_cached
from alignloop.models.reward_model import build_reward_model
from alignloop.trainers.reward import load_units

rm = build_reward_model("smollm2-135m-instruct", max_length=512, pooling="mean")
for split, policy in (("train", "left"), ("dev", "score"), ("dev", "left")):
    path = f"data/hh-harmless/{split}.jsonl.gz"
    units, _, _ = load_units(path, rm, 512, policy, None)
    exp_units, _, _ = load_units(path, rm, 512, "score", None)
    d = torch.load(features_file(split, 512))
    key = lambda u: (tuple(u.group.prompt_ids), tuple(map(tuple, u.group.answers)))  # noqa: E731
    by = {key(u): f for u, f in zip(exp_units, d["feats"])}
    feats = [by[key(u)][:, :, 1].contiguous() for u in units]  # [n_ans, L, d] answer-mean states; KeyError if not same
    # the same key parts as alignloop.trainers.reward.run (..., precision, chat_template, layers the backbone keeps)
    parts = (["smollm2-135m-instruct", file_fingerprint(path), 512, "left", None, "fp32", True, 30] if policy == "left"
             else ["smollm2-135m-instruct", file_fingerprint(path), 512, "score", "fp32", True, 30])
    save_cached(cache_key("reward-features-3", True, "mean", *parts), alignloop_home() / "cache" / "features", feats)
    print(split, len(feats), feats[0].shape)
