"""Falsifiers of `flip export` (harness/export.py): samples, accounting, scrubbing, budget, modes, targets, CLI."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import transcript_gen as gen
from harness.atomic import MANIFEST
from harness import FlipError
from harness.contracts import system_prompt
from harness.export import ExportOptions, export
from harness.prompt import omitted_marker, render_instruction
from harness.tokens import counter
from harness.toolcall import call_errors, parse_tool_calls, render_tool_call

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_TRANSCRIPTS = ROOT / "fixtures" / "transcripts"
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUIET = dict(progress=False)


def _chatml(sample: dict) -> str:
    """The sample as the trainer renders it through SmolLM2's chat template (pinned in test_the_budget_is_counted...)."""
    return (f"<|im_start|>system\n{sample['system']}<|im_end|>\n<|im_start|>user\n{sample['instruction']}<|im_end|>\n"
            f"<|im_start|>assistant\n{sample['response']}<|im_end|>")


def _export(paths, out, **options):
    return export([str(p) for p in paths], out, ExportOptions(**{**QUIET, **options}))


def _samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_all(recs, root: Path) -> None:
    for i, rec in enumerate(recs):
        gen.write(rec, root / f"task{i:02d}" / "v0")


def _outputs(out: Path) -> dict[str, bytes]:
    """The files an export wrote, without the output manifest (bookkeeping, the same for every export)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != MANIFEST}


# ------------------------------------------------------------------------------------------ property tests

def _every_closing_text() -> list:
    """One undamaged recording per closing text: drawn from the recording's cwd, hypothesis alone may never draw the
    one holding a call tag (a CI run's 20 examples did not)."""
    return [gen.build(random.Random(i), fmt, 2, True, final=final)
            for i, final in enumerate(gen.FINALS) for fmt in ("stream", "session")]


@SETTINGS
@given(st.lists(gen.damaged(), min_size=1, max_size=3))
@example(_every_closing_text())
def test_every_response_is_one_valid_call_or_a_final_answer_without_a_tag(recs):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        stats = _export([tmp / "in"], tmp / "out", mode="all")
        finals = 0
        for name in ("apr_code_sft_full.jsonl", "apr_code_sft_curated.jsonl", "apr_code_sft_balanced.jsonl"):
            for sample in _samples(tmp / "out" / name):
                if sample["metadata"].get("final"):
                    assert name != "apr_code_sft_curated.jsonl", "a final answer is not a first action"
                    assert sample["response"].strip() and sample["metadata"]["tool"] == "final"
                    assert "<tool_call" not in sample["response"] and "</tool_call" not in sample["response"]
                    finals += name == "apr_code_sft_full.jsonl"
                    continue
                calls = parse_tool_calls(sample["response"])
                assert len(calls) == 1 and calls[0].closed
                assert call_errors(calls[0]) == []
                assert sample["response"].count("<tool_call>") == 1
                assert list(sample) == ["instruction", "response", "system", "metadata"]
                assert sample["system"] == system_prompt()
        assert finals <= stats["final_candidates"] - sum(stats["finals_dropped"].values())


@SETTINGS
@given(st.lists(gen.damaged(), min_size=1, max_size=3))
def test_accounting_identity_holds_on_damaged_input(recs):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        stats = _export([tmp / "in"], tmp / "out", mode="full")
        assert stats["raw_tool_use"] == stats["remappable"] + sum(stats["unmappable"].values())
        assert stats["lines"]["read"] == stats["lines"]["used"] + sum(stats["lines"]["skipped"].values())
        on_disk = json.loads((tmp / "out" / "export_stats.json").read_text())
        assert on_disk["raw_tool_use"] == stats["raw_tool_use"]


@SETTINGS
@given(st.lists(gen.transcripts(), min_size=1, max_size=3))
def test_every_generated_call_is_counted_exactly_once(recs):
    """Undamaged recordings: the counts equal the generator's ground truth, sub-agent calls included."""
    expected, failed = Counter(), Counter()
    for rec in recs:
        expected.update(rec.expected)
        failed.update(rec.failed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        stats = _export([tmp / "in"], tmp / "out", mode="full")
    assert stats["raw_tool_use"] == sum(expected.values())
    assert stats["remappable"] == sum(n for name, n in expected.items() if name in gen.MAPPED)
    finals = stats["final_candidates"] - sum(stats["finals_dropped"].values())
    assert stats["failed"] == dict(sorted(failed.items()))
    assert stats["candidates"] == stats["remappable"] - sum(stats["failed"].values()) \
        - sum(stats["runtime_refused"].values()) + finals
    assert stats["samples"]["full"] + stats["duplicates"]["full"] + stats["truncated"]["samples_dropped_too_long"] \
        == stats["candidates"]
    assert stats["unmappable"] == {name: n for name, n in sorted(expected.items()) if name not in gen.MAPPED}


@SETTINGS
@given(st.lists(gen.damaged(), min_size=1, max_size=3))
def test_no_planted_secret_or_recording_path_survives(recs):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        for target in ("apr-code", "messages"):
            out = tmp / f"out-{target}"
            _export([tmp / "in"], out, mode="all", target=target, max_tokens=4096)
            text = b"".join(_outputs(out).values()).decode("utf-8")
            for rec in recs:
                for secret in rec.secrets:
                    assert secret not in text
                assert "-teacher." not in text


@SETTINGS
@given(st.lists(gen.damaged(gen.transcripts(big=3000)), min_size=1, max_size=2), st.sampled_from([330, 420, 700]))
def test_every_sample_fits_the_token_budget(recs, max_tokens):
    tok = counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        stats = _export([tmp / "in"], tmp / "out", mode="full", max_tokens=max_tokens, max_result_chars=600)
        samples = _samples(tmp / "out" / "apr_code_sft_full.jsonl")
        for sample in samples:
            assert tok.count(_chatml(sample)) <= max_tokens
        assert stats["candidates"] == len(samples) + stats["duplicates"]["full"] + \
            stats["truncated"]["samples_dropped_too_long"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(gen.damaged(), min_size=2, max_size=4), st.randoms(use_true_random=False))
def test_output_is_byte_identical_whatever_the_discovery_order(recs, rnd):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        _export([tmp / "in"], tmp / "a", mode="all")
        files = [p for p in (tmp / "in").rglob("*") if p.is_file() and p.suffix in (".jsonl", ".ndjson")]
        rnd.shuffle(files)
        _export(files, tmp / "b", mode="all")
        a, b = _outputs(tmp / "a"), _outputs(tmp / "b")
        assert a == b
        assert str(tmp).encode() not in b"".join(a.values())


# ----------------------------------------------------------------------------------------------- examples

def _stream(path: Path, cwd: str, calls, task=None, prompt_file=None):
    env = {"session_id": "s", "parent_tool_use_id": None}
    lines = [{"type": "system", "subtype": "init", "cwd": cwd, **env}]
    if task:
        lines.append({"type": "user", "message": {"content": [{"type": "text", "text": task}]}, **env})
    for i, (name, tool_input, result) in enumerate(calls):
        lines.append({"type": "assistant", "message": {"id": f"m{i}", "content": [
            {"type": "tool_use", "id": f"t{i}", "name": name, "input": tool_input}]}, **env})
        lines.append({"type": "user", "message": {"content": [
            {"type": "tool_result", "tool_use_id": f"t{i}", "content": result}]}, **env})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(o) + "\n" for o in lines))
    if prompt_file:
        (path.parent / "prompt.txt").write_text(prompt_file)
    return path


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
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full", max_tokens=900)
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
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full", max_result_chars=90, max_tokens=600)
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
    stats = _export([tmp_path / "in4"], tmp_path / "out4", mode="full", max_tokens=20000)
    last = _samples(tmp_path / "out4" / "apr_code_sft_full.jsonl")[2]["instruction"]
    assert f"Result:\n{exact}\n\n" in last and f"Result:\n{_cut_oracle(long, 2000)}\n\n" in last
    assert stats["truncated"]["results_shortened"] == 1

    _stream(tmp_path / "in3" / "t.ndjson", "/w", [("Write", {"file_path": "/w/a", "content": "x " * 400}, "ok")],
            task=task)
    stats = _export([tmp_path / "in3"], tmp_path / "out3", mode="full", max_tokens=300)
    assert stats["samples"]["full"] == 0 and stats["truncated"]["samples_dropped_too_long"] == 1
    assert stats["truncated"]["tasks_shortened"] == 0


