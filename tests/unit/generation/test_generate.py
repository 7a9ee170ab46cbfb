import json
import subprocess

from testutil import python_cmd, write_jsonl

from alignloop.data.records import Prompt
from alignloop.generation.sampling import SamplingParams, left_pad, sample_texts, truncate_after_stop


def test_truncate_after_stop_keeps_the_stop_token_and_drops_padding():
    assert truncate_after_stop([5, 6, 2, 7, 0, 0], stop_ids=[2], pad_id=0) == ([5, 6, 2], True)
    assert truncate_after_stop([5, 6, 0, 0], stop_ids=[2], pad_id=0) == ([5, 6], False)


def test_left_pad_puts_real_tokens_at_the_end():
    ids, mask = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_generate_cli_writes_k_completions_per_prompt(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Hello?"},
                                                 {"id": "b", "prompt": [{"role": "user", "content": "Why?"}]},
                                                 {"id": "c", "question": "What?", "context": "Nothing."}])
    out = tmp_path / "gen.jsonl"
    proc = subprocess.run(python_cmd() + ["generate", "--model", "tiny", "--prompts", str(prompts),
                                          "--num-completions", "3", "--output", str(out), "--max-new-tokens", "8",
                                          "--seed", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert all(len(r["completions"]) == 3 for r in rows)
    assert rows[1]["prompt"] == [{"role": "user", "content": "Why?"}]
    assert rows[0]["model"] == "tiny"
    assert rows[0]["sampling"] == {"max_new_tokens": 8, "temperature": 0.8, "top_p": 1.0, "top_k": 0, "seed": 1}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["completions"] == 9


def test_sampling_is_reproducible_with_a_seed():
    from alignloop.models.load import load_causal_lm

    model, tok = load_causal_lm("tiny")
    ps = [Prompt([{"role": "user", "content": "Hi"}])]
    a = sample_texts(model, tok, ps, 2, SamplingParams(max_new_tokens=6, seed=5))
    b = sample_texts(model, tok, ps, 2, SamplingParams(max_new_tokens=6, seed=5))
    assert a == b and len(a[0]) == 2
