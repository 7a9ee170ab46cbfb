import gzip
import json

import pytest
from testutil import DATA, write_jsonl

from alignloop.core.errors import DataError
from alignloop.data.readers import detect_kind, parse_hh, qa_prompt, read_preferences, read_records, read_rows
from alignloop.data.records import Preference, PromptCompletion, PromptRecord, Ranking, TextRecord, Unpaired


def test_hh_parser_on_a_real_line():
    with gzip.open(DATA / "hh-harmless" / "pairs.jsonl.gz", "rt") as fh:
        first = json.loads(fh.readline())
    msgs = parse_hh(first["chosen"])
    assert msgs[0] == {"role": "user", "content": "How much alcohol can I drink per day?"}
    assert msgs[1]["role"] == "assistant" and msgs[1]["content"].startswith("Alcohol is a depressant")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert msgs[-1]["content"].startswith("Sounds like alcohol is something you use to calm down when you feel")


def test_hh_file_reads_as_implicit_prompt_preferences():
    pairs = read_preferences(DATA / "hh-harmless" / "pairs.jsonl.gz")
    assert len(pairs) == 1812  # every row kept
    first = pairs[0]
    assert first.prompt.messages[-1] == {"role": "user",
                                         "content": "I feel much better when I get drunk and consume a lot of alcohol."}
    assert first.chosen.startswith("Sounds like alcohol is something you use to calm down")
    assert first.rejected.startswith("I’m glad that you’re enjoying your alcohol intake.")
    assert first.meta["_where"].endswith("pairs.jsonl.gz:1")


def test_hh_parser_splits_turns():
    assert parse_hh("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: bye") == [
        {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"}]
    with pytest.raises(ValueError):
        parse_hh("Assistant: no human first")


def test_splits_are_grouped_and_fixed():
    from alignloop.data.splits import group_key

    groups = {}
    for part in ("train", "dev", "test"):
        with gzip.open(DATA / "hh-harmless" / f"{part}.jsonl.gz", "rt") as fh:
            groups[part] = [group_key(json.loads(line)["chosen"]) for line in fh]
    assert {k: len(v) for k, v in groups.items()} == {"train": 1435, "dev": 194, "test": 183}
    assert not set(groups["train"]) & set(groups["test"])
    assert not set(groups["train"]) & set(groups["dev"])
    assert not set(groups["dev"]) & set(groups["test"])


def test_financebench_rows_become_question_plus_evidence_prompts():
    recs = read_records(DATA / "financebench" / "questions.jsonl")
    assert len(recs) == 100 and all(isinstance(r, PromptCompletion) for r in recs)
    r = recs[0]
    text = r.prompt.messages[0]["content"]
    assert "Context:\n3M Company and Subsidiaries" in text
    assert text.endswith("Question: Is 3M a capital-intensive business based on FY2022 data?")
    assert r.completion.startswith("No, the company is managing its CAPEX")
    assert r.meta["financebench_id"] == "financebench_id_00499"
    prompts = read_records(DATA / "financebench" / "questions.jsonl", kind="prompt")
    assert isinstance(prompts[0], PromptRecord) and prompts[0].meta["answer"] == r.completion


def test_question_context_answer_csv(tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text('question,context,answer\n"What was revenue?","Revenue was $5,000 million.","$5.0 billion"\n')
    (rec,) = read_records(f)
    assert rec.completion == "$5.0 billion"
    expected = qa_prompt("What was revenue?", "Revenue was $5,000 million.").messages[0]["content"]
    assert rec.prompt.messages[0]["content"] == expected


@pytest.mark.parametrize("rows,kind", [
    ([{"text": "hello"}], TextRecord),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}], PromptCompletion),
    ([{"prompt": "p", "completion": "c"}], PromptCompletion),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}], Preference),
    ([{"prompt": "p", "completion": "c", "label": True}], Unpaired),
    ([{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [2, 1, 3]}], Ranking),
    ([{"prompt": [{"role": "user", "content": "p"}]}], PromptRecord),
])
def test_format_detected_from_columns(tmp_path, rows, kind):
    (rec,) = read_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert isinstance(rec, kind)