@pytest.mark.parametrize("option, bad, good", [("max_tokens", 0, 1), ("per_tool", 0, 1),
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
    default = _export([tmp_path / "in"], tmp_path / "smollm2", mode="full", max_tokens=2500)
    per_char = _export([tmp_path / "in"], tmp_path / "chars", mode="full", max_tokens=2500,
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


def test_cli_writes_what_the_library_writes_and_summarises_its_counts(tmp_path, capsys):
    """`flip export` is a thin door onto export(): for the defaults and for every option set on the command line the
    files are byte-identical to the library's, and the printed summary states export_stats.json's counts."""
    from harness.cli import main

    calls = [("Read", {"file_path": f"/w/{name}.py"}, name * 300) for name in "abcdef"]
    calls += [("WebFetch", {"url": "u"}, "x"), ("WebFetch", {"url": "v"}, "x"), ("TodoWrite", {"todos": []}, "ok"),
              ("Agent", {"prompt": "p"}, "ok"), ("Grep", {"pattern": "def", "path": "/w"}, "a.py:1")]
    _stream(tmp_path / "in" / "t.ndjson", "/w", calls, task="fix a.py")
    (tmp_path / "in" / "other.jsonl").write_text('{"a": 1}\n')
    assert main(["export", str(tmp_path / "in"), "--out", str(tmp_path / "runs" / "cli")]) == 0  # parents made
    err = capsys.readouterr().err
    assert "flip export: " in err  # the progress bar (tqdm, on stderr)
    assert main(["export", str(tmp_path / "in"), "--out", str(tmp_path / "runs" / "cli")]) == 0  # into an existing dir
    stats = _export([tmp_path / "in"], tmp_path / "lib")
    assert _outputs(tmp_path / "runs" / "cli") == _outputs(tmp_path / "lib")
    summary = capsys.readouterr().err.splitlines()
    expected = {"files": 1, "files skipped": 1, "trajectories": 1, "raw tool_use": 11, "remappable": 7,
                "unmappable": 4, "without task": 0, "lines read": stats["lines"]["read"],
                "lines skipped": sum(stats["lines"]["skipped"].values()), "redactions": 0, "dropped: too long": 0}
    for label, value in expected.items():
        assert label.split() + [str(value)] in [line.split() for line in summary], (label, value, summary)
    for mode in ("curated", "balanced", "full"):
        row = f"samples {mode}".split() + [str(stats["samples"][mode]), "(duplicates", f"{stats['duplicates'][mode]})"]
        assert row in [line.split() for line in summary], (mode, summary)
    assert "flip export" in summary  # the title line
    assert "  unmappable: WebFetch 2, Agent 1, TodoWrite 1" in summary and "  skipped other.jsonl: " + stats["files_skipped"]["other.jsonl"] in summary

    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    Tokenizer(BPE(vocab={"[UNK]": 0}, merges=[], unk_token="[UNK]")).save(str(tmp_path / "chars.json"))
    options = dict(mode="balanced", target="messages", max_tokens=1500, per_tool=1, seed=7, max_result_chars=100,
                   tokenizer=str(tmp_path / "chars.json"))
    argv = ["--mode", "balanced", "--target", "messages", "--max-tokens", "1500", "--per-tool", "1", "--seed", "7",
            "--max-result-chars", "100", "--tokenizer", str(tmp_path / "chars.json"), "--quiet"]
    assert main(["export", str(tmp_path / "in"), "--out", str(tmp_path / "cli2"), *argv]) == 0
    _export([tmp_path / "in"], tmp_path / "lib2", **options)
    assert _outputs(tmp_path / "cli2") == _outputs(tmp_path / "lib2")
    assert set(_outputs(tmp_path / "cli2")) == {"messages_balanced.jsonl", "export_stats.json"}
    assert json.loads((tmp_path / "cli2" / "export_stats.json").read_text())["options"]["max_result_chars"] == 100
    assert capsys.readouterr().err == ""  # --quiet: no progress bar, no summary
    assert json.loads((tmp_path / "cli2" / "export_stats.json").read_text())["truncated"] != \
        json.loads((tmp_path / "runs" / "cli" / "export_stats.json").read_text())["truncated"]  # the tokenizer told

    for bad, says in (([], "the following arguments are required: PATH, --out"),
                      ([str(tmp_path / "in"), "--out", "o", "--mode", "most"], "argument --mode: invalid choice"),
                      ([str(tmp_path / "in"), "--out", "o", "--target", "chat"], "argument --target: invalid choice")):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", *bad])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err


def test_a_failed_export_leaves_the_previous_outputs_whole(tmp_path, monkeypatch):
    """Outputs are replaced atomically: an export that fails part-way (here the second transcript cannot be read, as
    when a file vanishes mid-run) leaves the previous outputs byte for byte and no partial or temporary files."""
    import harness.export as export_module

    for name in ("a", "b"):
        _stream(tmp_path / "in" / name / "t.ndjson", "/w", [("Read", {"file_path": f"/w/{name}"}, name)], task=name)
    _export([tmp_path / "in"], tmp_path / "out", mode="all")
    before = _outputs(tmp_path / "out")
    real_read, reads = export_module.read_file, []

    def vanishing(path, stats):
        reads.append(path)
        if len(reads) == 2:
            raise FlipError(f"cannot read {path}: No such file or directory")
        return real_read(path, stats)

    monkeypatch.setattr(export_module, "read_file", vanishing)
    with pytest.raises(FlipError, match="cannot read"):
        _export([tmp_path / "in"], tmp_path / "out", mode="all", seed=7)
    assert len(reads) == 2
    assert _outputs(tmp_path / "out") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*before, MANIFEST])  # no temp file left


def test_sources_are_relative_to_the_common_parent_of_the_given_paths(tmp_path):
    """Several paths: each sample's source is relative to their common parent (POSIX), so the same files give the
    same datasets wherever they live; a file named twice is read once; in directories only .jsonl / .ndjson count."""
    from harness.export import discover

    a = _stream(tmp_path / "runs" / "a" / "t.ndjson", "/w", [("Read", {"file_path": "/w/a"}, "A")], task="a")
    _stream(tmp_path / "runs" / "b" / "x" / "s.jsonl", "/w", [("Read", {"file_path": "/w/b"}, "B")], task="b")
    (tmp_path / "runs" / "b" / "x" / "notes.txt").write_text("not a transcript")
    found = discover([tmp_path / "runs" / "b", a, a])
    assert [source for source, _ in found] == ["a/t.ndjson", "b/x/s.jsonl"]
    stats = _export([tmp_path / "runs" / "b", a], tmp_path / "out", mode="full")
    assert stats["files"] == 2
    assert [s["metadata"]["source"] for s in _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")] == [
        "a/t.ndjson", "b/x/s.jsonl"]
    with pytest.raises(FlipError, match="nope: no such file or directory"):
        discover([tmp_path / "nope"])


def test_flip_export_and_help_do_not_import_torch(tmp_path):
    _stream(tmp_path / "in" / "t.ndjson", "/w", [("Read", {"file_path": "/w/a"}, "A")], task="t")
    probe = (
        "import sys\nfrom harness.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in (["export", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"], ["--help"]):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=ROOT, env=env)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "apr_code_sft_full.jsonl").is_file()


