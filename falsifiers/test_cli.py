"""Falsifiers of contracts/claims/cli.yaml: every `flip` command is safe on bad input and on the user's own files.

Each case a user or an adversary found (issue 10) is an explicit regression test, run through `flip` itself in
process; then hypothesis drives every subcommand with generated and damaged inputs and options in a directory holding
canary files, inputs and special files (a FIFO, a link to /dev/null, a dangling link), with outputs drawn from the same
names as inputs and --force among the options: the exit code is 0, 1 or 2, no traceback reaches stderr, and no canary,
input or special file changes.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from falsifiers.test_atomic import tree_digest
from export_helpers import _samples, _stream
from falsifiers.test_remap import tiny_adapter
from falsifiers.test_remap import tiny_base as random_base
from falsifiers.test_train import tiny_base, tokenizer  # noqa: F401 - fixtures: a tiny Llama with SmolLM2's template
from harness.cli import COMMANDS, main
from harness.toolcall import render_tool_call


def flip(*argv) -> tuple[int, str]:
    """(exit code, stderr) of `flip ARGV...` in this process (argparse's own exits included)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-cli")
    base = random_base(root / "base", "llama", seed=3)
    return base, tiny_adapter(base, root / "adapter", seed=4)


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


# --------------------------------------------------------------------------------------- the reported cases, one by one

def test_bad_datasets_and_options_get_one_line_errors(tmp_path, tiny_base):
    base = tiny_base
    call = render_tool_call("file_read", {"path": "a.py"})
    cases = {
        "binary": b"\x00\xff\xfe binary\n",
        "list": b"[1, 2]\n",
        "prose": json.dumps({"instruction": "fix it", "response": "Here is the fix:\n```py\nx = 1\n```"}).encode() + b"\n",
        "half": json.dumps({"instruction": "fix it", "response": "<tool_call>\n{\"name\": \"file_read\""}).encode() + b"\n",
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.jsonl").write_bytes(data)
        code, err = flip("train", "--data", tmp_path / f"{name}.jsonl", "--base", base, "--out", tmp_path / name,
                         "--max-steps", "1")
        _one_line_error(code, err, f"{name}.jsonl:1")
        assert not (tmp_path / name / "adapter_model.safetensors").exists()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"instruction": "read a.py \u2028 now", "response": call}) + "\n")  # raw U+2028
    for lr in ("nan", "inf", "0"):
        code, err = flip("train", "--data", good, "--base", base, "--out", tmp_path / "bad-lr", "--lr", lr)
        _one_line_error(code, err, "--lr must be a positive number")
    code, err = flip("train", "--data", tmp_path / "prose.jsonl", "--base", base, "--out", tmp_path / "prose-ok",
                     "--max-steps", "1", "--allow-prose", "--save-every", "0", "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "prose-ok" / "train_summary.json").read_text())
    assert summary["samples"]["prose"] == 1
    code, err = flip("eval", "--model", base, "--prompts", tmp_path / "list.jsonl", "--out", tmp_path / "t.jsonl")
    _one_line_error(code, err, "list.jsonl:1: a JSON list, not an object")
    (tmp_path / "u2028.jsonl").write_text(json.dumps({"id": "a", "task": "x\u2028y"}, ensure_ascii=False) + "\n")
    from harness.evaluate import load_prompts

    assert load_prompts(tmp_path / "u2028.jsonl") == [{"id": "a", "task": "x\u2028y"}]


def test_eval_and_train_show_progress_bars_that_quiet_hides(tmp_path, tiny_base, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # --quiet sets it for the rest of its process: restored after
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"t{i}", "task": f"read src/m{i}.py"}) + "\n" for i in range(3)))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "read a.py", "response": render_tool_call("file_read", {"path": "a.py"})})
                    + "\n")
    runs = {
        "eval": ("eval", "--model", tiny_base, "--prompts", prompts, "--max-new-tokens", "2", "--batch-size", "2",
                 "--out"),
        "train": ("train", "--data", data, "--base", tiny_base, "--max-steps", "2", "--val-fraction", "0",
                  "--save-every", "0", "--out"),
    }
    for name, argv in runs.items():
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
        code, err = flip(*argv, tmp_path / f"{name}-loud" / "o.jsonl" if name == "eval" else tmp_path / f"{name}-loud")
        assert code == 0, err
        bar = {"eval": "prompt/s", "train": "step/s"}[name]  # the unit, in every frame of the bar
        assert bar in err, (name, err)
        code, err = flip(*argv, tmp_path / f"{name}-quiet" / "o.jsonl" if name == "eval" else tmp_path / f"{name}-quiet",
                         "--quiet")
        assert code == 0, err
        assert bar not in err and "it/s" not in err, (name, err)  # nor the libraries' bars (it/s)
        assert name != "eval" or err.strip() == "", err  # --quiet eval prints nothing at all (issue 22)


