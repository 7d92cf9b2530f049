"""Falsifiers for harness.evaluate (contracts/claims/eval.yaml): path extraction, grounding, absolute-path flags, schema
validity, and a real greedy evaluation of the bundled base model."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import FlipError
from harness.evaluate import (
    call_paths,
    grounded,
    load_prompts,
    normalise_path,
    summarise,
    task_paths,
    trace_record,
)
from harness.toolcall import ToolCall, render_tool_call


def call(name: str, **tool_input) -> str:
    return render_tool_call(name, tool_input)


# ---------------------------------------------------------------------------------------------------------------------
# Which paths a task names
# ---------------------------------------------------------------------------------------------------------------------

TASK_PATHS = [
    ("Fix the off-by-one bug in src/lib.rs so that cargo test passes.", ["src/lib.rs"]),
    ("Bump the version in Cargo.toml, then update `README.md`.", ["Cargo.toml", "README.md"]),
    ("The mean() in stats/summary.py crashes on []: fix it (see tests/test_summary.py).",
     ["stats/summary.py", "tests/test_summary.py"]),
    ("Edit ./src/main.rs: add a --verbose flag.", ["src/main.rs"]),
    ("Add a module under src/parser/ for the tokenizer.", ["src/parser"]),
    ("Update the Makefile target.", ["Makefile"]),
    # not paths: URLs, version numbers, abbreviations, domains, word/word, absolute paths
    ("See https://docs.rs/serde/1.0/serde/index.html and upgrade serde from 1.0.197 to v1.0.210.", []),
    ("Support Python 3.11, e.g. in the CI; use read/write locks and/or a mutex; see example.com.", []),
    ("Do not touch /etc/hosts or ~/.bashrc.", []),
    ("Write a function that returns the median of a list.", []),
]


@pytest.mark.parametrize("task,expected", TASK_PATHS, ids=[f"task{i}" for i in range(len(TASK_PATHS))])
def test_task_paths(task, expected):
    assert task_paths(task) == expected


@pytest.mark.helper
@pytest.mark.parametrize("raw,normal", [("./src/lib.rs", "src/lib.rs"), ("src//lib.rs", "src/lib.rs"),
                                         ("src/", "src"), ("'src/lib.rs'", "src/lib.rs"), ("./", ""),
                                         ("/tmp/x/./a.rs", "/tmp/x/a.rs")])
def test_normalise_path(raw, normal):
    assert normalise_path(raw) == normal


@pytest.mark.helper
def test_call_paths_by_tool():
    assert call_paths(ToolCall("file_read", {"path": "./src/lib.rs"})) == ["src/lib.rs"]
    assert call_paths(ToolCall("grep", {"pattern": "fn main", "path": "src/"})) == ["src"]
    assert call_paths(ToolCall("glob", {"pattern": "src/**/*.rs"})) == []
    assert call_paths(ToolCall("glob", {"pattern": "Cargo.toml"})) == ["Cargo.toml"]
    assert "stats/summary.py" in call_paths(ToolCall("shell", {"command": "python -m pytest -q ./stats/summary.py"}))
    assert "Cargo.toml" in call_paths(ToolCall("shell", {"command": "cargo test --manifest-path=Cargo.toml"}))
    assert call_paths(ToolCall("memory", {"action": "recall", "key": "src/lib.rs"})) == []


# ---------------------------------------------------------------------------------------------------------------------
# Grounding: a valid call must name a path the task names
# ---------------------------------------------------------------------------------------------------------------------

FIX = "Fix the off-by-one bug in src/lib.rs so that cargo test passes."


def test_grounding_requires_the_named_path():
    assert grounded(FIX, [ToolCall("file_read", {"path": "src/lib.rs"})]) is True
    assert grounded(FIX, [ToolCall("file_read", {"path": "./src/lib.rs"})]) is True
    assert grounded(FIX, [ToolCall("shell", {"command": "cat src/lib.rs"})]) is True
    # a call, even a valid one, on another file is not grounded
    assert grounded(FIX, [ToolCall("file_read", {"path": "src/main.rs"})]) is False
    assert grounded(FIX, [ToolCall("shell", {"command": "ls"})]) is False
    # the reference's failure: a recording path that ends in the right name is not the workspace file
    assert grounded(FIX, [ToolCall("file_read", {"path": "/tmp/fix-teacher.Ab12Cd/src/lib.rs"})]) is False
    # an invalid call (wrong field name) does not ground the task even if it names the file elsewhere
    assert grounded(FIX, [ToolCall("file_read", {"file_path": "src/lib.rs"})]) is False
    assert grounded(FIX, [ToolCall("read_file", {"path": "src/lib.rs"})]) is False
    assert grounded(FIX, [ToolCall("file_edit", {"path": "src/lib.rs"})]) is False  # names it; misses old/new
    assert grounded(FIX, [ToolCall("file_read", {"path": "src/lib.rs", "line": 3})]) is False  # unknown field
    assert grounded(FIX, []) is False
    # a bare file name in the task is named by a call on a path ending in it
    assert grounded("Fix the bug in lib.rs.", [ToolCall("file_read", {"path": "src/lib.rs"})]) is True
    assert grounded("Fix the bug in lib.rs.", [ToolCall("file_read", {"path": "/tmp/fix-teacher.X/lib.rs"})]) is False
    # a task naming no path cannot be grounded or ungrounded
    assert grounded("Write a function that returns the median of a list.",
                    [ToolCall("file_read", {"path": "src/lib.rs"})]) is None


def test_absolute_paths_are_flagged():
    rec = trace_record("t1", FIX, call("shell", command="ls /tmp/fix-teacher.Ab12Cd/src 2>/dev/null"))
    assert rec["absolute_path_flag"] is True
    assert rec["absolute_paths"] == ["/tmp/fix-teacher.Ab12Cd/src"]  # /dev/null is not a workspace escape
    rec = trace_record("t2", FIX, call("file_read", path="~/notes.txt"))
    assert rec["absolute_path_flag"] is True
    rec = trace_record("t3", FIX, call("file_read", path="src/lib.rs"))
    assert rec["absolute_path_flag"] is False and rec["absolute_paths"] == []
    summary = summarise([trace_record("a", FIX, call("file_read", path="/tmp/x/src/lib.rs")),
                         trace_record("b", FIX, call("file_read", path="src/lib.rs"))])
    assert summary["absolute_path_calls"] == 1 and summary["tasks_with_absolute_path"] == 1
    assert summary["tasks_grounded"] == 1


# ---------------------------------------------------------------------------------------------------------------------
# Parsing outputs into the trace: calls by the apr-code rules, validity by the tool schemas
# ---------------------------------------------------------------------------------------------------------------------

def test_trace_counts_valid_calls_by_schema():
    outputs = {
        "prose": "```rust\nfn main() {}\n```\nThis fixes it.",
        "valid": call("file_read", path="src/lib.rs"),
        "wrong_field": call("file_read", file_path="src/lib.rs"),  # parses, but apr-code's file_read needs `path`
        "unknown_tool": call("read_file", path="src/lib.rs"),
        "two_calls": call("file_read", path="src/lib.rs") + "\n" + call("shell", command="cargo test"),
        "unclosed": '<tool_call>\n{"name": "shell", "input": {"command": "cargo test"}}',
        "bad_json": "<tool_call>\n{name: shell}\n</tool_call>",
    }
    records = {k: trace_record(k, FIX, v) for k, v in outputs.items()}
    assert records["prose"]["tool_calls"] == [] and records["prose"]["tool_use_count"] == 0
    assert records["valid"]["valid"] == [True]
    assert records["wrong_field"]["valid"] == [False] and records["wrong_field"]["errors"][0]
    assert records["unknown_tool"]["valid"] == [False]
    assert records["two_calls"]["tool_use_count"] == 2 and records["two_calls"]["valid"] == [True, True]
    assert records["unclosed"]["tool_calls"] == [{"name": "shell", "input": {"command": "cargo test"}, "closed": False}]
    assert records["unclosed"]["valid"] == [True]
    assert records["bad_json"]["tool_use_count"] == 0
    assert records["valid"]["grounded"] is True and records["wrong_field"]["grounded"] is False

    summary = summarise(list(records.values()))
    assert summary["tasks"] == 7
    assert summary["tasks_with_call"] == 5
    assert summary["tasks_with_valid_call"] == 3  # valid, two_calls, unclosed
    assert summary["valid_rate"] == round(3 / 7, 4)
    assert summary["total_calls"] == 6 and summary["valid_calls"] == 4
    assert summary["calls_per_tool"] == {"file_read": 3, "read_file": 1, "shell": 2}
    assert summary["tasks_naming_path"] == 7 and summary["tasks_grounded"] == 2
    assert summary["unclosed_calls"] == 1


def test_the_first_step_is_prompted_and_judged_in_the_dialect(tmp_path):
    """`flip eval --dialect D`: the prompt carries D's system prompt, and a call is valid (and grounds the task) by D's
    field names: file_edit old_string/new_string is valid in apr-runtime and invalid in apr-prompt, old/new the
    reverse."""
    from harness.cli import parse_command
    from harness.contracts import system_prompt
    from harness.decode import render_prompt
    from harness.models import load_tokenizer

    runtime_edit = call("file_edit", path="src/lib.rs", old_string="a", new_string="b")
    prompt_edit = call("file_edit", path="src/lib.rs", old="a", new="b")
    for dialect, valid, invalid in (("apr-runtime", runtime_edit, prompt_edit), ("apr-prompt", prompt_edit, runtime_edit)):
        good, bad = trace_record("t", FIX, valid, dialect), trace_record("t", FIX, invalid, dialect)
        assert (good["valid"], good["grounded"]) == ([True], True), dialect
        assert (bad["valid"], bad["grounded"]) == ([False], False), dialect
    assert trace_record("t", FIX, prompt_edit)["valid"] == [True]  # the default dialect is apr-prompt
    tokenizer = load_tokenizer("smollm2-135m")
    shown = render_prompt(tokenizer, "Fix src/lib.rs.", "apr-runtime")
    assert system_prompt("apr-runtime") in shown and system_prompt("apr-prompt") not in shown
    _, args = parse_command(["eval", "--model", "m", "--prompts", "p", "--out", "o", "--dialect", "apr-runtime"])
    assert args.dialect == "apr-runtime"


@pytest.mark.helper
def test_load_prompts_rejects_bad_lines(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"id": "a", "task": "Fix src/lib.rs"}\n\n{"id": 2, "task": "Add Cargo.toml"}\n')
    assert load_prompts(good) == [{"id": "a", "task": "Fix src/lib.rs"}, {"id": "2", "task": "Add Cargo.toml"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(FlipError, match="bad.jsonl:1"):
        load_prompts(bad)
    with pytest.raises(FlipError):
        load_prompts(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------------------------------
# A real greedy evaluation of the bundled base model
# ---------------------------------------------------------------------------------------------------------------------

HELD_OUT_LIKE = [
    {"id": "like-fix", "task": "The function `clamp` in src/lib.rs returns the wrong bound when lo > hi; fix it so "
                               "cargo test passes."},
    {"id": "like-py", "task": "stats/summary.py: median() crashes on an empty list. Make it return None instead."},
    {"id": "like-create", "task": "Add a unit test for parse_duration in tests/duration.rs."},
]


def test_base_model_emits_no_tool_call(tmp_path):
    """The bundled base answers in prose: zero `<tool_call>` blocks in its own output (a few greedy tokens suffice:
    a call would open the turn), and the trace holds the generated text only, never the prompt."""
    from harness.cli import main as flip

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in HELD_OUT_LIKE))
    trace = tmp_path / "base.jsonl"
    assert flip(["eval", "--model", "smollm2-135m", "--prompts", str(prompts), "--out", str(trace),
                 "--device", "cpu", "--max-new-tokens", "24"]) == 0
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    summary = json.loads((tmp_path / "base.summary.json").read_text())
    print("base trace:", [r["output"] for r in records])
    assert [r["id"] for r in records] == [p["id"] for p in HELD_OUT_LIKE]
    for record in records:
        assert record["output"].strip(), "the model generated nothing"
        assert "<|im_start|>" not in record["output"] and "You are apr-code" not in record["output"]
        assert 0 < record["new_tokens"] <= 24
        assert record["tool_use_count"] == 0 and record["tool_calls"] == []
    assert summary["tasks"] == 3 and summary["tasks_with_call"] == 0 and summary["total_calls"] == 0
    assert summary["tasks_naming_path"] == 3 and summary["grounded_rate"] == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# The batched greedy decoder against transformers' own generate, one prompt at a time
# ---------------------------------------------------------------------------------------------------------------------

SHARED = "<|im_start|>system\nYou are a tool. def main(): print('hello world')<|im_end|>\n<|im_start|>user\n"
OWN = ["The quick", "brown fox jumps over the lazy dog. 0123456789 <tool_call>", "x",
       "def main():\n    print('hello')", "The quick brown"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_batched_decoding_equals_decoding_each_prompt_alone(tmp_path, arch):
    """Prompts of different lengths sharing a system turn (one shares a word more with another), batch sizes that split
    them unevenly, with stop strings (rows leave at different steps) and without: every output is the one transformers'
    greedy generate gives that prompt alone. Two prompts in a batch share less than a whole row (a lone-row batch shares
    nothing), so both prefill paths run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.decode import generate, stop_token_ids
    from falsifiers.test_remap import tiny_base

    directory = tiny_base(tmp_path, arch)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    texts = [SHARED + own for own in OWN]
    alone = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
        alone.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert len(set(alone)) > 1, "the prompts must not all give the same output"
    for batch_size in (2, 3, 5):
        plain = generate(model, tokenizer, texts, 12, batch_size)
        assert [r["output"] for r in plain] == alone, batch_size
        stop = "o"
        cut = [text[:text.index(stop) + 1] if stop in text else text for text in alone]
        stopped = generate(model, tokenizer, texts, 12, batch_size, stop_strings=(stop,))
        assert [r["output"] for r in stopped] == cut, batch_size
        assert sum(r["hit_token_limit"] for r in stopped) < len(texts), "no row left its batch early"