# ----------------------------------------------------------------------------------------- real transcripts

def test_real_transcripts_export_with_exact_counts(real_transcripts, tmp_path):
    stats = _export([real_transcripts], tmp_path / "out", mode="all")
    assert stats["files"] == 2 and stats["files_skipped"] == {}
    assert stats["raw_tool_use"] == 168 and stats["remappable"] == 133
    assert stats["unmappable"] == {"BashOutput": 5, "KillBash": 3, "MultiEdit": 3, "Task": 5, "TodoWrite": 19}
    assert stats["trajectories"] == 8 and stats["sidechain_trajectories"] == 5
    assert stats["without_task"] == 1  # the headless run: `-p <task>` is not echoed and there is no prompt.txt
    assert stats["lines"]["read"] == 446 and stats["orphan_results"] == 0
    full = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    stream = [s for s in full if s["metadata"]["source"] == "stream-json-2.1.154.ndjson"]
    assert [parse_tool_calls(s["response"])[0].input for s in stream if not s["metadata"].get("final")] == [
        {"path": "sample.txt"}]
    assert [s["response"] for s in stream if s["metadata"].get("final")] == [
        "The file contains one line:\n\n```\nhello from a file\n```"]
    assert stats["final_candidates"] == 8 and stats["finals_dropped"] == {}
    # Edits and Writes on files not read yet, a Read of a directory: rejected by their tools, never targets
    assert stats["failed"] == {"Edit": 6, "Read": 1, "Write": 5}
    # 32 shell commands apr-code's command rule refuses (pipes, `&&`, heredocs): observations, never targets
    assert stats["runtime_refused"] == {"shell:metacharacters": 32} and stats["runtime_rewritten"] == {}
    assert stats["candidates"] == 133 - 12 - 32 + 8
    assert stats["samples"]["full"] + stats["truncated"]["samples_dropped_too_long"] + stats["duplicates"]["full"] == 97
    text = (tmp_path / "out" / "apr_code_sft_full.jsonl").read_text()
    assert "/path/to/Demo" not in text and "/work/" not in text


