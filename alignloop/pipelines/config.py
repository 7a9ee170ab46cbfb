"""The configs of ``alignloop loop`` and ``alignloop demo`` (torch-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

from alignloop.core.config import StageConfig, check_db_url, existing_file, opt, positive
from alignloop.core.paths import REPO_DATA
from alignloop.data.context import CONTEXT_CHARS

#: the grounded SFT demonstration where the built context does not hold the answer: it says what is missing and
#: reads as a refusal to :func:`alignloop.evaluate.qa.is_refusal` (a test checks both)
DECLINE_TEXT = "The context does not state this figure, so it cannot be determined from the context without guessing."

FINANCEBENCH = REPO_DATA / "financebench" / "questions.jsonl"


HH = REPO_DATA / "hh-harmless"


@dataclass
class LoopConfig(StageConfig):
    """Stages of increasing label counts: select labels, train, evaluate, plot learning curves."""

    command: ClassVar[tuple[str, ...]] = ("loop",)
    runner: ClassVar[str] = "alignloop.pipelines.loop:run"

    output: str = opt("", "Output folder: stage_<n>/ per strategy, curves and report.html.")
    data: str = opt(str(HH / "train.jsonl.gz"), "Pool of preference pairs (labels known in simulated mode); with "
                    "online, \"\" for none: every stage's labels are then on-policy.")
    dev_data: str = opt(str(HH / "dev.jsonl.gz"), "Fixed evaluation set (dev accuracy in simulated mode).")
    test_data: Optional[str] = opt(None, "Test set: pairs (simulated mode: test accuracy beside dev accuracy) or, "
                                   "in training mode, QA rows with gold answers.")
    stages: list[int] = opt([100, 200, 300, 400, 500, 600, 700, 800], "Label counts, increasing; training mode "
                            "takes 0: the starting model (--model) with no preference training.")
    strategies: list[str] = opt(["random", "uncertainty"], "Selection strategies to run: random, uncertainty.")
    simulated: bool = opt(True, "Reveal known labels in the order the strategy picks them (compare strategies).")
    methods: list[str] = opt(["reward"], "Training mode: what to train per stage, in this order: reward, dpo, grpo "
                             "(a short GRPO from the stage's DPO output, else from --model, on --prompts).")
    model: str = opt("smollm2-135m-instruct", "Training mode: the policy / reward-model backbone.")
    encoder: str = opt("all-minilm-l6-v2", "Simulated mode: the frozen sentence encoder of the head ensemble.")
    ensemble: int = opt(3, "Reward-model ensemble members (disagreement = uncertainty).")
    l2: float = opt(1.0, "Simulated mode: inverse L2 strength C of each logistic-regression head.")
    max_length: int = opt(256, "Tokens of prompt + response fed to the encoder / trainers.")
    online: bool = opt(False, "Training mode: before each stage after the first (and the first too, without a "
                       "pool), the latest policy answers fresh prompts, the judge labels the pairs, and those "
                       "on-policy pairs are that stage's new labels (the pool fills any shortfall).")
    prompts: Optional[str] = opt(None, "Online: the questions the policy answers each round (QA rows: question, "
                                 "context, 'answer' gold for the reference judge); default: the pool's prompts. "
                                 "The grpo method's questions (required with it).")
    prompts_split: Literal["all", "train", "test"] = opt("all", "Online: prompts rows to use: all, or the demo's "
                                                         "fixed FinanceBench train/test split (train for prompts).")
    test_split: Literal["all", "train", "test"] = opt("all", "Training mode: test_data rows to use: all, or the "
                                                      "demo's fixed FinanceBench train/test split (test).")
    prompts_per_round: Optional[int] = opt(None, "Online: prompts answered per round (default: all), taken in a "
                                           "seeded shuffle that moves on each round.")
    num_candidates: int = opt(2, "Online: answers sampled per prompt (K); every pair of them is judged.")
    temperature: float = opt(1.0, "Online: sampling temperature of the candidates.")
    add_gold: bool = opt(True, "Online: the gold answer joins each prompt's candidates (as in the demo), so the "
                         "judge always has a correct answer to prefer.")
    judge: Literal["reference", "local", "http"] = opt(
        "reference", "Online: the AI judge: reference (gold answers, no model), local (a HF model), http.")
    judge_model: Optional[str] = opt(None, "Online: the local judge's model, or the http judge's model name.")
    judge_base_url: Optional[str] = opt(None, "Online: the http judge's OpenAI-compatible base URL.")
    max_new_tokens: int = opt(48, "Training mode: longest answer in tokens (test answers, online candidates).")
    max_steps: int = opt(50, "Training mode: optimizer steps per stage of the reward and DPO trainers.")
    dpo_subsample: bool = opt(False, "Training mode: DPO trains on the max_steps x batch_size pairs its steps reach, "
                              "a seeded sample of the stage's labels, so its reference pass scores no pair it would "
                              "never see (CPU time); the reward model still trains on all of them.")
    reward_recipe: Literal["finetune", "frozen"] = opt(
        "finetune", "Training mode: the reward model: finetune (the backbone too, last-token pooling, --max-steps) or "
        "frozen (frozen-backbone features, answer-mean pooling, a logistic-regression head: minutes on a CPU).")
    reward_layers: Optional[int] = opt(None, "Frozen reward recipe: cut the backbone at this layer (default: the "
                                       "trainer's choice).")
    rl_steps: int = opt(2, "grpo method: GRPO steps per stage.")
    rl_prompts_per_step: int = opt(2, "grpo method: questions per GRPO step.")
    rl_generations: int = opt(4, "grpo method: answers per question (the group its baseline is taken over).")
    rl_temperature: float = opt(0.8, "grpo method: sampling temperature of the GRPO answers.")
    rl_learning_rate: float = opt(2e-4, "grpo method: GRPO learning rate (LoRA).")
    rl_reward: list[str] = opt(["python:alignloop.rewards:financebench_graded"],
                               "grpo method: the rule reward(s), KIND:ARG[:weight] (docs/rl.md); the stage's reward "
                               "model is added as rm:<stage>/reward:<rm_weight>.")
    rm_weight: float = opt(0.5, "grpo method: weight of the stage's reward model in the GRPO reward (0: the rule "
                           "alone; needs the reward method).")
    abstain_below: Optional[float] = opt(
        None, "Training mode: each trained stage's policy declines (decline_text) where its mean log-probability per "
        "answer token is below this (abstention.json in its folder; docs/loop-and-evaluation.md); stage 0's is "
        "measured, not applied. None: off.")
    decline_text: str = opt(DECLINE_TEXT, "Training mode: what a policy answers where it declines (abstain_below).")
    batch_size: int = opt(4, "Training mode: pairs per micro-batch of the reward and DPO trainers.")
    learning_rate: Optional[float] = opt(None, "Training mode: peak learning rate of the reward and DPO trainers "
                                         "(default: each trainer's own; the demo's LoRA DPO uses 5e-4).")
    seeds: list[int] = opt([0], "Seeds: each strategy runs once per seed; curves show the mean (and a 95% band).")
    limit: Optional[int] = opt(None, "Use only the first N pool rows and N dev rows (quick runs, tests).")
    db: Optional[str] = opt(None, "Training mode: registry database URL where the trainers' runs and each stage's "
                            "model (rlhf_<n>_labels) are recorded; default: the SQLite file under the alignloop home.")

    def check(self) -> list[str]:
        p = []
        if not self.output:
            p.append("output: an output folder is required (--output DIR)")
        if not self.stages or any(b <= a for a, b in zip(self.stages, self.stages[1:])) or self.stages[0] < 0:
            p.append(f"stages: must be label counts (0 or more), increasing, got {self.stages}")
        elif self.simulated and self.stages[0] == 0:
            p.append("stages: stage 0 (the starting model, no labels) is a training-mode stage (simulated: false); "
                     "simulated mode's reward heads need at least one label")
        bad = [s for s in self.strategies if s not in ("random", "uncertainty")]
        if bad:
            p.append(f"strategies: unknown {', '.join(bad)} (random, uncertainty)")
        badm = [m for m in self.methods if m not in ("reward", "dpo", "grpo")]
        if badm:
            p.append(f"methods: unknown {', '.join(badm)} (reward, dpo, grpo)")
        if "grpo" in self.methods:
            p += self._rl_problems()
        if "uncertainty" in self.strategies and self.ensemble < 2:
            p.append("ensemble: uncertainty needs at least 2 members")
        if self.online:
            p += self._online_problems()
        elif not self.data:
            p.append("data: a pool of preference pairs is required (only online training runs without one)")
        p += existing_file(self, "data", "dev_data", "test_data", "prompts")
        p += check_db_url(self.db)
        p += positive(self, "ensemble", "l2", "max_length", "max_steps", "limit", "batch_size", "max_new_tokens",
                      "num_candidates", "prompts_per_round", "learning_rate")
        p += positive(self, "temperature", allow_zero=True)
        return p

    def _rl_problems(self) -> list[str]:
        p = []
        if self.simulated:
            p.append("methods: grpo trains a policy; it needs simulated: false")
        if not self.prompts:
            p.append("prompts: the grpo method needs the questions its policy answers (QA rows with a gold 'answer', "
                     "e.g. --prompts data/financebench/questions.jsonl --prompts-split train)")
        if self.rm_weight and "reward" not in self.methods:
            p.append(f"rm_weight: {self.rm_weight} weights the stage's reward model in the GRPO reward, but methods "
                     f"has no reward; add reward to methods, or --rm-weight 0 for the rule reward alone")
        if not self.rl_reward and not self.rm_weight:
            p.append("rl_reward: the grpo method needs a reward: a rule (rl_reward) or the reward model (rm_weight)")
        p += positive(self, "rl_steps", "rl_prompts_per_step", "rl_generations", "rl_learning_rate", "reward_layers")
        p += positive(self, "rl_temperature", "rm_weight", allow_zero=True)
        return p

    def _online_problems(self) -> list[str]:
        p = []
        if self.simulated:
            p.append("online: on-policy rounds train and sample a policy; they need simulated: false (simulated "
                     "mode only reveals labels the pool already has)")
        if len([n for n in self.stages if n > 0]) < 2:
            p.append("online: the on-policy rounds feed the stages after the first; give at least 2 stages with "
                     "labels")
        if self.num_candidates < 2 and not (self.add_gold and self.judge == "reference"):
            p.append("num_candidates: the judge compares pairs; sample at least 2 per prompt (or 1 with add_gold "
                     "and the reference judge)")
        if self.judge == "http" and not (self.judge_base_url and self.judge_model):
            p.append("judge_base_url/judge_model: the http judge needs both")
        if not (self.prompts or self.data):
            p.append("prompts: online rounds need prompts to answer: a 'prompts' file, or a pool ('data') whose "
                     "prompts are used")
        source, name = (self.prompts, "prompts") if self.prompts else (self.data, "data")
        if self.judge == "reference" and source and Path(source).exists():
            # the first row says whether this is a judge-able prompt set; qa_items checks every row later
            from alignloop.core.errors import DataError
            from alignloop.data.readers import read_rows

            try:
                line, row = next(iter(read_rows(source)), (1, {}))
            except DataError as exc:
                return p + [f"{name}: {exc}"]
            if not isinstance(row.get("answer"), str):
                p.append(f"{source}:{line}: answer: the reference judge needs a gold 'answer' for every prompt it "
                         f"labels; give 'prompts:' a QA file (question, context, answer; e.g. FinanceBench rows), "
                         f"or use judge: local / http")
        return p


def stage_count(spec: str, total: int) -> int:
    """A demo stage's label count out of ``total`` labels: ``all``, a fraction (``1/2``, ``0.25``, ``50%``, ``1.0``:
    rounded half up) or a count (``0``, ``40``: a whole number without a decimal point)."""
    s = str(spec).strip().lower()
    try:
        if s == "all":
            return total
        if s.endswith("%"):
            frac = float(s[:-1]) / 100
        elif "/" in s:
            num, den = s.split("/")
            frac = int(num) / int(den)
        elif "." in s:
            frac = float(s)
        else:
            count = int(s)
            if count < 0:
                raise ValueError
            return count
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"'{spec}' is not a label count (40), a fraction (1/2, 0.5, 50%) or all") from None
    if not 0 <= frac <= 1:
        raise ValueError(f"'{spec}' is a fraction outside 0..1")
    return math.floor(frac * total + 0.5)


@dataclass
class DemoConfig(StageConfig):
    """The staged loop on the built-in FinanceBench questions: shared SFT and AI feedback, then per stage of labels a
    reward model, DPO and a GRPO step rewarded by a graded rule plus the reward model; the report."""

    command: ClassVar[tuple[str, ...]] = ("demo",)
    runner: ClassVar[str] = "alignloop.pipelines.demo:run"

    model: str = opt("smollm2-135m-instruct", "Base model.")
    output: str = opt("runs/demo", "Folder for every stage's output and the report (report.md, report.json).")
    data: str = opt(str(FINANCEBENCH), "FinanceBench-style questions (question, evidence/context, answer).")
    context_chars: int = opt(CONTEXT_CHARS, "Each question's context: the passages of its evidence most relevant to "
                             "the question within this many characters (CPU time; docs/data.md).")
    sft_steps: int = opt(20, "SFT optimizer steps (LoRA), shared by every stage.")
    sft_learning_rate: float = opt(1e-3, "SFT learning rate (LoRA).")
    sft_targets: Literal["gold", "grounded", "contrastive"] = opt(
        "gold", "SFT demonstrations: gold = the gold answer always; grounded = the gold answer where the "
        "question's built context holds it, else decline_text; contrastive = grounded plus, for each in-context "
        "question, its context with the answer's lines taken out and decline_text. Chosen by 3-fold cross-validation "
        "on the training questions (benchmarks/README.md): taught to decline, the 135M model declined questions whose "
        "context holds the figure as often as the others; gold with abstain_below was right on 13 of 70 and wrong "
        "on 39 (base 9 and 60), declining 4 of the 25 in-context questions.")
    sft_answer_share: float = opt(0.75, "sft_targets: contrastive: the in-context demonstrations are repeated until "
                                  "answers are about this share of all demonstrations (the rest decline; "
                                  "cross-validated: 0.6 declined 53 of 70).")
    decline_text: str = opt(DECLINE_TEXT, "What a trained stage's model answers where it declines (abstain_below), and "
                            "the demonstration for a training question whose built context does not hold the gold "
                            "answer (sft_targets: grounded, contrastive).")
    decline_candidate: str = opt("", "An answer that declines, judged beside the sampled ones and the gold, so that "
                                 "labels rank declining above inventing; empty (the default): none, the stage's "
                                 "abstention declines instead (DPO on such labels turned declining on or off for "
                                 "every question alike: benchmarks/README.md).")
    judge_gold: Literal["always", "in_context"] = opt(
        "always", "Where the gold answer joins the judged candidates: always, or only where the question's built "
        "context holds it (in_context: elsewhere no answer is quotable, and the labels rank declining, "
        "decline_candidate, above what the model invents; needs decline_candidate).")
    num_candidates: int = opt(2, "Answers sampled per training question for the judge (with the gold answer, every "
                              "pair of them is one label).")
    stages: list[str] = opt(["0", "1/2", "all"], "Stages of the loop, in labels: 0 (the SFT model alone, required), "
                            "a fraction of the judge's labels (1/2, 0.25, 50%), all, or a count (40).")
    dpo_steps: int = opt(4, "DPO optimizer steps per stage (LoRA, from the SFT model; it sees dpo_steps x batch_size "
                         "of the stage's labels); 0 skips DPO.")
    reward_model: bool = opt(True, "Train a reward model per stage on its labels: frozen backbone, answer-mean pooling "
                             "(one forward pass, then an L2 logistic-regression head); its score enters the GRPO "
                             "reward (rm:).")
    rm_weight: float = opt(0.5, "Weight of the stage's reward model in the GRPO reward (0: the graded rule alone).")
    abstain_below: Optional[float] = opt(
        -0.8, "Each trained stage's model declines (decline_text) where its mean log-probability per answer token is "
        "below this; chosen by 3-fold cross-validation on the training questions (benchmarks/README.md, \"Declining "
        "when unsure\"). None (--abstain-below none): off.")
    rl_steps: int = opt(1, "GRPO steps per stage after DPO, rewarded by the graded rule (the answer's llmware points) "
                        "plus the reward model (0 skips GRPO).")
    rl_generations: int = opt(4, "GRPO answers per question (the group its baseline is taken over).")
    max_new_tokens: int = opt(48, "Longest answer in tokens.")
    max_length: int = opt(512, "Longest training sequence in tokens.")
    batch_size: int = opt(4, "Training micro-batch.")
    limit: Optional[int] = opt(None, "Use only the first N questions (quick runs, tests).")
    seed: int = opt(0, "Seed for every stage.")
    db: Optional[str] = opt(None, "Registry database URL where the SFT run and each stage's model (rlhf_<n>_labels) "
                            "are recorded; default: the SQLite file under the alignloop home.")
    force: bool = opt(False, "Redo every stage even if its output exists.")

    def check(self) -> list[str]:
        p = positive(self, "context_chars", "sft_steps", "num_candidates", "max_new_tokens", "max_length",
                     "batch_size", "limit", "rl_generations") + \
            positive(self, "dpo_steps", "rl_steps", "rm_weight", allow_zero=True)
        if not 0 < self.sft_answer_share < 1:
            p.append(f"sft_answer_share: must be between 0 and 1 (exclusive), got {self.sft_answer_share}")
        if self.judge_gold == "in_context" and not self.decline_candidate.strip():
            p.append("decline_candidate: judge_gold: in_context needs a declining candidate (else the questions "
                     "whose context lacks the answer have nothing better than an invented one to prefer)")
        if self.sft_targets != "gold" and not self.decline_text.strip():
            p.append(f"decline_text: {self.sft_targets} SFT targets need the declining demonstration, got an empty "
                     "text")
        for spec in self.stages:
            try:
                stage_count(spec, 100)
            except ValueError as exc:
                p.append(f"stages: {exc}")
        if "0" not in [str(s).strip() for s in self.stages] or len(self.stages) < 2:
            p.append(f"stages: the demo's curve starts at 0 (the SFT model alone) and needs a stage with labels, "
                     f"got {self.stages}")
        return p + check_db_url(self.db)