def test_conversational_preference_and_implicit_string_prompt(tmp_path):
    rows = [{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
             "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]},
            ]
    (rec,) = read_records(write_jsonl(tmp_path / "c.jsonl", rows))
    assert (rec.prompt.messages, rec.chosen, rec.rejected) == ([{"role": "user", "content": "Q"}], "good", "bad")
    (rec,) = read_records(write_jsonl(tmp_path / "s.jsonl",
                                      [{"chosen": "Q: why? A: because", "rejected": "Q: why? A: no"}]))
    assert rec.prompt.raw and rec.prompt.text == "Q: why? A: " and (rec.chosen, rec.rejected) == ("because", "no")


def test_ranking_expands_to_weighted_pairs(tmp_path):
    f = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [2, 1, 3]}])
    pairs = read_preferences(f)
    assert [(p.chosen, p.rejected) for p in pairs] == [("b", "a"), ("a", "c"), ("b", "c")]
    assert all(abs(p.meta["weight"] - 1 / 3) < 1e-12 for p in pairs)
    assert len({p.meta["group"] for p in pairs}) == 1


def test_ranking_ties_kept_as_ties_or_left_out_with_weights_of_the_pairs_kept(tmp_path):
    """Issue #17, item 8: ties inside a ranking were always dropped while the 1/C(K,2) weights still counted them
    (ranks [1, 1, 2]: two pairs of 1/3, the ranking weighing 2/3 of a comparison)."""
    f = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 1, 2]},
                                           {"prompt": "q", "completions": ["x", "y"], "ranks": [1, 1]}])
    skip = read_preferences(f, ties="skip")  # the default
    assert [(p.chosen, p.rejected, p.tie, p.meta["weight"]) for p in skip] == [("a", "c", False, 0.5),
                                                                              ("b", "c", False, 0.5)]
    assert [(p.chosen, p.rejected, p.tie, p.meta["weight"]) for p in read_preferences(f)] == \
        [(p.chosen, p.rejected, p.tie, p.meta["weight"]) for p in skip]
    equal = read_preferences(f, ties="equal")
    assert [(p.chosen, p.rejected, p.tie) for p in equal] == [("a", "b", True), ("a", "c", False),
                                                              ("b", "c", False), ("x", "y", True)]
    assert [p.meta["weight"] for p in equal] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert len({p.meta["group"] for p in equal[:3]}) == 1 and equal[3].meta["group"] != equal[0].meta["group"]
    ranking = Ranking(None, ["a", "b", "c", "d"], [2, 1, 2, 3])
    assert ranking.pairs() == [(1, 0, False), (0, 3, False), (1, 2, False), (1, 3, False), (2, 3, False)]
    assert ranking.pairs(keep_ties=True) == [(1, 0, False), (0, 2, True), (0, 3, False), (1, 2, False),
                                             (1, 3, False), (2, 3, False)]
    with pytest.raises(ValueError, match="ties"):
        read_preferences(f, ties="half")


def test_strength_column_becomes_a_margin(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "strength": "much better"},
                                           {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.3}])
    assert [p.margin for p in read_preferences(f)] == [1.0, 0.3]


# ---- every bad-input error names file, line and field -------------------------------------------------


def test_malformed_json_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": }\n')
    with pytest.raises(DataError) as err:
        read_records(f)
    assert str(err.value).startswith(f"{f}:2: malformed JSON")


def test_missing_column_names_the_field(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl",
                    [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataError) as err:
        read_records(f)
    assert str(err.value) == f"{f}:2: field 'rejected': missing"


def test_empty_text_names_the_field(tmp_path):
    f = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "completion": "  "}])
    with pytest.raises(DataError) as err:
        read_records(f)
    assert str(err.value) == f"{f}:1: field 'completion': empty text"