# --------------------------------------------------------------------------------------- committed datasets

@pytest.mark.helper
def test_fixtures_reproduce_the_committed_datasets(tmp_path):
    committed = ROOT / "datasets"
    fixtures = ROOT / "fixtures" / "transcripts"
    if not (committed / "export_stats.json").is_file():
        pytest.skip("datasets/ is not populated yet (`flip export fixtures/transcripts --out datasets --mode all`)")
    if not fixtures.is_dir():
        pytest.skip("fixtures/transcripts is absent")
    _export([fixtures], tmp_path / "out", mode="all")
    produced = _outputs(tmp_path / "out")
    expected = {name: data for name, data in _outputs(committed).items() if name in produced}
    assert set(produced) <= set(_outputs(committed))
    assert produced == expected


# --------------------------------------------------------------------------------------- refused calls, resumed sessions

REFUSED = "The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if it was a file edit, " \
          "the new_string was NOT written to the file). STOP what you are doing and wait for the user to tell you how to proceed."


def _session(path: Path, cwd: str, calls, task: str, extra=None):
    """An on-disk session: the task, then per call an assistant tool_use and a user tool_result (optionally erroring)."""
    records, parent = [], None

    def add(kind, content, **fields):
        nonlocal parent
        uuid = f"u{len(records)}"
        records.append({"parentUuid": parent, "isSidechain": False, "sessionId": "s", "cwd": cwd, "type": kind,
                        "uuid": uuid, "message": {"role": kind, "content": content}, **fields})
        parent = uuid

    add("user", task)
    for i, (name, tool_input, result, error) in enumerate(calls):
        add("assistant", [{"type": "tool_use", "id": f"c{i}", "name": name, "input": tool_input}])
        add("user", [{"type": "tool_result", "tool_use_id": f"c{i}", "content": result, "is_error": error}])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records + (extra or [])))
    return records


def test_refused_calls_are_counted_never_targets_and_later_steps_stay(tmp_path):
    """A call a person refused (Claude Code's rejection texts, a result line's permission_denials, a record's
    tool_result_meta) never ran: it is counted under `refused` as part of `remappable`, is neither a target nor an
    observation, and the trajectory's later steps are still exported."""
    cwd = "/w"
    _session(tmp_path / "in" / "a.jsonl", cwd, [
        ("Edit", {"file_path": "/w/a.py", "old_string": "x", "new_string": "y"}, REFUSED, True),
        ("Read", {"file_path": "/w/a.py"}, "1\tx", False),
        ("Bash", {"command": "rm -rf /"},
         "<tool_use_error>Permission to use Bash with command rm -rf / has been denied.</tool_use_error>", True),
        ("Bash", {"command": "pytest"}, "Exit code 1\nfailed", True)], task="fix a.py")
    _stream(tmp_path / "in" / "b.ndjson", cwd, [("Bash", {"command": "make deploy"}, "Error"),
                                                ("Bash", {"command": "make test"}, "ok")], task="test it")
    lines = (tmp_path / "in" / "b.ndjson").read_text().splitlines()
    lines[3] = json.dumps({**json.loads(lines[3]), "tool_result_meta": [{"tool_use_id": "t0",
                                                                          "non_execution_kind": "user-rejected"}]})
    lines.append(json.dumps({"type": "result", "subtype": "success", "session_id": "s",
                             "permission_denials": [{"tool_name": "Bash", "tool_use_id": "t0", "tool_input": {}}]}))
    (tmp_path / "in" / "b.ndjson").write_text("\n".join(lines) + "\n")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full")
    assert stats["raw_tool_use"] == stats["remappable"] + sum(stats["unmappable"].values()) == 6
    assert stats["refused"] == {"Bash": 2, "Edit": 1}
    text = (tmp_path / "out" / "apr_code_sft_full.jsonl").read_text()
    assert "rm -rf" not in text and "make deploy" not in text and '"old": "x"' not in text
    responses = [parse_tool_calls(s["response"])[0] for s in _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
                 if not s["metadata"].get("final")]
    assert [(c.name, c.input) for c in responses] == [("file_read", {"path": "a.py"}), ("shell", {"command": "pytest"}),
                                                       ("shell", {"command": "make test"})]


MISSING = "<tool_use_error>File does not exist. Note: your current working directory is /w.</tool_use_error>"


