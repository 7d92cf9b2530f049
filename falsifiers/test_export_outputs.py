"""Falsifiers of `flip export`'s outputs: the CLI, atomic outputs, sources, real transcripts, the committed
datasets, and --jobs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.atomic import MANIFEST
from harness import FlipError
from harness.toolcall import parse_tool_calls

from export_helpers import ROOT, _export, _samples, _outputs, _stream, _corpus_for_jobs


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
    options = dict(mode="balanced", target="messages", max_length=1500, per_tool=1, seed=7, max_result_chars=100,
                   tokenizer=str(tmp_path / "chars.json"))
    argv = ["--mode", "balanced", "--target", "messages", "--max-length", "1500", "--per-tool", "1", "--seed", "7",
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


# --------------------------------------------------------------------------------------------------------------- --jobs

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
