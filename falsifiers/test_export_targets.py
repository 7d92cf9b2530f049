"""Falsifiers of `flip export`'s training targets: the messages target and whole conversations, loaded and
trained one step with trl."""
from __future__ import annotations

import math
import shutil

import pytest

from harness import FlipError
from harness.toolcall import render_tool_call

from export_helpers import FIXTURE_TRANSCRIPTS, _export, _samples, _session, _stream


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
    from peft import LoraConfig

    from harness.models import load_model

    _stream(tmp_path / "in" / "t.ndjson", "/w", [
        ("Read", {"file_path": "/w/a.rs"}, "fn add(a: i32, b: i32) -> i32 { a - b }"),
        ("Edit", {"file_path": "/w/a.rs", "old_string": "a - b", "new_string": "a + b"}, "ok"),
        ("Bash", {"command": "cargo test"}, "test result: ok")], task="fix add in a.rs")
    _export([tmp_path / "in"], tmp_path / "out", mode=mode, target="messages")
    loaded = datasets.load_dataset("json", data_files=str(tmp_path / "out" / f"messages_{mode}.jsonl"), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    # A LoRA step in float32, as `flip train` takes one on a CPU. TRL's defaults differ: bf16 autocast (emulated, and
    # several times slower, on a CPU without avx512_bf16) and gradient checkpointing (a second forward pass).
    config = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=batch_size,
                           max_length=1024, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                           dataset_num_proc=None, disable_tqdm=True, gradient_checkpointing=False, bf16=False)
    trainer = trl.SFTTrainer(model=model.train(), args=config, train_dataset=loaded.remove_columns(["metadata"]),
                             processing_class=tokenizer,
                             peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
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
    stats = _export([source], tmp_path / "out", mode="all", target="messages", max_length=4096)
    chats = _samples(tmp_path / "out" / "messages_conversations.jsonl")
    full = _samples(tmp_path / "out" / "messages_full.jsonl")
    by_step = {(s["metadata"]["trajectory"], s["metadata"]["step"]): s for s in full}
    assert stats["samples"]["conversations"] == len(chats) > 3
    shutil.copytree(FIXTURE_TRANSCRIPTS / "caesar-wrap" / "todo-read-edit-test", source / "resumed-copy")
    again = _export([source], tmp_path / "again", mode="conversations", target="messages", max_length=4096)
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