def test_calls_their_tool_rejected_are_observations_never_targets(tmp_path):
    """A call its tool rejected (is_error on a Read, Edit, Write, Grep or Glob: a missing file, an old string not in
    the file) is counted under `failed`, never trained as a response, and shown to the later steps, which are exported
    (the recovery is what the student should learn). A failing shell command stays a target. In curated mode the
    trajectory's first call is its first call that did not fail."""
    cwd = "/w"
    _session(tmp_path / "in" / "a.jsonl", cwd, [
        ("Read", {"file_path": "/w/src/main.py"}, MISSING, True),
        ("Glob", {"pattern": "**/*.py"}, "/w/app/core.py", False),
        ("Edit", {"file_path": "/w/app/core.py", "old_string": "x = 1", "new_string": "x = 2"},
         "<tool_use_error>String to replace not found in file.</tool_use_error>", True),
        ("Bash", {"command": "pytest"}, "Exit code 1\nfailed", True)], task="fix the constant")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="all")
    assert stats["failed"] == {"Edit": 1, "Read": 1} and stats["refused"] == {}
    full = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    calls = [parse_tool_calls(s["response"])[0] for s in full if not s["metadata"].get("final")]
    assert [c.name for c in calls] == ["glob", "shell"]
    assert "File does not exist" in full[0]["instruction"] and "String to replace not found" in full[1]["instruction"]
    _export([tmp_path / "in"], tmp_path / "curated", mode="curated")  # alone: the exporter reads first actions only
    for out in ("out", "curated"):
        curated = _samples(tmp_path / out / "apr_code_sft_curated.jsonl")
        assert [parse_tool_calls(s["response"])[0].name for s in curated] == ["glob"], out


def test_calls_apr_code_runtime_would_not_run_are_never_targets(tmp_path):
    """A call apr-code's runtime (contracts/apr_runtime.yaml) would refuse or run differently (a command its command
    rule refuses, a regular-expression grep on a substring matcher, a read over its line limit) is counted by reason
    under `runtime_refused`, never trained, and stays an observation; `cd <working dir> && X` is trained as X, counted
    under `runtime_rewritten`; the accounting identity holds with both."""
    cwd = "/w"
    _session(tmp_path / "in" / "a.jsonl", cwd, [
        ("Bash", {"command": "ls | wc -l"}, "3", False),
        ("Grep", {"pattern": "PAGE_SIZE\\s*=", "path": "/w"}, "Found 1 file\n/w/a.py", False),
        ("Read", {"file_path": "/w/a.py", "limit": 5000}, "1\tx", False),
        ("Bash", {"command": "cd /w && cargo test"}, "ok", False),
        ("Read", {"file_path": "/w/a.py", "limit": 2000}, "1\tx", False)], task="fix a.py")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full")
    assert stats["runtime_refused"] == {"file_read:limit_over_max_lines": 1, "grep:regex_pattern": 1,
                                        "shell:metacharacters": 1}
    assert stats["runtime_rewritten"] == {"shell:cd_working_dir": 1}
    assert stats["candidates"] == stats["remappable"] - sum(stats["runtime_refused"].values()) \
        + stats["final_candidates"] - sum(stats["finals_dropped"].values())
    full = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    calls = [(c.name, c.input) for c in (parse_tool_calls(s["response"])[0] for s in full
                                         if not s["metadata"].get("final"))]
    assert calls == [("shell", {"command": "cargo test"}), ("file_read", {"path": "a.py", "limit": 2000})]
    assert "ls | wc -l" in full[0]["instruction"]  # the teacher ran it: an observation


def test_the_apr_runtime_dialect_trains_the_runtimes_field_names(tmp_path):
    """--dialect apr-runtime: every file_edit target and observation carries old_string/new_string (never old/new),
    every response validates in that dialect's schemas and against apr-code's declared ones, and the samples carry
    that dialect's system prompt; the default dialect keeps old/new."""
    from harness.apr_runtime import runtime_schemas, schema_errors

    cwd = "/w"
    _session(tmp_path / "in" / "a.jsonl", cwd, [
        ("Read", {"file_path": "/w/a.py"}, "1\tx = 1", False),
        ("Edit", {"file_path": "/w/a.py", "old_string": "x = 1", "new_string": "x = 2"}, "ok", False),
        ("Bash", {"command": "pytest"}, "ok", False)], task="fix a.py")
    _export([tmp_path / "in"], tmp_path / "runtime", mode="full", dialect="apr-runtime")
    full = _samples(tmp_path / "runtime" / "apr_code_sft_full.jsonl")
    calls = [parse_tool_calls(s["response"])[0] for s in full if not s["metadata"].get("final")]
    assert ("file_edit", {"path": "a.py", "old_string": "x = 1", "new_string": "x = 2"}) in [(c.name, c.input)
                                                                                             for c in calls]
    for call in calls:
        assert call_errors(call, "apr-runtime") == [] and schema_errors(call.input, runtime_schemas()[call.name]) == []
    assert all(s["system"] == system_prompt("apr-runtime") for s in full)
    assert '"old_string": "x = 1"' in full[-1]["instruction"]  # the observations speak the dialect too
    assert not any('"old": "x = 1"' in s["instruction"] + s["response"] for s in full)
    _export([tmp_path / "in"], tmp_path / "prompt", mode="full")
    edits = [parse_tool_calls(s["response"])[0] for s in _samples(tmp_path / "prompt" / "apr_code_sft_full.jsonl")
             if s["metadata"]["tool"] == "file_edit"]
    assert [c.input for c in edits] == [{"path": "a.py", "old": "x = 1", "new": "x = 2"}]