def test_broken_models_and_adapters_are_named_not_traced(tmp_path, tiny):
    base, adapter = tiny
    broken = tmp_path / "broken-config"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((base / "config.json").read_text())
    random_gguf = tmp_path / "random.gguf"
    random_gguf.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    for model in (broken, no_weights, random_gguf):
        code, err = flip("merge", "--base", model, "--adapter", adapter, "--out", tmp_path / f"m-{model.name}")
        _one_line_error(code, err, model.name)
    import torch

    from falsifiers.test_remap import _edited_copy

    def widened(tensors):  # lora_B with rows the base's weight does not have
        return {k: torch.cat([v, v]) if ".lora_B." in k else v for k, v in tensors.items()}

    wrong = _edited_copy(adapter, tmp_path / "wrong-shape", tensors=widened)
    code, err = flip("merge", "--base", base, "--adapter", wrong, "--out", tmp_path / "m-shape")
    _one_line_error(code, err, "do not fit the base's weight")
    code, err = flip("remap", wrong, "--out", tmp_path / "w.safetensors", "--base", base)
    _one_line_error(code, err, "do not fit the base's weight")
    code, err = flip("merge", "--base", base, "--adapter", random_gguf, "--out", tmp_path / "m-gguf")
    _one_line_error(code, err, "random.gguf")


def test_apr_header_rank_must_match_the_tensors(tmp_path, tiny):
    from falsifiers.test_remap import _safetensors_metadata
    from safetensors.torch import load_file, save_file

    base, adapter = tiny
    apr = tmp_path / "a.safetensors"
    assert flip("remap", adapter, "--out", apr, "--base", base)[0] == 0
    metadata = _safetensors_metadata(apr)
    lying = tmp_path / "lying.safetensors"
    save_file(load_file(apr), str(lying), metadata={**metadata, "lora_rank": "16"})  # the tensors have rank 4
    code, err = flip("merge", "--base", base, "--adapter", lying, "--out", tmp_path / "m")
    _one_line_error(code, err, "lora_rank=16", "rank 4")
    assert not (tmp_path / "m").exists()


def test_empty_exports_exit_1_and_windows_recordings_become_relative(tmp_path):
    code, err = flip("export", tmp_path / "nothing", "--out", tmp_path / "o1")
    _one_line_error(code, err, "no such file")
    (tmp_path / "empty").mkdir()
    code, err = flip("export", tmp_path / "empty", "--out", tmp_path / "o2", "--quiet")
    assert code == 1 and "no transcript was found" in err and "Traceback" not in err
    assert flip("export", tmp_path / "empty", "--out", tmp_path / "o3", "--quiet", "--allow-empty")[0] == 0
    cwd = "C:\\tmp\\ws"
    _stream(tmp_path / "win" / "t.ndjson", cwd, [
        ("Read", {"file_path": "C:\\tmp\\ws\\src\\a.py"}, "see C:\\tmp\\ws\\src\\a.py line 1"),
        ("Read", {"file_path": "C:\\tmp\\ws\\b.py"},
         "<tool_use_error>File does not exist. Note: your current working directory is C:\\tmp\\ws.</tool_use_error>"),
        ("Bash", {"command": "cd C:\\tmp\\ws && pytest"}, "ok")], task="fix C:\\tmp\\ws\\src\\a.py")
    code, err = flip("export", tmp_path / "win", "--out", tmp_path / "o4", "--max-length", "5", "--quiet")
    assert code == 1 and "did not fit --max-length 5" in err
    assert flip("export", tmp_path / "win", "--out", tmp_path / "o5", "--quiet")[0] == 0
    samples = _samples(tmp_path / "o5" / "apr_code_sft_full.jsonl")
    assert json.loads(samples[0]["response"].split("\n")[1])["input"] == {"path": "src/a.py"}
    text = (tmp_path / "o5" / "apr_code_sft_full.jsonl").read_text()
    assert "C:" not in text and "\\\\tmp" not in text and "see src/a.py line 1" in text
    # `cd <the recording's directory> && pytest` is run in the working directory: trained as `pytest` (apr-code's
    # command rule refuses `&&`; contracts/apr_runtime.yaml)
    assert '\\"command\\": \\"pytest\\"' in text and "cd " not in text
    assert "your current working directory is the project directory.</tool_use_error>" in text