@given(lengths=st.lists(st.integers(1, 900), max_size=60), batch_size=st.integers(1, 48),
       max_padding=st.sampled_from([0.0, 0.2, 0.5]))
@settings(max_examples=300, deadline=None)
def test_length_batches_bound_each_batchs_padding(lengths, batch_size, max_padding):
    """Every prompt is in exactly one batch; a batch holds at most batch_size prompts, shortest first, and its pad
    tokens (each row padded to its longest) are at most max_padding of the tokens it prefills; a batch is closed only
    when the next prompt would break one of those bounds (so prompts of one length fill batches to batch_size)."""
    from harness.decode import length_batches

    batches = length_batches(lengths, batch_size, max_padding)
    assert sorted(p for batch in batches for p in batch) == list(range(len(lengths)))
    order = [lengths[p] for batch in batches for p in batch]
    assert order == sorted(lengths)
    for batch, following in zip(batches, batches[1:] + [None]):
        rows = [lengths[p] for p in batch]
        assert 1 <= len(batch) <= batch_size
        assert sum(max(rows) - n for n in rows) <= max_padding * max(rows) * len(rows)
        if following is not None:
            grown = rows + [lengths[following[0]]]
            fits = len(grown) <= batch_size and sum(max(grown) - n for n in grown) <= max_padding * max(grown) * len(grown)
            assert not fits, (rows, grown)


