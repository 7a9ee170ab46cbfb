"""The trainers' configs, one dataclass per stage (torch-free: ``alignloop --help`` imports only these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from alignloop.core.config import (
    ModelOptions,
    StageConfig,
    existing_file,
    opt,
    positive,
)


@dataclass
class TrainOptions(ModelOptions):
    data: str = opt("", "Training data: JSONL/JSON/CSV/Parquet (optionally .gz) or a saved datasets folder.")
    output: str = opt("", "Output folder for checkpoints, metrics.jsonl and the final model.")
    dev_data: Optional[str] = opt(None, "Held-out data evaluated every eval_every steps.")
    max_steps: Optional[int] = opt(None, "Optimizer steps to run; default: num_epochs over the data.")
    num_epochs: float = opt(1.0, "Passes over the data when max_steps is not set.")
    batch_size: int = opt(4, "Examples per micro-batch.")
    grad_accum: int = opt(1, "Micro-batches per optimizer step (effective batch = batch_size x grad_accum x "
                          "processes).")
    learning_rate: float = opt(2e-5, "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    lr_schedule: Literal["cosine", "linear", "constant"] = opt("cosine", "Learning-rate schedule after warm-up.")
    warmup_steps: int = opt(0, "Linear warm-up steps.")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 disables).")
    max_length: int = opt(512, "Longest sequence in tokens (prompt + answer).")
    truncation: Literal["left", "skip", "error"] = opt(
        "left", "Rows longer than max_length: cut the prompt from the left (never the answer), skip them "
        "(counted and reported), or stop with an error.")
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward (saves memory, costs ~1/3 more "
                                       "compute).")
    save_every: int = opt(0, "Save a resumable checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = opt(2, "How many of the newest checkpoints to keep in OUTPUT/checkpoints (0: all, "
                                "e.g. to evaluate every saved step afterwards).")
    eval_every: int = opt(0, "Evaluate on dev_data every N steps (0: only at the end).")
    log_every: int = opt(1, "Write metrics every N steps.")
    resume: bool = opt(False, "Continue from the last checkpoint in --output.")
    seed: int = opt(0, "Random seed (data order, initialisation, sampling).")
    limit: Optional[int] = opt(None, "Use only the first N training records (quick runs).")
    db: Optional[str] = opt(None, "Registry database URL; default: the SQLite file under the alignloop home.")

    def check(self) -> list[str]:
        p = super().check()
        if not self.data:
            p.append("data: a training data file is required (--data FILE)")
        if not self.output:
            p.append("output: an output folder is required (--output DIR)")
        p += existing_file(self, "data", "dev_data")
        p += positive(self, "batch_size", "grad_accum", "max_length", "max_steps", "num_epochs", "limit")
        p += positive(self, "learning_rate")
        p += positive(self, "warmup_steps", "save_every", "keep_checkpoints", "eval_every", "max_grad_norm",
                      "weight_decay", allow_zero=True)
        p += positive(self, "log_every")
        return p


@dataclass
class SFTConfig(TrainOptions):
    """Supervised fine-tuning on demonstrations, loss on the answer tokens only."""

    command: ClassVar[tuple[str, ...]] = ("sft",)
    runner: ClassVar[str] = "alignloop.trainers.sft:run"

    packing: bool = opt(False, "Pack several examples into each micro-batch up to batch_size x max_length tokens "
                        "(examples stay separate: per-sequence position ids, no cross-attention).")
    completion_only: bool = opt(True, "Compute the loss on answer tokens only (prompt tokens masked).")


@dataclass
class RewardTrainConfig(TrainOptions):
    """Train a reward model on pairwise or ranked preferences (Bradley-Terry)."""

    command: ClassVar[tuple[str, ...]] = ("reward", "train")
    runner: ClassVar[str] = "alignloop.trainers.reward:run"

    backbone: Literal["auto", "causal", "encoder"] = opt(
        "auto", "causal: a causal LM with a scalar head on its final states (--pooling); encoder: a sentence encoder "
        "(e.g. --model all-minilm-l6-v2) with mean pooling; auto: encoder for encoder aliases/folders, else causal.")
    ensemble: int = opt(1, "Number of reward heads on one backbone, each trained on its own bootstrap resample "
                        "of the pairs; score returns their mean and spread (reward_std / uncertainty).")
    ties: Literal["skip", "equal"] = opt("skip", "Tied / both-bad pairs: leave them out of the loss, or train "
                                         "toward equal reward.")
    use_margin: bool = opt(True, "Use a margin / strength column when the data has one: loss -log σ(r_w - r_l - m).")
    margin_scale: float = opt(1.0, "Multiplier on the margin column.")
    freeze_backbone: bool = opt(True, "Train only the head, on features of the frozen backbone computed once (and "
                                "cached): minutes instead of hours on a CPU, and the recipe docs/reward.md measures. "
                                "--no-freeze-backbone fine-tunes the backbone as well (all weights, or --lora).")
    pooling: Literal["last", "mean"] = opt("mean", "Causal backbones: the head reads the mean of the answer's tokens "
                                           "(the recipe with the frozen backbone, see docs/reward.md) or the "
                                           "answer's last token (as transformers' ForSequenceClassification does).")
    warm_start: bool = opt(False, "With --no-freeze-backbone: fit the head on frozen-backbone features first, then "
                           "fine-tune (full or --lora) from there.")
    head_epochs: int = opt(200, "Most L-BFGS iterations of head training on frozen features (freeze_backbone / "
                           "warm_start).")
    head_learning_rate: float = opt(1.0, "First step size of the L-BFGS head fit on frozen features.")
    head_weight_decay: float = opt(0.03, "L2 penalty on the head (frozen-feature training) on standardised "
                                   "features, in loss units: loss + wd/2 |w|^2.")
    backbone_layers: Optional[int] = opt(None, "Keep only the first N transformer layers of a causal backbone. "
                                         "Default: with the frozen backbone and --dev-data, the head is fit on "
                                         "every layer from a third of the depth up and the best on dev is kept "
                                         "(the backbone is cut there: faster to score, too); without --dev-data, "
                                         "or when fine-tuning, all layers.")
    reference_data: Optional[str] = opt(None, "Completions whose scores are normalised to mean 0 / std 1 after "
                                        "training; default: the training data's chosen and rejected answers.")
    norm_samples: int = opt(512, "Completions of the reference data used for normalisation.")
    batch_size: int = opt(8, "Preference pairs (or ranked groups) per micro-batch.")
    max_length: int = opt(512, "Longest prompt + answer in tokens; longer prompts are cut from the left.")
    learning_rate: float = opt(1e-5, "Peak learning rate (AdamW) for fine-tuning the backbone and head "
                               "(--no-freeze-backbone).")

    def check(self) -> list[str]:
        p = super().check()
        p += positive(self, "ensemble", "head_epochs", "backbone_layers", "head_learning_rate", "norm_samples",
                      "margin_scale")
        p += positive(self, "head_weight_decay", allow_zero=True)
        p += existing_file(self, "reference_data")
        if self.freeze_backbone and self.lora:
            p.append("lora: LoRA fine-tunes the backbone, which freeze_backbone (the default) keeps frozen: add "
                     "--no-freeze-backbone (with --warm-start to fit the head on frozen features first)")
        if self.freeze_backbone and self.warm_start:
            p.append("warm_start: the head fit is followed by fine-tuning only with --no-freeze-backbone (the "
                     "backbone is frozen by default)")
        return p


@dataclass
class RewardEvalConfig(StageConfig):
    """Evaluate a reward model on preference pairs; prints a JSON object as the last line."""

    command: ClassVar[tuple[str, ...]] = ("reward", "eval")
    runner: ClassVar[str] = "alignloop.trainers.reward:run_eval"

    model: str = opt("", "Reward model folder (an alignloop reward train --output).")
    data: str = opt("", "Preference data to evaluate on (pairs, rankings, or HH chosen/rejected transcripts).")
    output: Optional[str] = opt(None, "Also write the JSON object (and per-pair scores beside it) to this file.")
    batch_size: int = opt(16, "Groups per forward pass.")
    max_length: Optional[int] = opt(None, "Longest prompt + answer; default: the model's training max_length. "
                                    "Longer prompts are cut from the left; no pair is dropped.")
    bootstrap: int = opt(1000, "Bootstrap resamples for the accuracy confidence interval.")
    seed: int = opt(0, "Bootstrap seed.")
    limit: Optional[int] = opt(None, "Evaluate only the first N records.")
    precision: Literal["auto", "bf16", "fp32"] = opt("fp32", "Compute precision (fp32: exact, bf16: faster).")

    def check(self) -> list[str]:
        p = []
        if not self.model:
            p.append("model: a reward model folder is required (--model DIR)")
        if not self.data:
            p.append("data: a preference file is required (--data FILE)")
        p += existing_file(self, "data")
        p += positive(self, "batch_size", "max_length", "bootstrap", "limit")
        return p


@dataclass
class RewardScoreConfig(StageConfig):
    """Score prompt/completion records; writes them back with a reward field."""

    command: ClassVar[tuple[str, ...]] = ("reward", "score")
    runner: ClassVar[str] = "alignloop.trainers.reward:run_score"

    model: str = opt("", "Reward model folder.")
    data: str = opt("", "Records to score: prompt+completion, prompt+completions (generate output; adds a "
                    "rewards list), or preferences (adds chosen_reward / rejected_reward).")
    output: str = opt("", "Output JSONL: every input row with reward (and reward_std, uncertainty for ensembles).")
    batch_size: int = opt(16, "Records per forward pass.")
    max_length: Optional[int] = opt(None, "Longest prompt + answer; default: the model's training max_length.")
    limit: Optional[int] = opt(None, "Score only the first N records.")
    precision: Literal["auto", "bf16", "fp32"] = opt("fp32", "Compute precision (fp32: exact, bf16: faster).")

    def check(self) -> list[str]:
        p = []
        for name, what in (("model", "a reward model folder (--model DIR)"), ("data", "a data file (--data FILE)"),
                           ("output", "an output file (--output FILE)")):
            if not getattr(self, name):
                p.append(f"{name}: {what} is required")
        p += existing_file(self, "data")
        p += positive(self, "batch_size", "max_length", "limit")
        return p


@dataclass
class DPOConfig(TrainOptions):
    """Direct preference optimisation and its family (ipo, robust, hinge, simpo, kto)."""

    command: ClassVar[tuple[str, ...]] = ("dpo",)
    runner: ClassVar[str] = "alignloop.trainers.dpo:run"

    loss: Literal["dpo", "ipo", "robust", "hinge", "simpo", "kto"] = opt(
        "dpo", "Preference loss: dpo (sigmoid), ipo, robust (rDPO, noisy labels), hinge (SLiC), simpo "
        "(reference-free, length-normalised), kto (unpaired prompt/completion/label data, or pairs it unpairs).")
    beta: Optional[float] = opt(None, "Strength of the pull towards the reference (DPO's β; IPO's τ); default: "
                                "the paper's, 0.1 for dpo/ipo/robust/hinge/kto, 2.0 for simpo.")
    label_smoothing: Optional[float] = opt(None, "Assumed rate of flipped labels ε: conservative DPO for --loss dpo "
                                           "(default 0), the noise rate of --loss robust (default 0.1).")
    simpo_gamma: float = opt(1.0, "SimPO's target reward margin γ (the paper's γ/β = 0.5 with β = 2).")
    kto_desirable_weight: float = opt(1.0, "KTO's weight λ_D on desirable answers.")
    kto_undesirable_weight: float = opt(1.0, "KTO's weight λ_U on undesirable answers.")
    reference: Optional[str] = opt(None, "Reference model, frozen on the run's device (with --lora too); default: "
                                   "the starting model (with --lora, the same weights with the adapter switched "
                                   "off, so one model is in memory).")
    cache_reference: bool = opt(True, "Compute the reference log-probs once before training and cache them on "
                                "disk (keyed by the reference model, the token ids and the precision) for later "
                                "epochs and runs.")
    prefix_sharing: bool = opt(True, "Run the prompt once per pair: one row [prompt, chosen, rejected] where the "
                               "rejected answer attends to the prompt but not to the chosen one.")
    row_tokens: int = opt(0, "Token budget of one packed row of pairs (0: 2 x max_length); pairs are packed into "
                          "rows first-fit, so padding is only the tail of each row.")
    shuffle: bool = opt(True, "Shuffle the training data each epoch (false: file order, e.g. to compare runs step "
                        "by step with another trainer).")
    test_data: Optional[str] = opt(None, "Preference file scored once after training: implicit-reward accuracy "
                                   "with a 95% bootstrap interval and the length baseline, in eval.json.")

    def defaults(self) -> tuple[float, float]:
        """(β, label smoothing) with the paper defaults filled in."""
        beta = self.beta if self.beta is not None else (2.0 if self.loss == "simpo" else 0.1)
        ls = self.label_smoothing if self.label_smoothing is not None else (0.1 if self.loss == "robust" else 0.0)
        return beta, ls

    def check(self) -> list[str]:
        p = super().check()
        p += positive(self, "beta", "row_tokens", "simpo_gamma", "kto_desirable_weight", "kto_undesirable_weight",
                      allow_zero=True)
        if self.beta is not None and self.beta == 0:
            p.append("beta: must be > 0")
        if self.label_smoothing is not None and not (0 <= self.label_smoothing < 0.5):
            p.append(f"label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss not in ("dpo", "robust"):
            p.append(f"label_smoothing: only used by --loss dpo or robust, not {self.loss}")
        p += existing_file(self, "test_data")
        return p


@dataclass
class RLOptions(TrainOptions):
    """Shared by ppo, grpo and rloo. One *step* = one rollout (batch_size prompts × num_generations answers)
    followed by ppo_epochs passes over it in num_mini_batches optimizer steps, each of grad_accum micro-batches."""

    prompts: str = opt("", "Prompts to sample answers for (any file with a prompt, messages or question column).")
    reward: list[str] = opt([], "Reward source SPEC[:weight], repeatable: rm:DIR, python:module:function, "
                            "python:file.py:function.", repeat=True)
    reward_model: Optional[str] = opt(None, "Short for --reward rm:DIR.")
    data: str = opt("", "Unused by RL stages (they read --prompts).")
    batch_size: int = opt(8, "Prompts per rollout (each gets num_generations answers).")
    learning_rate: float = opt(1e-5, "Peak learning rate (AdamW); LoRA runs want ~1e-4.")
    lr_schedule: Literal["cosine", "linear", "constant"] = opt("constant", "Learning-rate schedule after warm-up.")
    num_generations: int = opt(1, "Answers sampled per prompt (K).")
    max_new_tokens: int = opt(64, "Longest answer in tokens; answers cut here never emitted EOS.")
    max_prompt_length: int = opt(512, "Longer prompts keep their first 48 and last tokens (the instruction and "
                                 "the question; the middle of a long context goes).")
    temperature: float = opt(0.7, "Sampling temperature; log-probs are computed under the same temperature.")
    ppo_epochs: int = opt(1, "Passes over each rollout.")
    num_mini_batches: int = opt(1, "Optimizer steps per pass over a rollout.")
    cliprange: float = opt(0.2, "PPO ratio clip ε.")
    kl_coef: float = opt(0.05, "β of the KL penalty to the reference model.")
    kl_estimator: Literal["k1", "k3"] = opt("k1", "Per-token KL estimator: k1 = log π − log π_ref, k3 = "
                                            "(π_ref/π − 1) − log(π_ref/π) (always ≥ 0).")
    missing_eos_penalty: float = opt(0.0, "Subtracted from the score of answers that never emit EOS.")
    kl_budget: Optional[float] = opt(None, "Stop the run when the mean sequence KL (nats) exceeds this: the held-out "
                                     "KL on a step that evaluates dev_data, otherwise the mean over the last "
                                     "4 training batches (one batch's KL is too noisy to stop on).")
    generation_batch_size: int = opt(32, "Sequences sampled together.")
    backend: Literal["transformers", "vllm"] = opt("transformers", "Sampling backend (vllm: GPU, when installed).")
    reference_device: Optional[str] = opt(None, "Put the frozen reference model on this device (e.g. cuda:1, cpu) so "
                                          "it does not share the policy's GPU memory; default: the policy's device.")
    reward_device: Optional[str] = opt(None, "Put the reward model(s) (rm: sources) on this device (e.g. cuda:1, "
                                       "cpu); default: the policy's device.")
    sample_every: int = opt(10, "Log a table of a few sample answers every N steps (samples.jsonl).")
    eval_samples: int = opt(1, "Answers sampled per dev prompt when evaluating (dev_data).")
    max_minutes: Optional[float] = opt(None, "Stop training after this many minutes of wall time (then the final "
                                       "evaluation and save run as usual).")

    def check(self) -> list[str]:
        p = [m for m in super().check() if not m.startswith("data:")]
        if not self.prompts:
            p.append("prompts: a prompts file is required (--prompts FILE)")
        if not self.reward and not self.reward_model:
            p.append("reward: give a reward source (--reward SPEC or --reward-model DIR)")
        p += existing_file(self, "prompts")
        p += positive(self, "num_generations", "max_new_tokens", "max_prompt_length", "temperature", "ppo_epochs",
                      "num_mini_batches", "generation_batch_size", "sample_every", "eval_samples", "kl_budget",
                      "max_minutes")
        p += positive(self, "cliprange", "kl_coef", "missing_eos_penalty", allow_zero=True)
        if self.batch_size * self.num_generations % (self.num_mini_batches * self.grad_accum):
            p.append(f"num_mini_batches x grad_accum ({self.num_mini_batches} x {self.grad_accum}) must divide the "
                     f"rollout size batch_size x num_generations ({self.batch_size * self.num_generations})")
        for name in ("reference_device", "reward_device"):
            value = getattr(self, name)
            if value is not None and value.split(":")[0] not in ("cpu", "cuda", "xpu", "mps", "npu"):
                p.append(f"{name}: '{value}' is not a device (cpu, cuda, cuda:N, ...)")
        if self.max_prompt_length <= 48:
            p.append("max_prompt_length: must be > 48")
        if self.backend == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                p.append("backend: 'vllm' needs the vllm package and a CUDA GPU (pip install vllm); the default "
                         "'transformers' backend works everywhere")
        return p


@dataclass
class PPOConfig(RLOptions):
    """PPO against a reward model with a per-token KL penalty (the InstructGPT recipe)."""

    command: ClassVar[tuple[str, ...]] = ("ppo",)
    runner: ClassVar[str] = "alignloop.trainers.ppo:run"

    ppo_epochs: int = opt(4, "Passes over each rollout.")
    num_mini_batches: int = opt(2, "Optimizer steps per pass over a rollout.")
    gamma: float = opt(1.0, "GAE discount γ.")
    lam: float = opt(0.95, "GAE λ.")
    cliprange_value: float = opt(0.2, "Value clip ε (around the rollout's values).")
    vf_coef: float = opt(0.1, "Weight of the value loss.")
    target_kl: Optional[float] = opt(None, "Adaptive KL controller: move β so the sequence KL approaches this "
                                     "target (nats); off when unset (fixed β).")
    kl_horizon: int = opt(10000, "Adaptive KL controller horizon (samples).")
    whiten_rewards: bool = opt(False, "Whiten the per-token rewards (mean kept) before GAE.")
    critic_learning_rate: Optional[float] = opt(None, "Critic learning rate; default: learning_rate.")


@dataclass
class GRPOConfig(RLOptions):
    """GRPO: K samples per prompt, group-relative advantages, no critic."""

    command: ClassVar[tuple[str, ...]] = ("grpo",)
    runner: ClassVar[str] = "alignloop.trainers.grpo:run"

    num_generations: int = opt(4, "Answers sampled per prompt (K, the group).")
    kl_coef: float = opt(0.04, "β of the KL term.")
    kl_estimator: Literal["k1", "k3"] = opt("k3", "Per-token KL estimator (k3 as a loss term: ≥ 0, low variance).")
    kl_in: Literal["loss", "reward"] = opt("loss", "KL as a loss term (GRPO) or subtracted from the reward.")
    scale_rewards: bool = opt(True, "Divide group-centred rewards by the group's std (false: Dr. GRPO).")

    def check(self) -> list[str]:
        p = super().check()
        if self.num_generations < 2:
            p.append("num_generations: GRPO needs at least 2 answers per prompt")
        return p


@dataclass
class RLOOConfig(RLOptions):
    """RLOO: K samples per prompt, leave-one-out baseline, no critic."""

    command: ClassVar[tuple[str, ...]] = ("rloo",)
    runner: ClassVar[str] = "alignloop.trainers.rloo:run"

    num_generations: int = opt(4, "Answers sampled per prompt (K).")
    kl_in: Literal["loss", "reward"] = opt("reward", "KL subtracted from the reward (RLOO) or as a loss term.")
    scale_rewards: bool = opt(False, "Divide the advantages by the batch std.")

    def check(self) -> list[str]:
        p = super().check()
        if self.num_generations < 2:
            p.append("num_generations: RLOO needs at least 2 answers per prompt")
        return p