def test_the_old_name_max_tokens_still_sets_max_length(tmp_path):
    """--max-tokens, the old name of the sample's token budget in flip export and flip agent, still works (users'
    scripts): the same outputs byte for byte as --max-length, a deprecation note on stderr, and no line in --help."""
    from export_helpers import _outputs
    from harness.cli import parse_command

    long = "\n".join(f"line {n}: value = compute({n})" for n in range(60))
    edit = {"file_path": "/w/a.py", "old_string": "x", "new_string": "y"}
    _stream(tmp_path / "in" / "t.ndjson", "/w", [("Read", {"file_path": "/w/a.py"}, long),
                                                  ("Read", {"file_path": "/w/b.py"}, long), ("Edit", edit, "ok")],
            task="fix a.py")
    outputs = {}
    for name, budget in (("old", ["--max-tokens", "400"]), ("new", ["--max-length", "400"]), ("default", [])):
        code, err = flip("export", tmp_path / "in", "--out", tmp_path / name, *budget, "--quiet")
        assert code == 0, err
        assert ("--max-tokens is deprecated; it is --max-length now" in err) == (name == "old"), err
        outputs[name] = _outputs(tmp_path / name)
    assert outputs["old"] == outputs["new"] != outputs["default"]  # the budget was applied, by either name
    assert json.loads(outputs["old"]["export_stats.json"])["options"]["max_tokens"] == 400  # the file's key stays
    for command, required in (("export", ["in", "--out", "o"]), ("agent", ["--model", "m", "--tasks", "t", "--out", "o"])):
        with contextlib.redirect_stderr(io.StringIO()):
            _, old = parse_command([command, *required, "--max-tokens", "700"])
            _, new = parse_command([command, *required, "--max-length", "700"])
        assert vars(old) == vars(new) and new.max_length == 700 and "max_tokens" not in vars(new)
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
            parse_command([command, "--help"])
        assert "--max-length" in shown.getvalue() and "--max-tokens" not in shown.getvalue()


def test_outputs_are_never_read_back_and_stale_modes_are_removed(tmp_path):
    inside = tmp_path / "in"
    _stream(inside / "t.ndjson", "/w", [("Read", {"file_path": "/w/a.py"}, "1\tx")], task="look at a.py")
    outside = tmp_path / "elsewhere" / "s.ndjson"
    _stream(outside, "/v", [("Read", {"file_path": "/v/b.py"}, "1\ty")], task="look at b.py")
    (inside / "link.ndjson").symlink_to(outside)  # a link to a transcript outside the walked directory: followed
    assert flip("export", inside, "--out", tmp_path / "first", "--quiet")[0] == 0
    first = (tmp_path / "first" / "apr_code_sft_full.jsonl").read_bytes()
    stats = json.loads((tmp_path / "first" / "export_stats.json").read_text())
    assert stats["files"] == 2
    shutil.copytree(tmp_path / "first", inside / "old-export")  # an earlier export kept inside the transcripts
    assert flip("export", inside, "--out", tmp_path / "again", "--quiet")[0] == 0
    again = json.loads((tmp_path / "again" / "export_stats.json").read_text())
    assert again["files"] == 2 and again["files_skipped"] == {}, "the export read an earlier export's outputs"
    assert (tmp_path / "again" / "apr_code_sft_full.jsonl").read_bytes() == first

    out = tmp_path / "out"
    assert flip("export", inside, "--out", out, "--quiet")[0] == 0
    assert flip("export", inside, "--out", out, "--mode", "curated", "--quiet")[0] == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "apr_code_sft_curated.jsonl", "export_stats.json"], "files the new stats do not describe were left"


