"""The staged loop in simulated mode: strategies, per-stage outputs, resume without redoing finished stages."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from alignloop import loop
from alignloop.loop import HeadEnsemble, LoopConfig, labels_to_reach, next_picks


def _pairs(path, n, offset=0):
    rows = [{"id": f"p{offset + i}", "prompt": f"question {offset + i}", "chosen": f"good answer {offset + i}",
             "rejected": f"bad answer {offset + i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fake_encoder(monkeypatch):
    """Deterministic features instead of MiniLM: 'good' texts lean on dimension 0, plus seeded noise per text."""
    calls = {"n": 0}

    def encode(texts, encoder, max_length, batch_size=64):
        calls["n"] += 1
        out = []
        for t in texts:
            rng = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            v = rng.normal(size=8)
            v[0] += 1.5 if "good" in t else -1.5
            out.append(v)
        return np.array(out)

    monkeypatch.setattr(loop, "encode", encode)
    return calls


def test_next_picks_random_is_a_prefix_and_uncertainty_takes_most_disagreed():
    diffs = np.eye(4)
    first = next_picks("random", [], 2, 4, seed=0, model=None, diffs=diffs)
    more = next_picks("random", first, 2, 4, seed=0, model=None, diffs=diffs)
    assert sorted(first + more) == [0, 1, 2, 3]
    assert first + more == [int(i) for i in np.random.default_rng(0).permutation(4)]
    ens = HeadEnsemble(2, 1.0, 0)
    ens.weights = np.array([[1.0, 0.0, 0.0, 5.0], [1.0, 0.0, 0.0, -5.0]])  # members disagree only on item 3
    assert next_picks("uncertainty", [0], 2, 4, seed=0, model=ens, diffs=diffs) == [3, 1]
    assert ens.accuracy(np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])) == 0.5


def test_labels_to_reach():
    assert labels_to_reach([(100, 0.5), (200, 0.61), (300, 0.7)], 0.6) == 200
    assert labels_to_reach([(100, 0.5)], 0.6) is None


def test_simulated_loop_writes_stages_and_resumes(tmp_path, fake_encoder):
    pool, dev = _pairs(tmp_path / "pool.jsonl", 60), _pairs(tmp_path / "dev.jsonl", 30, offset=1000)
    base = dict(output=str(tmp_path / "run"), data=str(pool), dev_data=str(dev), ensemble=3)
    half = LoopConfig(stages=[10, 20], **base).validate()
    loop.run(half)
    s10 = tmp_path / "run" / "uncertainty" / "stage_10"
    mtime = (s10 / "metrics.json").stat().st_mtime_ns
    with open(s10 / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == 30 and set(preds[0]) == {"id", "answer", "margin"} and preds[0]["id"] == "p1000"
    # the first stage is random for both strategies (same seed): same labels
    assert json.loads((s10 / "labels.json").read_text()) == \
        json.loads((tmp_path / "run" / "random" / "stage_10" / "labels.json").read_text())

    full = LoopConfig(stages=[10, 20, 30], **base).validate()
    loop.run(full)  # resumes: stages 10 and 20 are reused, only 30 runs
    assert (s10 / "metrics.json").stat().st_mtime_ns == mtime
    labels20 = json.loads((tmp_path / "run" / "uncertainty" / "stage_20" / "labels.json").read_text())
    labels30 = json.loads((tmp_path / "run" / "uncertainty" / "stage_30" / "labels.json").read_text())
    assert labels30[:20] == labels20 and len(set(labels30)) == 30

    fresh = LoopConfig(stages=[10, 20, 30], **{**base, "output": str(tmp_path / "fresh")}).validate()
    loop.run(fresh)  # a resumed run equals an uninterrupted one
    for s in ("random", "uncertainty"):
        a = json.loads((tmp_path / "run" / s / "stage_30" / "labels.json").read_text())
        b = json.loads((tmp_path / "fresh" / s / "stage_30" / "labels.json").read_text())
        assert a == b
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())
    assert [n for n, _ in curves["curves"]["random"]] == [10, 20, 30]
    assert all(v >= 0.9 for _, v in curves["curves"]["random"][1:])  # the synthetic signal is learnable
    assert (tmp_path / "run" / "curve_dev_accuracy.png").stat().st_size > 1000
    assert "Learning curve" in (tmp_path / "run" / "report.html").read_text()


def test_loop_config_problems():
    from alignloop.config import ConfigError

    with pytest.raises(ConfigError) as e:
        LoopConfig(output="", stages=[200, 100], strategies=["magic", "uncertainty"], ensemble=1).validate()
    msg = str(e.value)
    assert "output" in msg and "increasing" in msg and "magic" in msg and "ensemble" in msg
