"""The FinanceBench-style scorer on literal cases (numbers, units, percents, rounding, yes/no, text, refusals)."""

import pytest

from alignloop.evaluate.qa import (
    extract_numbers,
    grade,
    llmware_points,
    numeric_match,
    score_answer,
    summarize,
)


@pytest.mark.parametrize("answer, gold", [
    ("$1577.00", "1,577"),
    ("1,577", "$1577.00"),
    ("65.4%", "0.654"),
    ("0.654", "65.4%"),
    ("1.6 billion", "$1,600 million"),
    ("$1,600 million", "1.6 billion"),
    ("The ratio is 24.3", "24.26"),          # rounded to the answer's precision
    ("about 30.8 percent", "30.8%"),
    ("-0.02", "-0.02"),
    ("(0.02)", "-0.02"),                      # accounting negative
    ("1,616", "$1,616 million"),              # unit left implicit on one side
    ("$5m", "5,000,000"),
])
def test_numeric_match_literal_cases(answer, gold):
    assert numeric_match(answer, gold)


@pytest.mark.parametrize("answer, gold", [
    ("1", "0.66"),            # within rounding of an integer, but 50% off the gold
    ("1,578", "$1577.00"),
    ("65.4", "0.66"),
    ("1.6 million", "1.6 billion"),
    ("in 2022", "2021"),  # a year is compared like a number when the gold has nothing else
    ("no numbers here", "24.26"),
    ("0.02", "-0.02"),
])
def test_numeric_mismatch(answer, gold):
    assert not numeric_match(answer, gold)


def test_extract_numbers_reads_units_and_skips_identifiers():
    nums = extract_numbers("Revenue was $1,600 million (up 2.5%) in FY2022 Q2, 3 bn in 2021")
    assert [(n.value, n.scale, n.percent) for n in nums] == [(1600.0, 1e6, False), (2.5, 1.0, True),
                                                            (3.0, 1e9, False), (2021.0, 1.0, False)]
    assert nums[-1].is_year and not nums[0].is_year


@pytest.mark.parametrize("answer, gold, expected", [
    ("$11,588 million", "$11588.00", "correct"),
    ("The answer is 11,000.", "$11588.00", "incorrect"),
    ("The information is not found in the context.", "$11588.00", "refusal"),
    ("", "24.26", "refusal"),
    ("Yes, 3M has paid dividends for decades.", "Yes, not only they distribute the dividends on a routine basis",
     "correct"),
    ("No.", "Yes, not only they distribute the dividends", "incorrect"),
    ("No, the quick ratio was 0.96, below 1.", "No. The quick ratio for 3M was 0.96 by Jun'23 close", "correct"),
    ("Data center segment", "Data Center", "correct"),
    ("Gaming", "Data Center", "incorrect"),
    ("AMCOR's adjusted EBITDA was $2,018 million in FY 2023", "AMCOR's Adj. EBITDA was $2,018mn in FY 2023", "correct"),
])
def test_score_answer(answer, gold, expected):
    assert score_answer(answer, gold) == expected


def test_llmware_points_and_hallucination_needs_context():
    gold, ctx = "$1616.00", "Net income 1,616 ; revenue 9,000"
    assert llmware_points("1,616", gold, context=ctx) == 1.0
    assert llmware_points("Not found.", gold, context=ctx) == 0.5
    assert grade("9,000", gold, context=ctx)[0] == "incorrect"        # a wrong figure, but from the context: 0
    assert llmware_points("9,000", gold, context=ctx) == 0.0
    assert grade("7,777", gold, context=ctx)[0] == "hallucination"     # a figure from nowhere: -1
    assert llmware_points("7,777", gold, context=ctx) == -1.0
    assert llmware_points("Not found", "Not found") == 1.0             # declining is right when the gold says so


def test_partial_long_text_answer():
    gold = "Amcor completed acquisitions of a flexibles manufacturing company in the Czech Republic"
    g, _ = grade("Amcor acquired a flexibles manufacturing company.", gold)
    assert g == "partial" and score_answer("Amcor acquired a flexibles manufacturing company.", gold) == "incorrect"
    assert llmware_points("Amcor acquired a flexibles manufacturing company.", gold) == 0.5


def test_summarize_counts():
    s = summarize(["correct", "refusal", "incorrect", "correct"], [1, 0.5, -1, 1])
    assert (s["n"], s["correct"], s["incorrect"], s["refusal"]) == (4, 2, 1, 1)
    assert s["correct_rate"] == 0.5 and s["llmware_points"] == 1.5


@pytest.mark.parametrize("answer, gold, question, expected", [
    # restating the question is not an answer: the question's words don't count towards recall
    ("The most cash came from investing and financing activities.", "In 2022, AMD brought in the most cashflow "
     "from Operations", "Which activity brought in the most cashflow for AMD in 2022?", "incorrect"),
    ("Operations brought in the most.", "In 2022, AMD brought in the most cashflow from Operations",
     "Which activity brought in the most cashflow for AMD in 2022?", "correct"),
    # a gold with a figure needs the figure
    ("The effective tax rate increased from 2.2% to 2.3%.", "The effective tax rate has changed from 20.6% to 16.6%",
     "How did the effective tax rate change?", "incorrect"),
    ("It went from 20.6% to 16.6%.", "The effective tax rate has changed from 20.6% to 16.6%",
     "How did the effective tax rate change?", "correct"),
    # "unable to" inside a claim is not a refusal; the context not containing the answer is
    ("No, American Express was unable to retain card members.", "Yes", None, "incorrect"),
    ("No, the context does not contain the answer.", "Yes", None, "refusal"),
    ("I'm sorry, but I can't help with that.", "24.26", None, "refusal"),
])
def test_text_rules_and_refusals(answer, gold, question, expected):
    assert score_answer(answer, gold, question) == expected
