import pytest
import torch

from alignloop.core.errors import DataError
from alignloop.data.batching import Example, SkipReport, answer_mask, batches, fit_length, flatten
from alignloop.data.records import Prompt
from alignloop.data.templates import encode_answer, encode_prompt
from alignloop.models.load import tiny_tokenizer


def test_prompt_mask_against_literal_token_ids():
    tok = tiny_tokenizer()
    prompt = Prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    p = encode_prompt(tok, prompt)
    a = encode_answer(tok, "Hello there.")
    # <|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n
    assert p == [1, 9690, 198, 6077, 5453, 30, 2, 198, 1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198]
    assert a == [19556, 665, 30, 2]  # "Hello there." + <|im_end|> (EOS: the model learns to stop)
    ex = Example(p, a)
    assert answer_mask(ex) == [0] * 18 + [1, 1, 1, 1]
    fb = flatten([(ex.input_ids, answer_mask(ex))])
    assert fb.logit_positions().tolist() == [17, 18, 19, 20]  # the token before each answer token predicts it
    assert fb.targets().tolist() == [19556, 665, 30, 2]
    assert answer_mask(ex, completion_only=False) == [0] + [1] * 21


def test_pad_differs_from_eos():
    tok = tiny_tokenizer()
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0


def test_over_long_rows_cut_the_prompt_from_the_left_never_the_answer():
    rep = SkipReport()
    assert fit_length([1, 2, 3, 4, 5], [6, 7], 5, "left", rep) == ([3, 4, 5], [6, 7])
    assert rep.truncated == 1
    assert fit_length([1, 2], [3, 4, 5, 6, 7], 5, "left", rep) is None  # the answer alone fills max_length
    assert fit_length([1, 2, 3], [4, 5, 6], 5, "skip", rep, where="f.jsonl:9") is None
    assert dict(rep.reasons) == {"answer alone is longer than max_length": 1, "longer than max_length": 1}
    assert "1 skipped: longer than max_length (e.g. f.jsonl:9)" in rep.summary(10)
    with pytest.raises(DataError, match="longer than max_length=5"):
        fit_length([1, 2, 3], [4, 5, 6], 5, "error", rep, where="f.jsonl:9")


def test_flattened_batch_equals_separate_forward_passes(tiny_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_path)).eval()
    a, b = [1, 520, 9531, 198, 19556, 665], [1, 4093, 198, 26843, 2]
    fb = flatten([(a, [0, 0, 0, 0, 1, 1]), (b, [0, 0, 0, 1, 1])])
    assert fb.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]]
    with torch.no_grad():
        packed = model(input_ids=fb.input_ids, position_ids=fb.position_ids, use_cache=False).logits[0]
        sep_a = model(input_ids=torch.tensor([a])).logits[0]
        sep_b = model(input_ids=torch.tensor([b])).logits[0]
    assert torch.allclose(packed[:6], sep_a, atol=1e-5)
    assert torch.allclose(packed[6:], sep_b, atol=1e-5)  # the second sequence never sees the first


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert batches(7, 3, seed=1, epoch=0) == batches(7, 3, seed=1, epoch=0)
    assert batches(7, 3, seed=1, epoch=0) != batches(7, 3, seed=1, epoch=1)
    assert sorted(i for b in batches(7, 3, 1, 0) for i in b) == list(range(7))
