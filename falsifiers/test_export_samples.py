"""Falsifiers of `flip export` by example: remapping, paths, redaction, the instruction, the token budget,
duplicates, the balanced mode, sub-agents and the counts."""
from __future__ import annotations

import json

import pytest

from harness import FlipError
from harness.contracts import system_prompt
from harness.prompt import omitted_marker, render_instruction
from harness.tokens import counter
from harness.toolcall import parse_tool_calls

from export_helpers import _chatml, _export, _samples, _stream


# ----------------------------------------------------------------------------------------------- examples


def test_remap_follows_the_tool_map_fields(tmp_path):
    cwd = "/tmp/fix-teacher.AbC123"
    _stream(tmp_path / "in" / "t.ndjson", cwd, [
        ("Edit", {"file_path": f"{cwd}/src/lib.rs", "old_string": "a", "new_string": "b", "replace_all": True}, "ok"),
        ("Read", {"file_path": f"{cwd}/src/lib.rs", "offset": 3, "limit": 10}, "x"),
        ("Grep", {"pattern": "fn", "path": cwd, "-i": True, "output_mode": "content"}, "y"),
        ("Bash", {"command": f"cd {cwd} && cargo test", "timeout": 1000}, "z"),
        ("TodoWrite", {"todos": []}, "ok"),
    ], task="fix it")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full")
    calls = [parse_tool_calls(s["response"])[0] for s in _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")]
    assert [(c.name, c.input) for c in calls] == [
        ("file_edit", {"path": "src/lib.rs", "old": "a", "new": "b"}),
        ("file_read", {"path": "src/lib.rs", "offset": 3, "limit": 10}),
        ("grep", {"pattern": "fn", "path": ".", "case_insensitive": True}),
        ("shell", {"command": "cargo test"}),  # `cd . && ` is the working directory: the exact rewrite
    ]
    assert stats["unmappable"] == {"TodoWrite": 1} and stats["runtime_rewritten"] == {"shell:cd_working_dir": 1}


@pytest.mark.parametrize("slash", ["", "/"])
def test_paths_are_relative_in_results_and_tasks_too(tmp_path, slash):
    cwd = "/tmp/fix-teacher.AbC123"
    _stream(tmp_path / "in" / "t.ndjson", cwd + slash, [
        # a sibling whose name extends the directory's is not inside it: left as it is
        ("Bash", {"command": "cargo test"}, f"error at {cwd}/src/lib.rs:3\nin {cwd}\nbackup in {cwd}.bak/src, {cwd}-2"),
        ("Read", {"file_path": f"{cwd}/src/lib.rs"}, "1\tfn a() {}"),
        # Claude Code's own error ends a sentence with the directory
        ("Read", {"file_path": f"{cwd}/src/nope.rs"},
         f"<tool_use_error>File does not exist. Note: your current working directory is {cwd}.</tool_use_error>"),
        ("Bash", {"command": "ls"}, ""),
    ], prompt_file=f"Fix {cwd}/src/lib.rs please")
    _export([tmp_path / "in"], tmp_path / "out", mode="full")
    last = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")[-1]
    assert "error at src/lib.rs:3\nin .\n" in last["instruction"]
    assert f"backup in {cwd}.bak/src, {cwd}-2" in last["instruction"]
    assert "your current working directory is the project directory.</tool_use_error>" in last["instruction"]
    assert last["instruction"].startswith("Task:\nFix src/lib.rs please")
    assert cwd not in json.dumps(last).replace(f"{cwd}.bak/src", "").replace(f"{cwd}-2", "")


def test_each_secret_pattern_is_redacted_and_counted(tmp_path):
    secrets = {
        "github_token": "ghp_" + "a1B2" * 9,
        "anthropic_key": "sk-ant-" + "x" * 30,
        "aws_access_key_id": "AKIA" + "ABCDEFGHIJKLMNOP",
        "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    }
    result = "\n".join(secrets.values()) + "\npassword=hunter2hunter2 " + secrets["github_token"]
    _stream(tmp_path / "in" / "t.ndjson", "/w", [("Bash", {"command": "env"}, result),
                                                 ("Bash", {"command": "echo " + secrets["github_token"]}, ""),
                                                 ("Bash", {"command": "ls"}, "")], task="go")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full")
    text = (tmp_path / "out" / "apr_code_sft_full.jsonl").read_text()
    for name, value in secrets.items():
        assert value not in text and f"[REDACTED:{name}]" in text
        assert stats["redactions"][name] == (3 if name == "github_token" else 1)
    assert "hunter2hunter2" not in text and "password=[REDACTED:assignment]" in text


def test_instruction_is_task_then_observations_then_request(tmp_path):
    _stream(tmp_path / "in" / "t.ndjson", "/w", [
        ("Read", {"file_path": "/w/a.rs"}, "A"), ("Bash", {"command": "ls"}, "B"), ("Glob", {"pattern": "*"}, "C")],
        task="the task")
    _export([tmp_path / "in"], tmp_path / "out", mode="all")
    full = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    assert full[0]["instruction"] == render_instruction("the task")
    assert full[2]["instruction"] == (
        "Task:\nthe task\n\n"
        'Action: <tool_call>\n{"name": "file_read", "input": {"path": "a.rs"}}\n</tool_call>\nResult:\nA\n\n'
        'Action: <tool_call>\n{"name": "shell", "input": {"command": "ls"}}\n</tool_call>\nResult:\nB\n\n'
        "Reply with the next tool call.")
    assert [s["metadata"] for s in full] == [
        {"trajectory": "t.ndjson#0", "step": i, "tool": tool, "source": "t.ndjson"}
        for i, tool in enumerate(["file_read", "shell", "glob"])]
    curated = _samples(tmp_path / "out" / "apr_code_sft_curated.jsonl")
    assert curated == full[:1]


def test_oldest_observations_dropped_first_with_a_marker(tmp_path):
    calls = [("Bash", {"command": f"echo {i}"}, f"output {i} " + "word " * 150) for i in range(8)]
    _stream(tmp_path / "in" / "t.ndjson", "/w", calls, task="the task")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full", max_length=900)
    last = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")[-1]
    samples = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    dropped = [int(s["instruction"].split("\n\n[")[1].split()[0]) for s in samples if "\n\n[" in s["instruction"]]
    assert last["instruction"].startswith(f"Task:\nthe task\n\n[{dropped[-1]} earlier actions and results omitted]\n\n")
    assert "echo 6" in last["instruction"] and "echo 0" not in last["instruction"]
    assert stats["truncated"]["observations_dropped"] == sum(dropped) > 0
    assert stats["truncated"]["samples_with_observations_dropped"] == len(dropped)
    assert omitted_marker(1) == "[1 earlier action and result omitted]"
    assert omitted_marker(2) == "[2 earlier actions and results omitted]"


def _cut_oracle(text: str, keep: int) -> str:
    head = keep * 2 // 3
    return f"{text[:head]}\n[... {len(text) - keep} characters omitted ...]\n{text[len(text) - (keep - head):]}"


def test_long_results_and_tasks_keep_head_and_tail_around_a_counted_marker(tmp_path):
    """A result over --max-result-chars keeps its first 2/3 and last 1/3 around a marker stating how many characters
    went; a task that alone overflows the budget is cut the same way (shortened by quarters) and counted; a task
    that cannot fit even when cut to 32 characters drops the sample, counted."""
    result = "".join(f"{i:04d}" for i in range(100))  # 400 characters, every cut point distinguishable
    task = " ".join(f"w{i}" for i in range(900))
    _stream(tmp_path / "in" / "t.ndjson", "/w", [("Bash", {"command": "ls"}, result), ("Read", {"file_path": "/w/a"}, "A"),
                                                 ("Glob", {"pattern": "*.py"}, "a.py")], task=task)
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full", max_result_chars=90, max_length=600)
    first, second, third = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    keep = len(task)
    while render_instruction(_cut_oracle(task, keep)) != first["instruction"] and keep > 32:
        keep = keep * 3 // 4
    assert first["instruction"] == render_instruction(_cut_oracle(task, keep)) and keep < len(task)
    assert second["instruction"] == render_instruction(_cut_oracle(task, keep), (), omitted=1)
    assert third["instruction"] == render_instruction(_cut_oracle(task, keep), (), omitted=2)
    assert "[1 earlier action and result omitted]" in second["instruction"]
    assert stats["truncated"] == {"results_shortened": 1, "samples_with_observations_dropped": 2,
                                  "observations_dropped": 3, "tasks_shortened": 3, "samples_dropped_too_long": 0}

    huge = "".join(f"{i:05d}" for i in range(2000))  # 10,000 characters: only its kept ends are scrubbed
    _stream(tmp_path / "in2" / "t.ndjson", "/w", [("Bash", {"command": "ls"}, result), ("Bash", {"command": "ls"}, huge),
                                                  ("Read", {"file_path": "/w/a"}, "A")], task="short task")
    _export([tmp_path / "in2"], tmp_path / "out2", mode="full", max_result_chars=90)
    last = _samples(tmp_path / "out2" / "apr_code_sft_full.jsonl")[2]["instruction"]
    assert f"Result:\n{_cut_oracle(result, 90)}\n\n" in last and f"Result:\n{_cut_oracle(huge, 90)}\n\n" in last

    # the default limit (2000): exactly 2000 characters are kept whole, 20,000 keep 1333 + 667 around the marker
    exact, long = "x" * 2000, "".join(f"{i:05d}" for i in range(4000))
    _stream(tmp_path / "in4" / "t.ndjson", "/w", [("Bash", {"command": "a"}, exact), ("Bash", {"command": "b"}, long),
                                                  ("Read", {"file_path": "/w/a"}, "A")], task="t")
    stats = _export([tmp_path / "in4"], tmp_path / "out4", mode="full", max_length=20000)
    last = _samples(tmp_path / "out4" / "apr_code_sft_full.jsonl")[2]["instruction"]
    assert f"Result:\n{exact}\n\n" in last and f"Result:\n{_cut_oracle(long, 2000)}\n\n" in last
    assert stats["truncated"]["results_shortened"] == 1

    _stream(tmp_path / "in3" / "t.ndjson", "/w", [("Write", {"file_path": "/w/a", "content": "x " * 400}, "ok")],
            task=task)
    stats = _export([tmp_path / "in3"], tmp_path / "out3", mode="full", max_length=300)
    assert stats["samples"]["full"] == 0 and stats["truncated"]["samples_dropped_too_long"] == 1
    assert stats["truncated"]["tasks_shortened"] == 0


@pytest.mark.parametrize("option, bad, good", [("max_length", 0, 1), ("per_tool", 0, 1),
                                                ("max_result_chars", 63, 64)])
def test_out_of_range_options_are_refused_before_anything_is_written(tmp_path, option, bad, good):
    _stream(tmp_path / "in" / "t.ndjson", "/w", [("Read", {"file_path": "/w/a"}, "A")], task="t")
    with pytest.raises(FlipError, match="--" + option.replace("_", "-")):
        _export([tmp_path / "in"], tmp_path / "bad", **{option: bad})
    assert not (tmp_path / "bad").exists()
    _export([tmp_path / "in"], tmp_path / "good", mode="curated", **{option: good})
    assert (tmp_path / "good" / "export_stats.json").is_file()


def test_the_budget_is_counted_with_the_chosen_tokenizer(tmp_path):
    """--tokenizer decides the count: with a one-token-per-character tokenizer the same budget that a SmolLM2 count
    easily meets forces the oldest observations out, and every sample fits when counted that way."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    chars = Tokenizer(BPE(vocab={"[UNK]": 0}, merges=[], unk_token="[UNK]"))  # no merges: each character a token
    chars.save(str(tmp_path / "chars.json"))
    calls = [("Bash", {"command": f"echo {i}"}, "word " * 100) for i in range(6)]
    _stream(tmp_path / "in" / "t.ndjson", "/w", calls, task="the task")
    default = _export([tmp_path / "in"], tmp_path / "smollm2", mode="full", max_length=2500)
    per_char = _export([tmp_path / "in"], tmp_path / "chars", mode="full", max_length=2500,
                       tokenizer=str(tmp_path / "chars.json"))
    assert default["truncated"]["observations_dropped"] == 0 < per_char["truncated"]["observations_dropped"]
    count = counter(str(tmp_path / "chars.json"))
    samples = _samples(tmp_path / "chars" / "apr_code_sft_full.jsonl")
    assert all(count.count(_chatml(sample)) <= 2500 for sample in samples)
    # the oracle above is what the trainer tokenizes: SmolLM2's own chat template, up to its closing <|im_end|>
    from harness.models import load_tokenizer
    template = load_tokenizer("smollm2-135m").apply_chat_template(
        [{"role": r, "content": samples[-1][k]} for r, k in (("system", "system"), ("user", "instruction"),
                                                              ("assistant", "response"))], tokenize=False)
    assert template.rstrip("\n") == _chatml(samples[-1])


def test_duplicates_need_same_instruction_and_response(tmp_path):
    same = [("Read", {"file_path": "/w/a.rs"}, "A")]
    _stream(tmp_path / "in" / "a" / "t.ndjson", "/w", same, task="task one")
    _stream(tmp_path / "in" / "b" / "t.ndjson", "/w", same, task="task one")
    _stream(tmp_path / "in" / "c" / "t.ndjson", "/w", same, task="task two")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="all")
    assert stats["duplicates"] == {"curated": 1, "balanced": 1, "full": 1}
    assert stats["samples"] == {"curated": 2, "balanced": 2, "full": 2}


def test_balanced_is_a_seeded_sample_per_tool(tmp_path):
    for i in range(30):
        _stream(tmp_path / "in" / f"t{i:02d}" / "t.ndjson", "/w", [
            ("Bash", {"command": f"ls {i}"}, "x"), ("Read", {"file_path": f"/w/{i}.rs"}, "y")], task=f"task {i}")
    runs = {}
    for seed in (1, 1, 2):
        out = tmp_path / f"out{len(runs)}-{seed}"
        stats = _export([tmp_path / "in"], out, mode="balanced", per_tool=5, seed=seed)
        assert stats["per_tool"]["balanced"] == {"file_read": 5, "shell": 5}
        runs.setdefault(seed, []).append((out / "apr_code_sft_balanced.jsonl").read_bytes())
    assert runs[1][0] == runs[1][1]
    assert runs[1][0] != runs[2][0]
    chosen = [s["metadata"]["source"] for s in _samples(tmp_path / "out0-1" / "apr_code_sft_balanced.jsonl")]
    assert chosen != sorted(chosen)[: len(chosen)] or len(set(chosen)) > 5  # not the first N in path order
    first_five = {f"t{i:02d}/t.ndjson" for i in range(5)}
    assert set(chosen) != first_five


def test_messages_target_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    _stream(tmp_path / "in" / "t.ndjson", "/w", [
        ("Read", {"file_path": "/w/a.rs"}, "A"), ("Bash", {"command": "ls"}, "B"),
        ("Edit", {"file_path": "/w/a.rs", "old_string": "x", "new_string": "y"}, "ok")], task="t")
    _export([tmp_path / "in"], tmp_path / "out", mode="full", target="messages")
    path = tmp_path / "out" / "messages_full.jsonl"
    rows = _samples(path)
    assert rows[2]["messages"][2]["tool_calls"][0]["function"] == {
        "name": "file_edit", "arguments": {"path": "a.rs", "old": "x", "new": "y"}}
    assert [[m["role"] for m in row["messages"]] for row in rows] == [["system", "user", "assistant"]] * 3
    assert rows[0]["messages"][2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "file_read", "arguments": {"path": "a.rs"}}}]}
    assert rows[0]["metadata"] == {"trajectory": "t.ndjson#0", "step": 0, "tool": "file_read", "source": "t.ndjson"}
    assert rows[0]["messages"][0]["content"] == system_prompt()
    assert {t["function"]["name"] for t in rows[0]["tools"]} >= {"file_read", "file_edit", "shell"}
    loaded = datasets.load_dataset("json", data_files=str(path), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert len(loaded) == 3 and loaded[0]["messages"][1]["content"] == rows[0]["messages"][1]["content"]


def test_sub_agent_calls_get_the_sub_agent_prompt_as_task(tmp_path):
    env = {"session_id": "s"}
    path = tmp_path / "in" / "t.ndjson"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(o) + "\n" for o in [
        {"type": "system", "subtype": "init", "cwd": "/w", **env},
        {"type": "user", "parent_tool_use_id": None, "message": {"content": "main task"}, **env},
        {"type": "assistant", "parent_tool_use_id": None, "message": {"id": "m", "content": [
            {"type": "tool_use", "id": "T", "name": "Task", "input": {"prompt": "sub prompt", "description": "d"}}]}, **env},
        {"type": "assistant", "parent_tool_use_id": "T", "message": {"id": "n", "content": [
            {"type": "tool_use", "id": "R", "name": "Read", "input": {"file_path": "/w/x"}}]}, **env},
    ]))
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full")
    (sample,) = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    assert sample["instruction"] == render_instruction("sub prompt")
    assert sample["metadata"]["trajectory"] == "t.ndjson#1"
    assert stats["trajectories"] == 2 and stats["without_task"] == 0


def test_every_count_adds_up_across_calls_and_trajectories(tmp_path):
    """Each count in export_stats.json is a sum, not a flag: two of everything gives two. A call whose result never
    came is shown as "(no result recorded)"; an unnamed call is counted as "(unnamed)"."""
    env = {"session_id": "s", "parent_tool_use_id": None}

    def call(call_id, name, tool_input):
        block = {"type": "tool_use", "id": call_id, "input": tool_input, **({"name": name} if name else {})}
        return {"type": "assistant", "message": {"id": "m" + call_id, "content": [block]}, **env}

    def result(call_id, text):
        return {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": call_id, "content": text}]},
                **env}

    for name in ("one", "two"):  # no task (no prompt, no prompt.txt)
        path = tmp_path / "in" / name / "t.ndjson"
        path.parent.mkdir(parents=True)
        lines = [{"type": "system", "subtype": "init", "cwd": "/w", **env},
                 call("A", "Read", {"file_path": "/w/a"}),  # never answered
                 call("B", "Read", {"nope": 1}), result("B", "x"),  # no file_path: invalid input
                 call("C", None, {}), result("C", "x"),
                 call("D", "Bash", {"command": "cat big"}), result("D", "y" * 500),
                 call("E", "Bash", {"command": "ls"}), result("E", "z"),
                 call("F", "Grep", {"pattern": "x"})]  # never answered either: two in one file (and per worker)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full", max_result_chars=100)
    assert stats["without_task"] == 2 and stats["calls_without_result"] == 4
    assert stats["unmappable"] == {"(unnamed)": 2, "Read:invalid_input": 2}
    assert stats["truncated"]["results_shortened"] == 2
    last = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")[-1]["instruction"]
    assert 'Action: <tool_call>\n{"name": "file_read", "input": {"path": "a"}}\n</tool_call>\nResult:\n(no result recorded)' in last


def test_without_task_is_counted(tmp_path):
    _stream(tmp_path / "in" / "t.ndjson", "/w", [("Read", {"file_path": "/w/a"}, "A")])
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full")
    assert stats["without_task"] == 1
    assert _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")[0]["instruction"] == render_instruction(None)


@pytest.mark.helper
def test_bad_paths_are_flip_errors_and_foreign_files_are_reported(tmp_path):
    with pytest.raises(FlipError):
        _export([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "other.jsonl").write_text('{"a": 1}\nnot json\n')
    stats = _export([tmp_path / "in"], tmp_path / "out")
    assert stats["files"] == 0
    assert stats["files_skipped"] == {"other.jsonl": "none of stream-json, a Claude Code session, a CCPA trace"}