def test_wrong_type_names_the_field(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "completion": 3}])
    with pytest.raises(DataError) as err:
        read_records(f)
    assert str(err.value) == f"{f}:1: field 'completion': expected a string, got int"
    g = write_jsonl(tmp_path / "m.jsonl", [{"prompt": [{"role": "robot", "content": "x"}], "completion": "c"}])
    with pytest.raises(DataError, match=r"m.jsonl:1: field 'prompt': message 0 has role 'robot'"):
        read_records(g)


def test_unknown_columns_and_unsupported_files(tmp_path):
    f = write_jsonl(tmp_path / "u.jsonl", [{"foo": 1}])
    with pytest.raises(DataError, match=r"u.jsonl:1: cannot tell the data format from its columns \(foo\)"):
        read_records(f)
    x = tmp_path / "d.xml"
    x.write_text("<a/>")
    with pytest.raises(DataError, match=r"d.xml: unsupported file type '.xml'"):
        list(read_rows(x))
    with pytest.raises(DataError, match=r"nope.jsonl: file not found"):
        read_records(tmp_path / "nope.jsonl")


def test_csv_line_numbers_count_the_header(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text("question,answer\nfine?,yes\n,no\n")
    with pytest.raises(DataError) as err:
        read_records(f)
    assert str(err.value) == f"{f}:3: field 'question': empty text"


# ---- every container format ----------------------------------------------------------------------------

ROWS = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]


def _check(path):
    recs = read_records(path)
    assert [(r.prompt.last_user, r.chosen, r.rejected) for r in recs] == [("p1", "a", "b"), ("p2", "c", "d")]


def test_jsonl_gz_json_csv_parquet_and_datasets_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in ROWS))
    _check(tmp_path / "a.jsonl.gz")
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    _check(tmp_path / "b.json")
    with gzip.open(tmp_path / "b2.json.gz", "wt") as fh:
        fh.write(json.dumps({"data": ROWS}))
    _check(tmp_path / "b2.json.gz")
    (tmp_path / "c.csv").write_text("prompt,chosen,rejected\np1,a,b\np2,c,d\n")
    _check(tmp_path / "c.csv")
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "d.parquet")
    _check(tmp_path / "d.parquet")
    # the layout datasets.Dataset.save_to_disk writes: Arrow stream files listed in state.json
    folder = tmp_path / "saved"
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    _check(folder)


def test_detect_kind_rejects_unknown():
    assert detect_kind({"question", "context", "answer"}) == "prompt_completion"
    assert detect_kind({"question", "context"}) == "prompt"
    with pytest.raises(ValueError):
        detect_kind({"x"})


# ---- an empty answer is data ---------------------------------------------------------------------------


def test_an_empty_answer_is_read_as_data(tmp_path):
    """The model said nothing and a labeler judged that: preferences, rankings and unpaired labels keep the empty
    answer (issue 20; before, `field 'chosen': empty text` refused the whole file). A demonstration still needs
    text."""
    u = [{"role": "user", "content": "Tell me how to pick a lock."}]
    f = write_jsonl(tmp_path / "empty.jsonl", [
        {"prompt": "Say nothing.", "chosen": "", "rejected": "Something."},
        {"prompt": u, "chosen": [{"role": "assistant", "content": ""}],
         "rejected": [{"role": "assistant", "content": "First, ..."}]},
        {"prompt": "q", "chosen": "a", "rejected": ""}])
    got = [(p.prompt.messages, p.chosen, p.rejected) for p in read_preferences(f)]
    assert got == [([{"role": "user", "content": "Say nothing."}], "", "Something."),
                   (u, "", "First, ..."), ([{"role": "user", "content": "q"}], "a", "")]
    r = write_jsonl(tmp_path / "rank.jsonl", [{"prompt": "p", "completions": ["", "b", "c"], "ranks": [1, 3, 2]}])
    assert [(p.chosen, p.rejected) for p in read_preferences(r)] == [("", "b"), ("", "c"), ("c", "b")]
    k = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "p", "completion": "", "label": False}])
    [rec] = read_records(k)
    assert (rec.completion, rec.label) == ("", False)
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": ""}])
    with pytest.raises(DataError) as err:
        read_records(sft)
    assert str(err.value) == f"{sft}:1: field 'completion': empty text"
