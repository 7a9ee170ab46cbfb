"""TRL's side of benchmarks/dpo_vs_trl.py; runs in TRL's environment (dpo_vs_trl.py --trl-python). Prints one
JSON line.

TRL 1.16 DPOTrainer with its defaults (sigmoid loss, β 0.1, reference model = a frozen copy, padding collator,
AdamW, linear schedule, grad clip 1.0), fp32, on pre-tokenised pairs handed over by the benchmark so both
trainers see exactly the same tokens (TRL's own chat-template tokenisation is skipped: the dataset's
prompt_ids / chosen_ids / rejected_ids go straight to its collator), in file order (sequential sampler).
"""

import json
import resource
import sys
import time

import torch


def main() -> None:
    a = json.loads(sys.argv[1])
    torch.set_num_threads(a.get("threads", torch.get_num_threads()))
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(x) for x in open(a["tokens"])]
    ds = Dataset.from_list([{"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"],
                             "rejected_ids": r["rejected_ids"]} for r in rows])
    DPOTrainer._prepare_dataset = lambda self, dataset, *args, **kw: dataset  # already tokenised
    tok = AutoTokenizer.from_pretrained(a["model"])
    model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
    args = DPOConfig(output_dir=a["output"], per_device_train_batch_size=a["batch_size"], learning_rate=a["lr"],
                     max_steps=a["steps"], logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                     fp16=False, use_cpu=True, max_length=a["max_length"], seed=0, dataloader_num_workers=0,
                     train_sampling_strategy="sequential", disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    t = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"side": "trl", "losses": losses, "train_s": wall, "pairs": a["steps"] * a["batch_size"],
                      "runtime_s": out.metrics.get("train_runtime"),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
