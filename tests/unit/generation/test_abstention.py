"""Declining when unsure: the confidence is the mean log-probability per answer token (end-of-turn included), the
threshold declines exactly the answers below it, the record travels in the model folder and ``answer`` applies it
(but not to candidates sampled for the judge), and a broken record is refused with its file named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from alignloop.core.errors import DataError
from alignloop.generation.abstention import (
    ABSTENTION_FILE,
    Abstention,
    apply,
    confidence,
    read_abstention,
    write_abstention,
)

DECLINE = "The context does not say."


def _prompts(*texts: str) -> list:
    from alignloop.data.records import Prompt

    return [Prompt([{"role": "user", "content": t}]) for t in texts]


@pytest.fixture(scope="module")
def tiny_lm(tiny_path):
    from alignloop.models.load import load_causal_lm

    return load_causal_lm(str(tiny_path))


def _by_hand(lm, tok, prompt: str, answer: str) -> float:
    """The mean log-probability of the answer's tokens and the end-of-turn token, from the model's logits."""
    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_prompt

    p = encode_prompt(tok, Prompt([{"role": "user", "content": prompt}]))
    a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logits = lm(torch.tensor([p + a])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(lp[len(p) - 1 + i, t].item() for i, t in enumerate(a)) / len(a)


def test_confidence_is_the_mean_log_probability_per_answer_token(tiny_lm):
    lm, tok = tiny_lm
    prompts, answers = ["What was revenue?", "Who audits it?"], ["1,577 million", "The auditor"]
    with torch.no_grad():
        got = confidence(lm, tok, _prompts(*prompts), answers)
    assert got == pytest.approx([_by_hand(lm, tok, p, a) for p, a in zip(prompts, answers)], abs=1e-4)


def test_the_threshold_declines_exactly_the_answers_below_it(tiny_lm):
    lm, tok = tiny_lm
    prompts = _prompts("What was revenue?", "Who audits it?")
    answers = [["1,577 million", "twelve"], ["The auditor"]]
    with torch.no_grad():
        c = confidence(lm, tok, _prompts("What was revenue?", "What was revenue?", "Who audits it?"),
                       ["1,577 million", "twelve", "The auditor"])
    mid = sorted(c)[1]  # the middle confidence: answers strictly below it decline, the one at it stays
    with torch.no_grad():
        out, conf = apply(Abstention(mid, DECLINE), lm, tok, prompts, answers)
    expect = [a if x >= mid else DECLINE for a, x in zip(["1,577 million", "twelve", "The auditor"], c)]
    assert out == [expect[:2], expect[2:]] and sum(x == DECLINE for x in expect) == 1
    assert conf == [pytest.approx(c[:2], abs=1e-5), pytest.approx(c[2:], abs=1e-5)]
    with torch.no_grad():
        assert apply(Abstention(-1e9, DECLINE), lm, tok, prompts, answers)[0] == answers  # nothing is that unsure


def test_answer_applies_the_record_in_the_model_folder_and_not_to_judged_candidates(tiny_path, tmp_path):
    from alignloop.data.readers import qa_prompt
    from alignloop.evaluate.qa_run import answer, answers_and_confidence

    folder = tmp_path / "policy"
    shutil.copytree(tiny_path, folder)
    prompts = [qa_prompt("What was revenue?", "Revenue was 1,577."), qa_prompt("Who audits it?", "KPMG audits.")]
    plain = answer(str(folder), prompts, max_new_tokens=4)
    assert read_abstention(folder) is None and all(a[0] != DECLINE for a in plain)
    # a random-weight model is unsure of everything it says (confidence far below 0)
    path = write_abstention(folder, Abstention(-0.8, DECLINE))
    assert json.loads(path.read_text()) == {"min_confidence": -0.8, "decline": DECLINE}
    assert read_abstention(folder) == Abstention(-0.8, DECLINE)
    res = answers_and_confidence(str(folder), prompts, max_new_tokens=4)
    assert res["answers"] == [[DECLINE], [DECLINE]] and res["policy_answers"] == plain
    assert all(c[0] < -0.8 for c in res["confidence"]) and res["abstention"]["min_confidence"] == -0.8
    assert answer(str(folder), prompts, max_new_tokens=4, abstain=False) == plain
    # the library API answers as the stage did too
    from alignloop import load_model

    assert load_model(str(folder)).predict("What was revenue?", "Revenue was 1,577.", max_new_tokens=4) == DECLINE
    # an --output folder holding final/ reads the record of its final model
    out = tmp_path / "run"
    shutil.copytree(folder, out / "final")
    assert read_abstention(out) == Abstention(-0.8, DECLINE)


@pytest.mark.parametrize("text, problem", [("{", "JSONDecodeError"), ('{"decline": "x"}', "min_confidence"),
                                            ('{"min_confidence": "high", "decline": "x"}', "ValueError"),
                                            ('{"min_confidence": -1, "decline": " "}', "declining text is empty")])
def test_a_broken_record_is_refused_with_its_file_named(tmp_path, text, problem):
    (tmp_path / ABSTENTION_FILE).write_text(text)
    with pytest.raises(DataError, match=problem) as err:
        read_abstention(tmp_path)
    assert str(tmp_path / ABSTENTION_FILE) in str(err.value)