# ----------------------------------------------------------------------------------------------- the fuzzing falsifier

VALUES = st.sampled_from(["0", "-1", "1", "nan", "inf", "1e309", "", " ", "x", "../x", "/", "canary", "canary/notes.md",
                          "canary/data.jsonl", "binary.bin", "garbage.jsonl", "list.jsonl", "fake.gguf", "broken",
                          "out", ".", "nothing/here", "\u2028", "--", "-h", "fifo", "devlink", "dangling",
                          "dangling/x", "broken/config.json", "fake.gguf"])


def _actions(command: str):
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return [a for a in parser._actions if a.dest != "help"]


@st.composite
def argvs(draw):
    """A command with its required options and positionals (so most examples get past argparse into the command),
    then optional ones, each given a drawn value. No value names a usable model, so no example trains or generates."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    actions = _actions(command)
    argv = [command]
    for action in actions:
        if not action.option_strings:
            argv += draw(st.lists(VALUES, min_size=1, max_size=2))
        elif action.required:
            argv += [action.option_strings[0], draw(VALUES)]
    optional = [a for a in actions if a.option_strings and not a.required]
    for action in draw(st.lists(st.sampled_from(optional), max_size=5)):
        argv.append(action.option_strings[0])
        if action.nargs != 0:
            argv.append(draw(VALUES))
    if command == "tune":
        argv += ["--recipes", draw(VALUES)]  # never all recipes: a real tune takes most of an hour
    if command == "run":
        argv += ["--base", draw(VALUES)]  # never the default base: a real run takes 15 minutes
    return argv + ["--quiet"]


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "canary").mkdir()
    (root / "canary" / "notes.md").write_text("mine\n")
    (root / "canary" / "data.jsonl").write_text('{"instruction": "a", "response": "b"}\n')
    (root / "binary.bin").write_bytes(bytes(range(256)))
    (root / "garbage.jsonl").write_bytes(b"{not json\n\xff\xfe\n")
    (root / "list.jsonl").write_text("[1, 2]\n")
    (root / "fake.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{")
    os.mkfifo(root / "fifo")  # outputs must never replace what is not a regular file or directory
    (root / "devlink").symlink_to("/dev/null")
    (root / "dangling").symlink_to(root / "nowhere")
    return root


# Every input a drawn argument may name: like the canaries, each must hash the same after any command
INPUTS = ("canary", "binary.bin", "garbage.jsonl", "list.jsonl", "fake.gguf", "broken")
SPECIALS = {"fifo": stat.S_ISFIFO, "devlink": stat.S_ISLNK, "dangling": stat.S_ISLNK}


def inputs_digest(root):
    """The inputs' bytes, and what each special file still is (a FIFO, a link)."""
    found = {name: tree_digest(root / name) if (root / name).is_dir() else
             hashlib.sha256((root / name).read_bytes()).hexdigest() for name in INPUTS}
    found.update({name: test(os.lstat(root / name).st_mode) for name, test in SPECIALS.items()})
    return found


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=argvs())
# output over input, into a special file, and --force: always tried, whatever hypothesis draws
@example(argv=["export", "canary", "--out", "canary", "--force", "--quiet"])
@example(argv=["export", "canary/data.jsonl", "--out", "canary", "--target", "messages", "--force", "--quiet"])
@example(argv=["export", "canary", "--out", "devlink", "--quiet"])
@example(argv=["eval", "--model", "broken", "--prompts", "canary/data.jsonl", "--out", "fifo", "--quiet"])
@example(argv=["remap", "canary", "--out", "dangling/x", "--quiet"])
def test_no_command_traces_back_or_touches_a_canary(playground, monkeypatch, argv):
    monkeypatch.chdir(playground)
    before = inputs_digest(playground)
    code, err = flip(*argv)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    assert inputs_digest(playground) == before, f"{argv} changed an input, a canary or a special file"


