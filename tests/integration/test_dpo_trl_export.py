"""A preference file alignloop writes trains in TRL's DPOTrainer unchanged (TRL lives in its own venv)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from alignloop.data.readers import read_preferences
from alignloop.trainers.dpo import write_preferences

#: the python of an environment with TRL (not an alignloop dependency), e.g. /path/to/venv-with-trl/bin/python
TRL_PYTHON = os.environ.get("ALIGNLOOP_TRL_PYTHON", "")
HH = Path(__file__).resolve().parents[2] / "data" / "hh-harmless" / "dev.jsonl.gz"

TRL_SCRIPT = r"""
import json, sys
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
data, model_dir, out = sys.argv[1:4]
ds = load_dataset("json", data_files=data, split="train")
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
args = DPOConfig(output_dir=out, per_device_train_batch_size=2, max_steps=1, logging_steps=1, save_strategy="no",
                 report_to="none", bf16=False, use_cpu=True, max_length=256, disable_tqdm=True)
trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
trainer.train()
print(json.dumps({"losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}))
"""


def test_export_round_trips_through_alignloop(tmp_path):
    prefs = read_preferences(HH, limit=3)
    path = write_preferences(tmp_path / "prefs.jsonl", prefs)
    row = json.loads(path.read_text().splitlines()[0])
    assert set(row) >= {"prompt", "chosen", "rejected"}
    assert row["chosen"] == [{"role": "assistant", "content": prefs[0].chosen}]
    assert row["prompt"] == prefs[0].prompt.messages and "_where" not in row
    back = read_preferences(path)
    assert [(b.prompt.messages, b.chosen, b.rejected) for b in back] == \
        [(p.prompt.messages, p.chosen, p.rejected) for p in prefs]


def trl_python() -> str:
    """ALIGNLOOP_TRL_PYTHON, or a skip that says how to set it."""
    how = ("python3 -m venv /path/to/venv-with-trl && /path/to/venv-with-trl/bin/pip install torch==2.13.0 "
           "trl==1.16.0, then ALIGNLOOP_TRL_PYTHON=/path/to/venv-with-trl/bin/python")
    if not TRL_PYTHON:
        pytest.skip(f"ALIGNLOOP_TRL_PYTHON is unset: TRL lives in its own environment ({how})")
    if not Path(TRL_PYTHON).is_file():  # set, but wrong: an error, not a silent skip
        pytest.fail(f"ALIGNLOOP_TRL_PYTHON={TRL_PYTHON} is not a file ({how})")
    return TRL_PYTHON


def test_trl_dpo_trainer_trains_on_alignloop_export(tmp_path):
    from alignloop.models.load import resolve_model

    python = trl_python()
    path = write_preferences(tmp_path / "prefs.jsonl", read_preferences(HH, limit=2))
    p = subprocess.run([python, "-c", TRL_SCRIPT, str(path), str(resolve_model("tiny")),
                        str(tmp_path / "trl")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert p.returncode == 0, p.stderr[-3000:]
    losses = json.loads(p.stdout.strip().splitlines()[-1])["losses"]
    assert len(losses) == 1 and losses[0] == pytest.approx(0.6931, abs=1e-3)  # step 1: policy == reference, log 2
