"""The context builder (alignloop/data/context.py): the passages of the evidence most relevant to the question, in
document order, within a character budget, and its callers (the reader behind ``alignloop eval``/``generate``/the
trainers/the loop, and the demo's data stage) all using it."""

from __future__ import annotations

import json

import pytest
from testutil import DATA, write_jsonl

from alignloop.data.context import CONTEXT_CHARS, build_context, evidence_passages, tokens
from alignloop.data.readers import qa_prompt, read_records

QUESTION = "What was ACME's FY2018 capital expenditure?"
ANSWER = "Capital expenditures were $1,577 million in fiscal 2018, up from $1,373 million in 2017."
P1 = ("ACME Corp annual report\n"
      "The board met four times during the period and reviewed the audit plan.\n"
      "Employees numbered 12,400 at the end of the period, most of them in Ohio.\n"
      "The company leases its headquarters under an agreement that ends in 2031.\n"
      "Management believes its facilities are adequate for current operations.\n"
      "Litigation described in Note 9 is not expected to be material.\n"
      f"{ANSWER}\n"
      "The increase reflects the new plant in Dayton.\n"
      "Marketing costs rose with the launch of two brands.")
# a flattened table, as FinanceBench evidence holds them: one cell a line
P2 = "Cash flow summary\nNet cash from operations\n$\n3,200\n$\n2,900\nDividends paid\n(1,100)\n(1,050)"
EVIDENCE = [{"evidence_text": P1, "evidence_page_num": 40}, {"evidence_text": P2, "evidence_page_num": 41}]


def test_the_answer_bearing_window_is_returned_not_the_first_characters():
    assert ANSWER not in P1[:200]  # the old cut loses it
    # the best window (at most 200 characters) around the sentence that names "capital expenditure" and 2018
    assert build_context(QUESTION, EVIDENCE, 200) == (
        "Litigation described in Note 9 is not expected to be material.\n"
        f"{ANSWER}\n"
        "The increase reflects the new plant in Dayton.")
    # a tighter budget: the answer sentence alone is the best window; what is left (117 of 120) takes the start of
    # the evidence, kept in document order, "..." where lines were left out
    assert build_context(QUESTION, EVIDENCE, 120) == f"ACME Corp annual report\n...\n{ANSWER}"


def test_everything_that_fits_is_kept_one_row_a_line():
    expected = P1 + "\n\nCash flow summary\nNet cash from operations $ 3,200 $ 2,900\nDividends paid (1,100) (1,050)"
    assert build_context(QUESTION, EVIDENCE, 1000) == expected  # table cells joined to their row's label
    assert build_context(QUESTION, EVIDENCE, None) == expected == build_context(QUESTION, EVIDENCE, 0)


def test_evidence_as_a_string_a_list_of_strings_or_of_items():
    as_items = build_context(QUESTION, EVIDENCE, 200)
    assert build_context(QUESTION, [P1, P2], 200) == as_items
    assert build_context(QUESTION, P1 + "\n\n" + P2, 200) == as_items
    assert evidence_passages(EVIDENCE) == [P1, P2] == evidence_passages([P1, P2])
    assert evidence_passages(P1) == [P1] and evidence_passages(None) == []


@pytest.mark.parametrize("evidence", [None, "", [], [""], "  \n \n", [{"evidence_text": " "}]])
def test_empty_evidence_gives_an_empty_context(evidence):
    assert build_context(QUESTION, evidence) == ""
    assert build_context(None, evidence, 5) == ""


def test_bad_evidence_and_budget_are_errors():
    with pytest.raises(ValueError, match="item 1 needs an 'evidence_text' string"):
        build_context(QUESTION, [{"evidence_text": "a"}, {"text": "b"}])
    with pytest.raises(ValueError, match="expected a string or a list of passages, got int"):
        build_context(QUESTION, 3)
    with pytest.raises(ValueError, match="budget must be >= 0"):
        build_context(QUESTION, EVIDENCE, -1)