# ------------------------------------------------------------------------------------------ flip run's config.json

def _run_options(*argv):
    from harness.cli import parse_command

    module, args = parse_command(["run", *(str(a) for a in argv)])
    return module.options_from_args(args)


def test_run_config_json_repeats_the_run(tmp_path, tiny_base):
    from dataclasses import replace

    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text('{"id": "t1", "task": "fix the bug in a.py"}\n')
    leak = tmp_path / "leak.jsonl"  # holds the held-out task: the run stops before training, config.json written
    leak.write_text(json.dumps({"instruction": "fix the bug in a.py", "response": "x"}) + "\n")
    out = tmp_path / "run"
    argv = ["--out", out, "--base", tiny_base, "--data", leak, "--holdout", holdout, "--steps", "7", "--rank", "4",
            "--targets", "q_proj,k_proj", "--no-merge", "--eval-every", "0", "--lr", "0.01", "--val-fraction", "0.25"]
    code, err = flip("run", *argv, "--quiet")
    assert code == 2 and "held-out task" in err, err
    config = out / "config.json"
    written = config.read_bytes()
    assert flip("run", *argv, "--quiet")[0] == 2
    assert config.read_bytes() == written, "the same options wrote different bytes"

    given = _run_options(*argv)
    assert _run_options("--config", config) == given
    assert _run_options("--config", config, "--steps", "3", "--merge") == replace(given, steps=3, merge=True)

    for bad, key in (({"rnak": 4}, "rnak"), ({"rank": "4"}, "rank"), ({"targets": "q_proj"}, "targets"),
                     ({"mode": "everything"}, "mode"), ({"device": "gpu"}, "device")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        # the leaking data again: were a bad file accepted, the run would still stop before training
        _one_line_error(*flip("run", "--config", tmp_path / "bad.json", "--out", tmp_path / "x", "--data", leak,
                              "--holdout", holdout, "--base", tiny_base, "--quiet"), key)


def test_run_trains_the_recipe_it_names():
    """A recipe of contracts/recipes.yaml is the training config it builds (TrainConfig.from_recipe, used by flip run,
    tune and curve): `flip run --recipe NAME` trains NAME's values, an option given explicitly overrides one, the
    default is the default recipe, and a training value is checked once, by TrainConfig, named by flip run's option."""
    from harness import FlipError
    from harness.contracts import recipes
    from harness.run import RunOptions
    from harness.train import TrainConfig

    default, table = recipes()

    def trained(recipe: dict, config: TrainConfig) -> None:
        assert config.max_steps == recipe["steps"] and config.lr == recipe["lr"]
        assert (config.rank, config.alpha, config.max_length) == (recipe["rank"], recipe["alpha"], recipe["max_length"])
        assert config.targets == tuple(recipe["targets"])
        assert (config.pack, config.val_fraction, config.dtype) == (recipe["pack"], recipe["val_fraction"],
                                                                    recipe["dtype"])
        assert config.data.name == f"apr_code_sft_{recipe['mode']}.jsonl"

    trained(table[default], _run_options("--out", "r").train_config())
    for name, recipe in table.items():
        trained(recipe, _run_options("--out", "r", "--recipe", name).train_config())
        given = _run_options("--out", "r", "--recipe", name, "--steps", "3", "--lr", "0.01").train_config()
        assert (given.max_steps, given.lr, given.rank) == (3, 0.01, recipe["rank"])
        curve = TrainConfig.from_recipe(recipe, data="d.jsonl", base="b", out="o", max_steps=7)
        assert (curve.max_steps, curve.rank, curve.targets) == (7, recipe["rank"], tuple(recipe["targets"]))
    with pytest.raises(FlipError, match="'stepz' is not a training option"):
        TrainConfig.from_recipe({"stepz": 3}, data="d.jsonl", base="b", out="o")
    with pytest.raises(FlipError, match="--steps must be at least 1"):
        RunOptions(out="r", steps=0)


def test_run_agents_run_in_the_runtime_run_is_given():
    """`flip run --runtime apr` runs its held-out agents in apr-code's own runtime, as `flip agent --runtime apr` does;
    without it, in the claude runtime the exporter trains on."""
    from harness.run import plan_stages

    assert plan_stages(_run_options("--out", "r")).agent.runtime == "claude"
    assert plan_stages(_run_options("--out", "r", "--runtime", "apr")).agent.runtime == "apr"


def test_run_report_names_the_runtime_its_agents_ran_in():
    """The report's agent section says which runtime answered the calls, from the agents' own summaries."""
    from falsifiers.report_inputs import agent
    from harness.run import agent_section

    summaries = agent()
    for runtime in ("apr", "claude"):
        summaries["base"]["runtime"] = summaries["student"]["runtime"] = runtime
        assert f"in the {runtime} runtime;" in "\n".join(agent_section(summaries))


def test_resume_takes_an_option_added_since_the_run_began_at_its_default(tmp_path):
    """A run whose config.json lacks an option flip run gained later (the run began under an older apr-flip) resumes
    when that option is at its default, and is refused, naming it, when it is not, as a changed option is."""
    from harness import FlipError
    from harness.run import CONFIG_FILE, RunOptions, check_resumable, run_config

    out, generated = tmp_path / "run", tmp_path / "generated"
    written = json.loads(run_config(RunOptions(out=out, train_tasks=generated)))
    del written["with_fixtures"]
    out.mkdir()
    (out / CONFIG_FILE).write_text(json.dumps(written, indent=2) + "\n")
    check_resumable(out, run_config(RunOptions(out=out, train_tasks=generated)))
    for changed, named in (({"with_fixtures": True}, "(with_fixtures)"), ({"steps": 7}, "(steps)")):
        with pytest.raises(FlipError, match=re.escape(named)):
            check_resumable(out, run_config(RunOptions(out=out, train_tasks=generated, **changed)))


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_base, monkeypatch):
    """`flip run --resume` continues an interrupted run in its --out: the finished export is not redone, training
    continues from its checkpoint, and the adapter, the progress evals and the report's numbers are those of a run
    that was never interrupted. Other options are refused; a fresh --out with --resume just runs."""
    import torch
    from safetensors.torch import load_file

    import harness.evaluate

    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text('{"id": "t1", "task": "fix the bug in zz_nowhere.py"}\n')
    argv = ["--base", tiny_base, "--holdout", holdout, "--steps", "4", "--rank", "4", "--targets", "q_proj",
            "--no-merge", "--no-agent", "--eval-every", "2", "--save-every", "2", "--max-new-tokens", "4",
            "--progress-tokens", "4", "--quiet"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert flip("run", "--out", whole, *argv, "--resume")[0] == 1  # ran to its report (a tiny student misses goals)

    real, calls = harness.evaluate.evaluate_loaded, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the progress eval at step 4, after the checkpoint of step 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(harness.evaluate, "evaluate_loaded", interrupted)
    assert flip("run", "--out", split, *argv)[0] == 130
    monkeypatch.setattr(harness.evaluate, "evaluate_loaded", real)
    assert not (split / "report.json").exists()
    stats = split / "datasets" / "export_stats.json"
    exported = stats.stat().st_ino
    code, err = flip("run", "--out", split, *argv, "--resume")
    assert code == 1, err
    assert "export: complete" in err and stats.stat().st_ino == exported, "the finished export was redone"
    assert json.loads((split / "adapter" / "train_summary.json").read_text())["resumed_from"] == 2
    one, two = load_file(whole / "adapter" / "adapter_model.safetensors"), load_file(
        split / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-7)

    def numbers(out):
        report = json.loads((out / "report.json").read_text())
        progress = [{k: v for k, v in row.items() if k != "seconds"} for row in report["progress"]]
        firsts = {who: {k: v for k, v in report[who].items() if k not in ("seconds", "tasks_per_minute", "adapter")}
                  for who in ("base", "student")}  # the adapter's path names its run directory
        return progress, firsts, report["steps_trained"], report["steps_to_flip"]

    assert numbers(split) == numbers(whole)
    assert [row["step"] for row in numbers(split)[0]] == [2, 4]
    code, err = flip("run", "--out", split, *argv, "--resume", "--steps", "5")
    _one_line_error(code, err, "--resume", "steps")


@pytest.fixture(scope="module")
def generated_set(tmp_path_factory) -> Path:
    """A small verified generated task set (fixtures/taskgen.py), as flip curve and flip run --train-tasks read."""
    from fixtures import taskgen

    base = tmp_path_factory.mktemp("generated")
    taskgen.generate(10, 1, base / "out", jobs=1, cache=base / "cache")
    return base / "out"


def test_run_trains_on_the_tasks_of_a_curve_row(tmp_path, tiny_base, generated_set):
    """`flip run --train-tasks GEN --train-n N` exports exactly the N generated tasks flip curve's row N trains on (the
    first N of its seeded training order), never a validation task nor the fixtures; a bad set or N is one line,
    exit 2, before anything is written."""
    from harness.tasks import read_manifest, training_order

    split = read_manifest(generated_set)
    n = 3
    chosen = training_order(generated_set, split["train"], 42)[:n]
    assert chosen != sorted(split["train"])[:n], "the seeded order should differ from the sorted ids here"
    prompt = {task_id: (generated_set / "tasks" / task_id / "prompt.txt").read_text(encoding="utf-8").strip()
              for task_id in split["train"] + split["validation"]}
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text('{"id": "t1", "task": "fix the bug in zz_nowhere.py"}\n')
    common = ["--base", tiny_base, "--holdout", holdout, "--steps", "1", "--rank", "4", "--targets", "q_proj",
              "--no-merge", "--no-agent", "--eval-every", "0", "--max-new-tokens", "4", "--quiet"]
    out = tmp_path / "run"
    code, err = flip("run", "--out", out, "--train-tasks", generated_set, "--train-n", n, *common)
    assert code in (0, 1), err  # 1: a one-step tiny student misses the goals
    instructions = [json.loads(line)["instruction"]
                    for line in (out / "datasets" / "apr_code_sft_full.jsonl").read_text().splitlines()]
    trained = {task_id for task_id, text in prompt.items() if any(text in ins for ins in instructions)}
    assert set(chosen) <= trained, "a task of the curve row is missing from the export"
    others = {task_id for task_id in trained - set(chosen) if prompt[task_id] not in {prompt[c] for c in chosen}}
    assert not others, f"exported tasks outside the curve row: {sorted(others)}"
    assert json.loads((out / "datasets" / "export_stats.json").read_text())["files"] == n
    assert json.loads((out / "config.json").read_text())["train_n"] == n

    gen = ["--train-tasks", generated_set]
    for argv, message in (([*gen, "--train-n", "0"], "--train-n must be between 1 and"),
                          ([*gen, "--train-n", "9999"], "--train-n must be between 1 and"),
                          (["--train-tasks", tmp_path], "no generated task set there"),
                          (["--train-n", "2"], "--train-n needs --train-tasks"),
                          ([*gen, "--data", holdout], "--train-tasks and --data")):
        refused = tmp_path / "refused"
        code, err = flip("run", "--out", refused, *argv, *common)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not refused.exists()


def test_run_with_fixtures_adds_only_the_hand_written_training_split(tmp_path, tiny_base, generated_set):
    """`flip run --train-tasks GEN --train-n N --with-fixtures` exports the N generated tasks and every transcript of
    the training side of flip tune's split of the hand-written tasks, never a task of its validation side (what flip
    tune and flip curve validate on); --with-fixtures without --train-tasks is one line, exit 2, nothing written."""
    from harness.tasks import validation_split
    from harness.contracts import FIXTURE_TASKS as TASKS, FIXTURE_TRANSCRIPTS as TRANSCRIPTS

    train, validation = validation_split(sorted(p for p in TASKS.iterdir() if (p / "task.json").is_file()))
    prompt = {task_id: (TASKS / task_id / "prompt.txt").read_text(encoding="utf-8").strip() for task_id in train + validation}
    assert not {prompt[t] for t in validation} & {prompt[t] for t in train}, "a validation prompt is also a training one"
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text('{"id": "t1", "task": "fix the bug in zz_nowhere.py"}\n')
    common = ["--base", tiny_base, "--holdout", holdout, "--steps", "1", "--rank", "4", "--targets", "q_proj",
              "--no-merge", "--no-agent", "--eval-every", "0", "--max-new-tokens", "4", "--quiet"]
    out, n = tmp_path / "run", 2
    code, err = flip("run", "--out", out, "--train-tasks", generated_set, "--train-n", n, "--with-fixtures", *common)
    assert code in (0, 1), err  # 1: a one-step tiny student misses the goals
    instructions = "\n".join(json.loads(line)["instruction"]
                             for line in (out / "datasets" / "apr_code_sft_full.jsonl").read_text().splitlines())
    recorded = [t for t in train if (TRANSCRIPTS / t).is_dir()]
    assert len(recorded) > 40 and not [t for t in recorded if prompt[t] not in instructions], "a training task is missing"
    assert not [t for t in validation if prompt[t] in instructions], "a validation task was trained on"
    files = sum(len(list((TRANSCRIPTS / t).rglob("*.ndjson"))) for t in recorded)
    assert json.loads((out / "datasets" / "export_stats.json").read_text())["files"] == n + files

    refused = tmp_path / "refused"
    code, err = flip("run", "--out", refused, "--with-fixtures", *common)
    _one_line_error(code, err, "--with-fixtures needs --train-tasks")
    assert not refused.exists()


def test_run_hands_its_dialect_to_every_stage(tmp_path, tiny_base):
    """`flip run --dialect apr-runtime` runs every stage in that dialect: the export writes apr-code's runtime field
    names (file_edit old_string/new_string) with that dialect's system prompt, training takes those calls as calls
    (not prose), the first-step evaluation and both agents are prompted and judged in it, and config.json keeps it."""
    from harness.contracts import FIXTURES, system_prompt

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "h-age-birthday").symlink_to(FIXTURES / "holdout" / "workspaces" / "h-age-birthday")
    out = tmp_path / "run"
    code, err = flip("run", "--out", out, "--base", tiny_base, "--dialect", "apr-runtime", "--holdout", tasks,
                     "--steps", "1", "--rank", "4", "--targets", "q_proj", "--no-merge", "--eval-every", "0",
                     "--max-new-tokens", "4", "--max-turns", "1", "--agent-tokens", "4", "--quiet")
    assert code == 1, err  # ran to its report; a one-step random student misses the goals
    stats = json.loads((out / "datasets" / "export_stats.json").read_text())
    assert stats["options"]["dialect"] == "apr-runtime"
    trained = json.loads((out / "config.json").read_text())["mode"]
    samples = _samples(out / "datasets" / f"apr_code_sft_{trained}.jsonl")
    edits = [s["response"] for s in samples if s["metadata"]["tool"] == "file_edit"]
    assert edits and all('"old_string": ' in r and '"old": ' not in r for r in edits)
    assert {s["system"] for s in samples} == {system_prompt("apr-runtime")}
    summary = json.loads((out / "adapter" / "train_summary.json").read_text())
    counts = summary["samples"]
    assert counts["prose"] == 0 and counts["train"] + counts["val"] + counts["dropped"] == len(samples)
    for name in ("base", "student", "agent_base", "agent_student"):
        assert json.loads((out / "traces" / f"{name}.summary.json").read_text())["dialect"] == "apr-runtime", name
    assert json.loads((out / "config.json").read_text())["dialect"] == "apr-runtime"
    report = json.loads((out / "report.json").read_text())
    assert report["dialect"] == "apr-runtime"
    # both agents scored against the teacher's trajectory of the task (fixtures/holdout/teacher, the default)
    scores = report["agent"]["parity_per_task"]["h-age-birthday"]
    assert all(0.0 <= scores[who] <= 1.0 for who in ("base", "student")), scores
    for who in ("base", "student"):
        assert report["agent"][who]["parity"]["tasks_scored"] == 1
    assert "CCPA action parity" in (out / "report.md").read_text()