def test_prompts_that_differ_in_a_short_task_share_one_batch(tmp_path, monkeypatch):
    """Prompts with one long shared turn and tasks of 1 to 12 tokens (every first step's shape) decode in one batch:
    the shared prefix counts in a batch's length, so a short task's few tokens are no reason for a second whole
    decode; prompts twice as long as the others get their own batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import harness.decode as decode
    from falsifiers.test_remap import tiny_base

    directory = tiny_base(tmp_path, "llama")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batches = []
    original = decode._decode_batch
    monkeypatch.setattr(decode, "_decode_batch", lambda m, t, texts, *rest: batches.append(len(texts)) or
                        original(m, t, texts, *rest))
    shared = "system: " + "rules " * 8  # the tiny tokenizer's context is 128 tokens, about 5 to a word
    texts = [shared + "task " + "w " * n for n in range(1, 9)]
    decode.generate(model, tokenizer, texts, 2, 40)
    assert batches == [len(texts)]
    batches.clear()
    decode.generate(model, tokenizer, texts + [shared + "long " * 12 + str(n) for n in range(3)], 2, 40)
    assert batches == [len(texts), 3]


def test_a_conversations_next_turn_prefills_only_what_is_new(tmp_path):
    """With the prompt cache, a conversation's next prompt prefills only the tokens after the longest prefix it shares
    with that conversation's last prompt (rows reusing prefixes of different lengths in one batch), replies exactly as
    prefilling whole prompts does, and the cache keeps only the conversations of the last call."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import harness.decode as decode
    from falsifiers.test_remap import tiny_base

    directory = tiny_base(tmp_path, "llama")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    shared = "system: " + "rules " * 6  # the tiny tokenizer's context is 128 tokens, about 5 to a word
    first = [shared + "task " + "w " * n + "next" for n in range(1, 6)]
    second = [shared + "task " + "w " * n + "seen " + "x " * (3 - n % 3) + "next" for n in range(1, 6)]
    keys = [f"episode-{n}" for n in range(1, 6)]
    widths = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    cache = decode.PromptCache()
    decode.generate(model, tokenizer, first, 3, 40, keys=keys, prompt_cache=cache)
    widths.clear()
    cached = decode.generate(model, tokenizer, second, 3, 40, keys=keys, prompt_cache=cache)
    prefilled = max(widths)  # the decode steps' width is 1
    whole = decode.generate(model, tokenizer, second, 3, 40)
    assert [r["output"] for r in cached] == [r["output"] for r in whole]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in first]
    ids_next = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in second]

    def common(a, b):
        n = 0
        while n < min(len(a), len(b) - 1) and a[n] == b[n]:
            n += 1
        return n
    new = [len(b) - common(a, b) for a, b in zip(ids, ids_next)]
    assert len(set(len(b) - n for b, n in zip(ids_next, new))) > 1  # the rows reuse prefixes of different lengths
    assert prefilled == max(new) < max(len(b) for b in ids_next) - decode.shared_prefix_length(ids_next)
    decode.generate(model, tokenizer, second[:2], 1, 40, keys=keys[:2], prompt_cache=cache)
    assert sorted(cache.entries) == keys[:2]