def test_budget_respected_and_deterministic():
    for budget in range(1, 700, 7):
        text = build_context(QUESTION, EVIDENCE, budget)
        assert 0 < len(text) <= budget
        assert build_context(QUESTION, EVIDENCE, budget) == text
    assert build_context(QUESTION, EVIDENCE, 10) == "Capital"  # a unit longer than the budget is cut at a space
    rows = [json.loads(line) for line in (DATA / "financebench" / "questions.jsonl").read_text().splitlines()]
    built = [build_context(r["question"], r["evidence"]) for r in rows]
    assert max(len(c) for c in built) == CONTEXT_CHARS == 800  # the real evidence, at the default budget
    assert built == [build_context(r["question"], r["evidence"]) for r in rows]


def test_tokens_keep_figures_years_and_phrases():
    assert tokens("FY2018 capital expenditures of $1,577.00 million (3M); Capex") == [
        "fy2018", "2018", "capital", "expenditure", "capital_expenditure", "1577.00", "million", "3m", "3",
        "capital", "expenditure", "capital_expenditure"]


# ---------------------------------------------------------------------------------------------------------------
# The callers: the reader (eval, generate, trainers, loop) and the demo build the same context
# ---------------------------------------------------------------------------------------------------------------

FILLER = [f"Note {i}: the segment table for region {i} lists no changes this period." for i in range(1, 16)]
LONG = "\n".join(FILLER[:12] + [ANSWER] + FILLER[12:])
ROW = {"financebench_id": "fb_1", "question": QUESTION, "answer": "$1,577 million",
       "evidence": [{"evidence_text": LONG, "evidence_page_num": 7}]}


def test_eval_and_generate_read_raw_financebench_rows_through_the_builder(tmp_path):
    from alignloop.evaluate.qa_run import qa_items

    path = write_jsonl(tmp_path / "q.jsonl", [ROW])
    assert ANSWER not in LONG[:800]  # what a first-800-characters cut would give
    (item,) = qa_items(str(path))  # alignloop eval's reading
    assert ANSWER in item.prompt.last_user
    assert item.prompt.last_user == qa_prompt(QUESTION, build_context(QUESTION, ROW["evidence"], 800)).last_user
    (prompt,) = read_records(path, kind="prompt")  # generate's, the RL trainers' and the loop's reading
    assert prompt.prompt.last_user == item.prompt.last_user
    whole = qa_items(str(path), context_chars=0)[0].prompt.last_user  # eval --context-chars 0: all of it
    assert whole == qa_prompt(QUESTION, LONG).last_user
    # a 'context' column is used as given (a context built before, e.g. the demo's)
    given = write_jsonl(tmp_path / "c.jsonl", [{"question": QUESTION, "context": LONG, "answer": "x"}])
    assert read_records(given, kind="prompt")[0].prompt.last_user == whole


def test_demo_data_stage_builds_the_same_context_as_eval(tmp_path):
    from alignloop.evaluate.qa_run import qa_items
    from alignloop.pipelines.config import DemoConfig
    from alignloop.pipelines.demo import split_data

    path = write_jsonl(tmp_path / "q.jsonl", [ROW])
    cfg = DemoConfig(data=str(path), output=str(tmp_path / "demo"), sft_targets="contrastive")
    # contrastive: the question 3 times with its context, once with the answer's lines taken out
    assert split_data(cfg, tmp_path) == {"train": 1, "test": 0, "sft_rows": 4, "sft_declines": 1}
    (train,) = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert train["context"] == build_context(QUESTION, ROW["evidence"], 800) and ANSWER in train["context"]
    sft, *_, twin = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert twin["id"].endswith("#without") and ANSWER not in twin["prompt"][0]["content"]
    # the SFT prompt, the demo's evaluation prompt and alignloop eval's prompt of the raw row are one text
    assert sft["prompt"] == qa_prompt(QUESTION, train["context"]).to_json()
    assert qa_items(str(tmp_path / "train.jsonl"))[0].prompt.last_user == qa_items(str(path))[0].prompt.last_user


def test_bad_evidence_names_file_line_and_field(tmp_path):
    from alignloop.core.errors import DataError

    path = write_jsonl(tmp_path / "q.jsonl", [ROW, dict(ROW, evidence=[{"page": 3}])])
    with pytest.raises(DataError, match=r"q.jsonl:2.*evidence.*item 0 needs an 'evidence_text' string"):
        read_records(path, kind="prompt")
