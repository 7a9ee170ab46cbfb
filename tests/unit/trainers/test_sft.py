import subprocess

import pytest
import torch
from testutil import python_cmd

import alignloop
from alignloop.core.errors import TrainingError
from alignloop.trainers import engine, sft
from alignloop.trainers.config import SFTConfig


def _cfg(tmp_path, data, **kw):
    base = dict(model="tiny", data=str(data), output=str(tmp_path / "out"), max_steps=4, batch_size=2,
                learning_rate=1e-3, precision="fp32", seed=3)
    base.update(kw)
    return SFTConfig(**base).validate()


def _losses(path):
    return [row["loss"] for row in engine.read_metrics(path) if "loss" in row]


def test_sft_cli_on_tiny_writes_model_metrics_and_config(tmp_path, sft_file):
    out = tmp_path / "run"
    proc = subprocess.run(python_cmd() + ["sft", "--model", "tiny", "--data", str(sft_file), "--output", str(out),
                                          "--max-steps", "6", "--lora", "--learning-rate", "1e-2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = engine.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert set(rows[0]) >= {"loss", "grad_norm", "learning_rate", "tokens_per_s", "tokens"}
    assert "12 of 12 rows used" in proc.stderr
    assert (out / "config.yaml").exists() and (out / "final" / "config.yaml").exists()
    # the saved folder is a plain transformers model (LoRA merged)
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    assert not any("lora" in n for n, _ in m.named_parameters())


def test_sft_learns_the_demonstrations(tmp_path, sft_file):
    final = sft.run(_cfg(tmp_path, sft_file, max_steps=30, learning_rate=3e-3, batch_size=4))
    losses = _losses(tmp_path / "out" / "metrics.jsonl")
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert (final / "model.safetensors").exists()


def test_loss_is_the_mean_over_answer_tokens(tmp_path, sft_file):
    """One step's loss equals a hand computation: mean NLL over the answer tokens of the batch."""
    from alignloop.data.readers import read_records
    from alignloop.models.load import load_causal_lm

    cfg = _cfg(tmp_path, sft_file, max_steps=1, batch_size=12, learning_rate=1e-9)
    sft.run(cfg)
    (logged,) = _losses(tmp_path / "out" / "metrics.jsonl")
    model, tok = load_causal_lm("tiny")
    examples, _ = sft.tokenize_examples(read_records(sft_file), tok, 512, "left")
    nll, n = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            logits = model(torch.tensor([ex.input_ids])).logits[0]
            lp = torch.log_softmax(logits, -1)
            for t in range(len(ex.prompt_ids), len(ex.input_ids)):
                nll -= lp[t - 1, ex.input_ids[t]].item()
                n += 1
    assert logged == pytest.approx(nll / n, rel=1e-5)


def test_grad_accumulation_matches_one_big_batch(tmp_path, sft_file):
    sft.run(_cfg(tmp_path / "a", sft_file, batch_size=4, grad_accum=1, max_steps=2))
    sft.run(_cfg(tmp_path / "b", sft_file, batch_size=2, grad_accum=2, max_steps=2))
    a = _losses(tmp_path / "a" / "out" / "metrics.jsonl")
    b = _losses(tmp_path / "b" / "out" / "metrics.jsonl")
    assert a == pytest.approx(b, rel=1e-5)


def test_resume_reproduces_the_uninterrupted_losses(tmp_path, sft_file, monkeypatch):
    full = _cfg(tmp_path / "full", sft_file, max_steps=5)
    sft.run(full)
    expected = _losses(tmp_path / "full" / "out" / "metrics.jsonl")

    crashed = _cfg(tmp_path / "crash", sft_file, max_steps=5, save_every=2)
    real_step, calls = engine.clip_and_step, {"n": 0}

    def crash_on_step_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the process dies mid-run, after the step-2 checkpoint... and step 3
        return real_step(*a, **k)

    monkeypatch.setattr(engine, "clip_and_step", crash_on_step_4)
    with pytest.raises(KeyboardInterrupt):
        sft.run(crashed)
    monkeypatch.setattr(engine, "clip_and_step", real_step)
    assert engine.latest_checkpoint(tmp_path / "crash" / "out").name == "step-0000002"
    sft.run(crashed.replace(resume=True))
    resumed = _losses(tmp_path / "crash" / "out" / "metrics.jsonl")
    assert len(resumed) == 5
    assert resumed == pytest.approx(expected, abs=1e-6)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, sft_file, monkeypatch):
    cfg = _cfg(tmp_path, sft_file, max_steps=4, save_every=1)
    real = sft.masked_token_nll
    calls = {"n": 0}

    def nan_on_third(*a, **k):
        calls["n"] += 1
        return real(*a, **k) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(sft, "masked_token_nll", nan_on_third)
    with pytest.raises(TrainingError) as err:
        sft.run(cfg)
    assert "loss became nan at step 3" in str(err.value)
    assert "step-0000002" in str(err.value)
    assert not (tmp_path / "out" / "final").exists()
    assert engine.latest_checkpoint(tmp_path / "out").name == "step-0000002"


def test_library_train_and_predict(tmp_path, sft_file):
    final = alignloop.train("sft", model="tiny", data=str(sft_file), output=str(tmp_path / "lib"), max_steps=1,
                            precision="fp32")
    model = alignloop.load_model(str(tmp_path / "lib"))  # an earlier --output works as a model name
    answer = model.predict("What is 2 plus 2?", context="2 plus 2 is 4.", max_new_tokens=5)
    again = model.predict("What is 2 plus 2?", context="2 plus 2 is 4.", max_new_tokens=5)
    assert isinstance(answer, str) and answer == again  # greedy: deterministic
    assert final == tmp_path / "lib" / "final"


def test_a_fresh_run_into_a_used_folder_keeps_the_old_checkpoints_aside(tmp_path, sft_file):
    cfg = _cfg(tmp_path, sft_file, max_steps=2)
    sft.run(cfg)
    sft.run(cfg)  # same folder, no --resume: starts over
    out = tmp_path / "out"
    assert engine.latest_checkpoint(out).name == "step-0000002"
    assert len(list(out.glob("checkpoints.previous-*"))) == 1
    assert len(_losses(out / "metrics.jsonl")) == 2  # the metrics log starts over too


@pytest.mark.parametrize("keep, expected", [(None, ["step-0000003", "step-0000004"]),
                                            (1, ["step-0000004"]),
                                            (0, ["step-0000001", "step-0000002", "step-0000003", "step-0000004"])])
def test_keep_checkpoints_rotates_old_ones_or_keeps_all(tmp_path, sft_file, keep, expected):
    extra = {} if keep is None else {"keep_checkpoints": keep}
    sft.run(_cfg(tmp_path, sft_file, max_steps=4, save_every=1, **extra))
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == expected