def test_a_prompt_past_the_models_context_is_counted_not_decoded(tmp_path):
    """A prompt whose tokens and reply exceed the model's context (max_position_embeddings) is not decoded into
    garbage: its output is empty and over_context true in the trace, the summary counts it, and the prompts that fit
    decode exactly as they would alone (issue 22: a 9.4k-token prompt past an 8,192-token context)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from falsifiers.test_remap import tiny_base
    from harness.decode import generate
    from harness.evaluate import summarise, trace_record

    directory = tiny_base(tmp_path, "llama")  # max_position_embeddings 128
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    short, long = "The quick brown fox", "The quick brown fox jumps over the lazy dog. " * 40
    assert len(tokenizer(long, add_special_tokens=False)["input_ids"]) > 128
    results = generate(model, tokenizer, [short, long, short], 12, 3)
    alone = generate(model, tokenizer, [short], 12, 1)[0]
    assert [r["over_context"] for r in results] == [False, True, False]
    assert results[1]["output"] == "" and results[1]["new_tokens"] == 0
    assert results[0]["output"] == results[2]["output"] == alone["output"] != ""
    records = [trace_record(str(i), "Fix src/a.py", r.pop("output"), **r) for i, r in enumerate(results)]
    assert summarise(records)["prompts_over_context"] == 1