def test_messages_list_the_dialects_tools(tmp_path):
    """--target messages lists the chosen dialect's tools: under apr-runtime file_edit's parameters are
    path/old_string/new_string (required), and every call of every chat and sample validates against the parameters
    its own record lists; under the default dialect the same export lists old/new."""
    import jsonschema

    _session(tmp_path / "in" / "a.jsonl", "/w", [
        ("Read", {"file_path": "/w/a.py"}, "1\tx = 1", False),
        ("Edit", {"file_path": "/w/a.py", "old_string": "x = 1", "new_string": "x = 2"}, "ok", False)],
        task="fix a.py")
    for dialect, fields in (("apr-runtime", ["path", "old_string", "new_string"]), ("apr-prompt", ["path", "old", "new"])):
        out = tmp_path / dialect
        _export([tmp_path / "in"], out, target="messages", mode="all", dialect=dialect)
        records = [r for mode in ("full", "conversations") for r in _samples(out / f"messages_{mode}.jsonl")]
        edits = 0
        for record in records:
            listed = {t["function"]["name"]: t["function"]["parameters"] for t in record["tools"]}
            assert list(listed["file_edit"]["properties"]) == fields and listed["file_edit"]["required"] == fields
            for message in record["messages"]:
                for call in message.get("tool_calls", []):
                    function = call["function"]
                    jsonschema.validate(function["arguments"], listed[function["name"]])
                    edits += function["name"] == "file_edit"
        assert edits >= 2  # the full sample's call and the conversation's


def test_a_session_resumed_into_a_second_file_yields_each_sample_once(tmp_path):
    cwd = "/w"
    calls = [("Read", {"file_path": "/w/a.py"}, "1\tx", False), ("Bash", {"command": "pytest"}, "ok", False)]
    first = _session(tmp_path / "in" / "one.jsonl", cwd, calls, task="fix a.py")
    more = [("Read", {"file_path": "/w/b.py"}, "1\ty", False)]
    resumed = _session(tmp_path / "in" / "two.jsonl", cwd, calls + more, task="fix a.py")
    assert resumed[:len(first)] == first  # the second file repeats the first one's records, then goes on
    alone = _export([tmp_path / "in" / "two.jsonl"], tmp_path / "alone", mode="full")
    both = _export([tmp_path / "in"], tmp_path / "both", mode="full")
    assert both["samples"]["full"] == alone["samples"]["full"] == 3
    assert both["duplicates"]["full"] == 2


# --------------------------------------------------------------------------------------------------------------- --jobs

def _corpus_for_jobs(root: Path) -> None:
    """Several files, a session resumed into a second file (its samples repeat across files), sub-agents and
    damaged lines: everything whose merge across workers could go wrong."""
    calls = [("Read", {"file_path": "/w/a.py"}, "1\tx", False), ("Bash", {"command": "pytest"}, "ok", False)]
    _session(root / "one.jsonl", "/w", calls, task="fix a.py")
    _session(root / "two.jsonl", "/w", calls + [("Read", {"file_path": "/w/b.py"}, "1\ty", False)], task="fix a.py")
    rng = __import__("random").Random(5)
    for i in range(6):
        rec = gen.build(rng, "stream" if i % 2 else "session", rng.randrange(3, 9), True, split=bool(i % 3),
                        big=3000, layout="inline", tag=f"j{i}")
        gen.write(rec, root / f"task{i}")


def _work_noting_pid(source, path):
    (Path(os.environ["FLIP_TEST_PIDS"]) / str(os.getpid())).touch()
    import harness.export as export_module

    return export_module._WORK(source, path)


def test_jobs_give_byte_identical_outputs_from_worker_processes(tmp_path, monkeypatch):
    """--jobs N reads, renders and counts files in N worker processes, and every output (each mode's dataset and
    export_stats.json) is byte for byte what --jobs 1 writes: duplicates across files found once, balanced's seeded
    choice the same, counts summed."""
    import multiprocessing

    import harness.export as export_module

    _corpus_for_jobs(tmp_path / "in")
    monkeypatch.setattr(export_module, "MIN_BYTES_PER_WORKER", 1)  # a small corpus still gets its workers
    monkeypatch.setattr(export_module, "_start_method", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(export_module, "_work_in_worker", _work_noting_pid)  # inherited by the forked workers
    (tmp_path / "pids").mkdir()
    monkeypatch.setenv("FLIP_TEST_PIDS", str(tmp_path / "pids"))
    outputs = {}
    for jobs in (1, 2, 3):
        for target in ("apr-code", "messages"):
            stats = _export([tmp_path / "in"], tmp_path / f"out-{jobs}-{target}", mode="all", target=target,
                            per_tool=2, jobs=jobs)
            outputs[jobs, target] = _outputs(tmp_path / f"out-{jobs}-{target}")
    assert stats["files"] == 8 and stats["duplicates"]["full"] >= 2 and stats["samples"]["full"] > 10
    for jobs in (2, 3):
        for target in ("apr-code", "messages"):
            assert outputs[jobs, target] == outputs[1, target], (jobs, target)
    pids = {int(p.name) for p in (tmp_path / "pids").iterdir()}
    assert len(pids) >= 2 and os.getpid() not in pids  # the files were read in worker processes


def test_one_job_starts_no_process_and_bad_jobs_are_refused(tmp_path, monkeypatch, capsys):
    """--jobs 1 runs everything in this process (no pool is made, however large the corpus); --jobs 0 or less is
    refused before anything is written, as one line, exit 2."""
    import concurrent.futures

    import harness.export as export_module
    from harness.cli import main

    _corpus_for_jobs(tmp_path / "in")

    def no_pool(*args, **kwargs):
        raise AssertionError("--jobs 1 started a process pool")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    monkeypatch.setattr(export_module, "MIN_BYTES_PER_WORKER", 1)
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full", jobs=1)
    assert stats["samples"]["full"] > 10
    for bad in ("0", "-3"):
        assert main(["export", str(tmp_path / "in"), "--out", str(tmp_path / "bad"), "--jobs", bad, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--jobs must be at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "in"), "--out", str(tmp_path / "bad"), "--jobs", "two"])
    assert exit_info.value.code == 2 and "argument --jobs: invalid int value" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- cheaper exact accounting

CASE_VARIANTS = ["PASSWORD=hunter22x", "DB_Secret: s3cr3t-value", "pa\u017fsword=hunter22x", "to\u212aen=abcdefgh1",
                 "AWS_SECRET_ACCESS_KEY=" + "A" * 40, "x = 1  # no secret here"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_redaction_prefilters_never_skip_a_match(data):
    """A secret pattern's needles (contracts/redaction.json) only spare the regex a text that cannot match: every
    string a pattern matches is redacted, and counted, exactly as when every regex runs on every text, upper-case and
    Unicode case variants (the long s, the Kelvin sign) of (?i) patterns included."""
    from dataclasses import replace

    from harness.contracts import redaction
    from harness.prompt import Scrubber

    _, secrets = redaction()
    assert all(secret.needles for secret in secrets)
    secret = data.draw(st.sampled_from(secrets))
    text = data.draw(st.from_regex(secret.regex, fullmatch=False))
    variants = [text, text.upper(), text.swapcase()] if secret.ignore_case else [text]
    for text in variants + CASE_VARIANTS:
        filtered, unfiltered = Counter(), Counter()
        every_regex = Scrubber([], unfiltered)
        every_regex.secrets = tuple(replace(each, needles=()) for each in secrets)
        assert Scrubber([], filtered).text(text) == every_regex.text(text), text
        assert filtered == unfiltered, text
    assert "hunter22x" not in Scrubber([], Counter()).text("pa\u017fsword=hunter22x")


def test_cheaper_accounting_changes_no_sample_and_no_count(tmp_path, monkeypatch):
    """Token counts are exact however they are saved: a repeated text is encoded once, and an observation is only
    counted when a later sample can read it (for first actions only, just the rejected calls before them; the last one
    only for a final answer);
    the outputs are byte-identical to counting every piece, and fewer texts are counted."""
    import harness.export as export_module
    from harness.prompt import count_steps

    _corpus_for_jobs(tmp_path / "in")
    base = counter()
    texts = texts_counted = []

    class Counting:
        def count(self, text):
            texts_counted.append(text)
            return base.count(text)

        def count_many(self, many):
            texts_counted.extend(many)
            counts = base.count_many(many)
            assert counts == [base.count(t) for t in many]  # batched, deduplicated: still each text's own count
            return counts

    cheap = {}
    for mode in ("all", "curated"):
        texts.clear()
        export([str(tmp_path / "in")], tmp_path / f"cheap-{mode}", ExportOptions(mode=mode, jobs=1, **QUIET),
               counter=Counting())
        cheap[mode] = (_outputs(tmp_path / f"cheap-{mode}"), len(texts))
        observations = [t for t in texts if t.startswith("Action: ")]
        if mode == "all":
            assert observations
        else:  # a first action reads only the calls its tools rejected before it: no other observation is counted
            assert all("\nResult (error):\n" in t for t in observations), observations[:1]
    monkeypatch.setattr(export_module, "count_steps", lambda c, steps, observed=None: count_steps(c, steps))
    for mode in ("all", "curated"):
        texts.clear()
        export([str(tmp_path / "in")], tmp_path / f"every-{mode}", ExportOptions(mode=mode, jobs=1, **QUIET),
               counter=Counting())
        assert _outputs(tmp_path / f"every-{mode}") == cheap[mode][0], mode
        assert cheap[mode][1] < len(texts), mode
    assert base.count_many(["a b", "a b", "c"]) == [base.count("a b")] * 2 + [base.count("c")]


# ---------------------------------------------------------------------------------------------------- messages target

def test_messages_tools_are_described_by_their_schemas(tmp_path):
    """In the messages target each tool's `tools` entry takes its description and parameters from its JSON Schema in
    contracts/schemas (the one place they live): every description says what the tool does, none is a placeholder."""
    from harness.contracts import tool_schemas

    _stream(tmp_path / "in" / "t.ndjson", "/w", [("Read", {"file_path": "/w/a.rs"}, "A")], task="t")
    _export([tmp_path / "in"], tmp_path / "out", mode="full", target="messages")
    tools = {t["function"]["name"]: t["function"] for t in _samples(tmp_path / "out" / "messages_full.jsonl")[0]["tools"]}
    schemas = tool_schemas()
    assert set(tools) == set(schemas)
    for name, function in tools.items():
        assert function["description"] == schemas[name]["description"] and len(function["description"]) > 30, name
        assert not function["description"].startswith("apr-code tool"), name  # what it does, not a placeholder
        assert function["parameters"]["properties"] == schemas[name]["properties"]
        assert function["parameters"]["required"] == schemas[name]["required"]
        assert all(p.get("description") for p in function["parameters"]["properties"].values()), name
        assert set(function["parameters"]) == {"type", "properties", "required", "additionalProperties"}


def _trl_step_on_export(tmp_path, mode: str, batch_size: int):
    """Export a three-call fix to the messages target in `mode`, load it with `datasets.load_dataset("json")`, take one
    TRL SFTTrainer step on it with the bundled smollm2-135m (offline): (the loaded dataset, the train result)."""
    pytest.importorskip("torch", reason="TRL needs torch")
    datasets = pytest.importorskip("datasets", reason="the bench extra (datasets) is not installed")
    trl = pytest.importorskip("trl", reason="the bench extra (trl) is not installed")
    from harness.models import load_model

    _stream(tmp_path / "in" / "t.ndjson", "/w", [
        ("Read", {"file_path": "/w/a.rs"}, "fn add(a: i32, b: i32) -> i32 { a - b }"),
        ("Edit", {"file_path": "/w/a.rs", "old_string": "a - b", "new_string": "a + b"}, "ok"),
        ("Bash", {"command": "cargo test"}, "test result: ok")], task="fix add in a.rs")
    _export([tmp_path / "in"], tmp_path / "out", mode=mode, target="messages")
    loaded = datasets.load_dataset("json", data_files=str(tmp_path / "out" / f"messages_{mode}.jsonl"), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    config = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=batch_size,
                           max_length=1024, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                           dataset_num_proc=None, disable_tqdm=True)
    trainer = trl.SFTTrainer(model=model.train(), args=config, train_dataset=loaded.remove_columns(["metadata"]),
                             processing_class=tokenizer)
    return loaded, trainer.train()


def test_messages_dataset_trains_one_step_with_trl(tmp_path):
    """The messages dataset loads with `datasets.load_dataset("json")` and TRL's SFTTrainer takes a training step on
    it with the bundled smollm2-135m (offline), its loss finite."""
    loaded, result = _trl_step_on_export(tmp_path, "full", batch_size=2)
    assert len(loaded) == 3 and loaded[1]["messages"][2]["tool_calls"][0]["function"]["name"] == "file_edit"
    assert result.global_step == 1 and math.isfinite(result.training_loss)


# --------------------------------------------------------------------------------------- whole conversations

def test_conversations_hold_each_trajectory_as_the_full_samples_show_it(tmp_path):
    """--target messages --mode all adds one chat per trajectory with a task, over the real fixture transcripts: the
    system prompt, the task, then for every step of the full dataset an assistant turn with the same call (object
    arguments) answered by a tool turn (same id) whose content is the step's result exactly as the next sample's
    observation shows it, then the full dataset's final answer. A copy of a transcript (a resumed session) adds no
    conversation; --mode conversations with --target apr-code is refused before any work."""
    if not FIXTURE_TRANSCRIPTS.is_dir():
        pytest.skip("fixtures/transcripts is absent")
    source = tmp_path / "in"
    # one solution path per task: paths of one task share their first steps, which the full dataset then holds once
    for task, path in (("bank-overdraft", "parallel-read"), ("binary-search-bound", "test-first"),
                       ("caesar-wrap", "todo-read-edit-test"), ("celsius-convert", "grep-content")):
        shutil.copytree(FIXTURE_TRANSCRIPTS / task / path, source / task / path)
    stats = _export([source], tmp_path / "out", mode="all", target="messages", max_tokens=4096)
    chats = _samples(tmp_path / "out" / "messages_conversations.jsonl")
    full = _samples(tmp_path / "out" / "messages_full.jsonl")
    by_step = {(s["metadata"]["trajectory"], s["metadata"]["step"]): s for s in full}
    assert stats["samples"]["conversations"] == len(chats) > 3
    shutil.copytree(FIXTURE_TRANSCRIPTS / "caesar-wrap" / "todo-read-edit-test", source / "resumed-copy")
    again = _export([source], tmp_path / "again", mode="conversations", target="messages", max_tokens=4096)
    assert _samples(tmp_path / "again" / "messages_conversations.jsonl") == chats
    assert again["duplicates"]["conversations"] == stats["duplicates"]["conversations"] + 1
    for chat in chats:
        meta, messages = chat["metadata"], chat["messages"]
        first = by_step[(meta["trajectory"], 0)]
        assert messages[:2] == [{"role": "system", "content": first["messages"][0]["content"]},
                                {"role": "user", "content": first["messages"][1]["content"].split("Task:\n", 1)[1]
                                 .rsplit("\n\n", 1)[0]}]
        turns = messages[2:]
        for step in range(meta["steps"]):
            call, result = turns[2 * step], turns[2 * step + 1]
            sample = by_step[(meta["trajectory"], step)]["messages"][2]
            assert call["tool_calls"][0]["function"] == sample["tool_calls"][0]["function"]
            assert result["role"] == "tool" and result["tool_call_id"] == call["tool_calls"][0]["id"]
            shown = render_tool_call(call["tool_calls"][0]["function"]["name"],
                                     call["tool_calls"][0]["function"]["arguments"])
            later = by_step[(meta["trajectory"], step + 1)]["messages"][1]["content"]
            assert f"Action: {shown}\n{result['content']}\n" in later
        ending = turns[2 * meta["steps"]:]
        final = by_step.get((meta["trajectory"], meta["steps"]))
        assert ending == ([{"role": "assistant", "content": final["messages"][2]["content"]}] if meta["final"] else [])
        assert meta["final"] == (final is not None)
    assert sum(stats["per_tool"]["conversations"].values()) == sum(
        1 for chat in chats for m in chat["messages"] if m["role"] == "assistant")
    with pytest.raises(FlipError, match="needs --target messages"):
        _export([source], tmp_path / "refused", mode="conversations", target="apr-code")
    assert not (tmp_path / "refused").exists()


def test_conversations_train_one_step_with_trl(tmp_path):
    """The conversations load with `datasets.load_dataset("json")` (tool turns and call turns in one list) and TRL's
    SFTTrainer takes a training step on them with the bundled smollm2-135m, its loss finite."""
    loaded, result = _trl_step_on_export(tmp_path, "conversations", batch_size=1)
    assert len(loaded) == 1 and [m["role"] for m in loaded[0]["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "tool", "assistant", "tool"]
    assert result.global_step == 1 and math.isfinite(result.training_loss)
