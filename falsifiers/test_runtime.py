"""Falsifiers of contracts/claims/agent.yaml (the tool runtime): the agent's tools answer as Claude Code answered the teacher.

The central one replays every fixture transcript: each teacher call, remapped to apr-code by the exporter, is fed to
the agent's own step function (harness.agent.act) as if the model had written it, on a fresh sandbox copy of the
task's workspace; the observation the agent renders must equal the one the exporter rendered from the recording.
Allowed differences, each named and normalised and nothing else:
  TIMINGS      `finished in 0.01s`, `Finished ... in 0.17s`, `Ran 2 tests in 0.004s`: wall-clock times
  BUILD_HASHES cargo's `target/debug/deps/<crate>-<16 hex>` file names
  THREAD_IDS   `thread 'name' (21597) panicked`: the OS thread id cargo prints
  CARGO_ORDER  cargo runs compile jobs and test threads in parallel, so the order of the lines of a `cargo` command's
               output varies from run to run (`test x ... ok` lines, which test's panic note comes first, which job's
               error, `-q` progress marks such as `.. 2/3`): after the `Exit code N` line, a cargo result is compared
               as a multiset of lines, its progress-mark lines dropped
  GREP_CONTENT a Grep the teacher ran with output_mode content: apr-code's grep has no output_mode, so the runtime
               answers in Claude Code's default mode (`Found N files`); such steps are counted, not compared
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from harness.agent import AgentOptions, act, open_episode
from harness.tasks import AgentTask
from harness.export import ExportOptions, Stats, trajectory_steps
from harness.prompt import Budget, Scrubber
from harness.runtime import EDIT_OK, Runtime
from harness.sandbox import Sandbox
from harness.tokens import counter
from harness.toolcall import render_tool_call
from harness.transcripts import LineStats, read_file

ROOT = Path(__file__).resolve().parent.parent
TRANSCRIPTS = ROOT / "fixtures" / "transcripts"
TASKS = ROOT / "fixtures" / "tasks"

TIMINGS = re.compile(r"\b(in|after) \d+(\.\d+)?m?s\b")
BUILD_HASHES = re.compile(r"-[0-9a-f]{16}\b")
THREAD_IDS = re.compile(r"(thread '[^']*') \(\d+\)")
PROGRESS_MARKS = re.compile(r"^[.Fi]*( \d+/\d+)?$")


def normalise(text: str) -> str:
    """Remove exactly the named allowed differences (see the module docstring)."""
    text = THREAD_IDS.sub(r"\1", BUILD_HASHES.sub("-HASH", TIMINGS.sub(r"\1 Xs", text)))
    if not text.startswith('Action: <tool_call>\n{"name": "shell", "input": {"command": "cargo '):
        return text
    head, _, result = text.partition("\nResult")
    label, _, body = result.partition("\n")
    first, _, rest = body.partition("\n") if body.startswith("Exit code") else ("", "", body)
    lines = sorted(line for line in rest.split("\n") if not PROGRESS_MARKS.match(line))
    return "\n".join([head, "Result" + label, first, *lines])


def exported_steps(transcript: Path):
    """(apr-code tool, input, observation, recorded Claude Code input) per step, by the exporter's own code path."""
    read = read_file(transcript, LineStats())
    scrubber = Scrubber(read.roots, Counter())
    budget = Budget(counter(), 1024, "")
    steps = []
    for trajectory in read.trajectories:
        originals = [c for c in trajectory.calls if c.name != "TodoWrite"]
        exported = trajectory_steps(trajectory, scrubber, budget, ExportOptions(), Stats())
        assert len(exported) == len(originals), f"{transcript}: a recorded call did not export"
        steps += [(s.tool, s.input, s.observation, c.input) for s, c in zip(exported, originals)]
    return steps


def transcripts() -> list[Path]:
    """Every fixture transcript; FLIP_REPLAY_TASKS=a,b narrows to some tasks (the mutation runs use a fast subset)."""
    found = sorted(TRANSCRIPTS.glob("*/*/teacher.stream.ndjson"))
    only = os.environ.get("FLIP_REPLAY_TASKS")
    if only:
        wanted = set(only.split(","))
        found = [p for p in found if p.parent.parent.name in wanted]
    return found


def replay(transcript: Path) -> tuple[list[tuple[str, str, str]], int]:
    """([(what, exported, replayed)] for every compared step, GREP_CONTENT steps skipped)."""
    task = transcript.parent.parent.name
    agent_task = AgentTask(task, "", TASKS / task / "workspace", "true", {})
    episode = open_episode(agent_task, AgentOptions())
    compared, grep_content = [], 0
    try:
        for tool, tool_input, exported, recorded in exported_steps(transcript):
            act(episode, render_tool_call(tool, tool_input), counter(), AgentOptions())
            replayed = episode.steps[-1].observation
            if tool == "grep" and recorded.get("output_mode", "files_with_matches") != "files_with_matches":
                grep_content += 1
                continue
            compared.append((f"{transcript.relative_to(ROOT)} {tool} {json.dumps(tool_input)[:120]}", exported,
                             replayed))
    finally:
        episode.sandbox.close()
    return compared, grep_content


def test_replayed_teacher_calls_give_the_exported_observations():
    files = transcripts()
    assert files, "no fixture transcripts to replay"
    mismatches, compared, grep_content = [], 0, 0
    for transcript in files:
        steps, skipped = replay(transcript)
        grep_content += skipped
        compared += len(steps)
        mismatches += [(what, a, b) for what, a, b in steps if normalise(a) != normalise(b)]
    print(f"replayed {len(files)} transcripts: {compared} steps compared, {grep_content} content-mode greps skipped")
    assert compared > 3 * len(files)
    assert not mismatches, "\n\n".join(f"{what}\n--- exported\n{a}\n--- replayed\n{b}" for what, a, b in mismatches[:3])


# ------------------------------------------------------------------------------------------- the tools, one by one

@pytest.fixture
def runtime(tmp_path):
    (tmp_path / "ws" / "src").mkdir(parents=True)
    (tmp_path / "ws" / "src" / "a.py").write_text("one\ntwo\nthree\n")
    (tmp_path / "ws" / "src" / "dup.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "ws" / "empty.txt").write_text("")
    (tmp_path / "ws" / "target").mkdir()
    (tmp_path / "ws" / "target" / "junk.py").write_text("one\n")
    with Sandbox(tmp_path / "ws") as sandbox:
        yield Runtime(sandbox)


def test_tool_results_use_claude_codes_texts(runtime):
    root = runtime.sandbox.real_root
    read = runtime.execute("file_read", {"path": "src/a.py"})
    assert (read.text, read.is_error) == ("1\tone\n2\ttwo\n3\tthree\n4\t", False)
    assert runtime.execute("file_read", {"path": "src/a.py", "offset": 2, "limit": 1}).text == "2\ttwo"
    assert runtime.execute("file_read", {"path": "empty.txt"}).text.startswith("<system-reminder>Warning: the file")
    missing = runtime.execute("file_read", {"path": "nope.py"})
    assert missing.is_error and missing.text == (
        f"<tool_use_error>File does not exist. Note: your current working directory is {runtime.sandbox.root}."
        "</tool_use_error>")

    absent = runtime.execute("file_edit", {"path": "src/a.py", "old": "four", "new": "4"})
    assert absent.is_error and absent.text == "<tool_use_error>String to replace not found in file.\nString: four</tool_use_error>"
    twice = runtime.execute("file_edit", {"path": "src/dup.py", "old": "x = 1", "new": "x = 2"})
    assert twice.is_error and twice.text.startswith(
        "<tool_use_error>Found 2 matches of the string to replace, but replace_all is false.")
    assert (root / "src" / "dup.py").read_text() == "x = 1\nx = 1\n", "a refused edit changed the file"
    edited = runtime.execute("file_edit", {"path": "src/a.py", "old": "two", "new": "2"})
    assert (edited.text, edited.is_error) == (EDIT_OK.format(path=root / "src" / "a.py"), False)
    assert (root / "src" / "a.py").read_text() == "one\n2\nthree\n"

    created = runtime.execute("file_write", {"path": "new/b.py", "content": "b = 1\n"})
    assert created.text.startswith(f"File created successfully at: {root / 'new' / 'b.py'} ")
    assert (root / "new" / "b.py").read_text() == "b = 1\n"

    failing = runtime.execute("shell", {"command": "echo out; echo err >&2; exit 3"})
    assert (failing.text, failing.is_error) == ("Exit code 3\nout\nerr", True)
    assert runtime.execute("shell", {"command": "printf 'a\\n\\n'"}).text == "a"

    assert runtime.execute("grep", {"pattern": "one"}).text == f"Found 1 file\n{root / 'src' / 'a.py'}"
    assert runtime.execute("grep", {"pattern": "ONE", "case_insensitive": True, "glob": "*.py"}).text.startswith("Found 1 file")
    assert runtime.execute("grep", {"pattern": "zzz"}).text == "No files found"
    assert runtime.execute("glob", {"pattern": "**/*.py"}).text == "\n".join(
        str(root / p) for p in ("new/b.py", "src/a.py", "src/dup.py"))
    assert runtime.execute("glob", {"pattern": "*.rs"}).text == "No files found"
    bad = runtime.execute("glob", {"pattern": "src**"})  # pathlib refuses it: the call's error, not the run's end
    assert bad.is_error and not bad.refused and bad.text.startswith("<tool_use_error>ValueError: ")


def test_calls_naming_paths_outside_are_refused_and_run_nothing(runtime, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    (runtime.sandbox.root / "link").symlink_to(tmp_path)
    calls = [("file_read", {"path": str(outside)}), ("file_read", {"path": "../outside.txt"}),
             ("file_read", {"path": "link/outside.txt"}), ("file_write", {"path": "link/x.txt", "content": "x"}),
             ("file_edit", {"path": "src/../../outside.txt", "old": "secret", "new": "gone"}),
             ("grep", {"pattern": "secret", "path": ".."}), ("glob", {"pattern": "../*.txt"}),
             ("shell", {"command": "cat ../outside.txt"}), ("shell", {"command": f"echo gone > {outside}"}),
             ("shell", {"command": "cd .. && echo gone > outside.txt"}), ("file_read", {"path": "~/.bashrc"})]
    for tool, tool_input in calls:
        result = runtime.execute(tool, tool_input)
        assert result.refused and result.is_error, (tool, tool_input, result)
        assert "secret" not in result.text
    assert outside.read_text() == "secret\n" and not (tmp_path / "x.txt").exists()


def test_apr_runtime_answers_with_apr_codes_texts(tmp_path):
    """harness.runtime.AprRuntime (`flip agent --runtime apr`) executes for real in a sandbox and answers with the
    texts and limits of contracts/apr_runtime.yaml: numbered lines and the continuation note, `Wrote N bytes`,
    `Edited P. Replaced 1 occurrence (A bytes → B bytes).`, the command rule's refusal before anything runs,
    `exit code N:`, output cut at 8,192 bytes, substring grep as `path:line:content`, glob's `No files matching`."""
    from harness.runtime import AprRuntime

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("PAGE_SIZE = 10\nx = 1\n")
    with Sandbox(tmp_path) as sandbox:
        runtime = AprRuntime(sandbox)

        def run(tool, **tool_input):
            result = runtime.execute(tool, tool_input)
            return result.is_error, result.text.replace(str(sandbox.root), "ROOT")

        assert run("file_read", path="src/a.py") == (False, "1\tPAGE_SIZE = 10\n2\tx = 1\n")
        assert run("file_read", path="src/a.py", offset=0, limit=1) == (
            False, "1\tPAGE_SIZE = 10\n\n[1 more lines, use offset=2 to continue]")
        assert run("file_edit", path="src/a.py", old="x = 1", new="x = 2") == (
            True, "missing required field 'old_string'")
        assert run("file_edit", path="src/a.py", old_string="x = 1", new_string="x = 22") == (
            False, "Edited ROOT/src/a.py. Replaced 1 occurrence (5 bytes → 6 bytes).")
        assert run("file_write", path="b/c.txt", content="é") == (False, "Wrote 2 bytes to ROOT/b/c.txt")
        assert run("shell", command="touch made | cat") == (
            True, "command contains shell metacharacters (;|&&||`$()) — injection blocked")
        assert not (sandbox.root / "made").exists()
        assert run("shell", command="sh -c 'echo out; exit 3'") == (True, "command contains shell metacharacters "
                                                                          "(;|&&||`$()) — injection blocked")
        assert run("shell", command="python3 -c 'import sys; sys.exit(3)'") == (True, "command contains shell "
                                                                                  "metacharacters (;|&&||`$()) — "
                                                                                  "injection blocked")
        assert run("shell", command="false") == (True, "exit code 1:\n")
        error, text = run("shell", command="head -c 9000 /dev/zero")
        assert not error and text == "\0" * 8192 + "\n\n[output truncated at 8192 bytes]"
        assert run("grep", pattern="PAGE_SIZE =") == (False, "./src/a.py:1:PAGE_SIZE = 10\n")
        assert run("grep", pattern="PAGE_SIZE\\s*=") == (False, "No matches found.")
        assert run("grep", pattern="page_size", case_insensitive=True, path="src/a.py") == (
            False, "src/a.py:1:PAGE_SIZE = 10\n")
        assert run("glob", pattern="**/*.rs") == (False, "No files matching './**/*.rs'")
        assert run("glob", pattern="**/*.py") == (False, "./src/a.py")


def test_file_read_refuses_a_file_over_the_cap_without_loading_it(runtime):
    """A file over READ_MAX_BYTES (apr-code's 128 KB) is an error result naming its size, read no further than the cap
    (a 64 MB sparse file costs flip's process no more than the cap); a file of exactly the cap is read."""
    import tracemalloc

    from harness.runtime import READ_MAX_BYTES

    root = runtime.sandbox.root
    with open(root / "huge.log", "wb") as handle:
        handle.truncate(64 << 20)
    (root / "at-cap.txt").write_bytes(b"x" * (READ_MAX_BYTES - 1) + b"\n")
    tracemalloc.start()
    try:
        huge = runtime.execute("file_read", {"path": "huge.log"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert huge.is_error and not huge.refused
    assert huge.text == f"<tool_use_error>file too large ({64 << 20} bytes, max {READ_MAX_BYTES}). Use offset/limit to " \
                       "read a portion.</tool_use_error>", huge.text
    assert peak < 4 * READ_MAX_BYTES, f"file_read held {peak} bytes for a file over the cap"
    at_cap = runtime.execute("file_read", {"path": "at-cap.txt"})
    assert not at_cap.is_error and at_cap.text.startswith("1\txxx"), at_cap.text[:40]


# ------------------------------------------------------------------ the apr-runtime dialect's observations, replayed

FILE_TOOLS = ("file_read", "file_write", "file_edit")


def test_runtime_dialect_observations_are_what_apr_codes_runtime_answers():
    """`flip export --dialect apr-runtime` shows a result in apr-code's runtime texts only where the translation from
    the teacher's is exact: every fixture transcript's file calls, replayed for real through AprRuntime (`flip agent
    --runtime apr`) on a fresh copy of the task's workspace, get exactly the observation the export wrote for each
    translated result, and every result the export counted as kept in the teacher's text differs from the runtime's.
    Every fixture result of a file tool is translated (full reads, writes, edits); shell, grep and glob results stay
    the teacher's. The counts are exact: translated + kept = every observation with a result. (Shell, grep and glob
    calls are not replayed: the teacher's change no file.)"""
    from harness.apr_runtime import runtime_observation

    totals, kept, matched, differed = Counter(), Counter(), Counter(), Counter()
    options = AgentOptions(runtime="apr", dialect="apr-runtime", progress=False)
    for transcript in transcripts():
        read = read_file(transcript, LineStats())
        scrubber, stats = Scrubber(read.roots, Counter()), Stats()
        task = transcript.parent.parent.name
        episode = open_episode(AgentTask(task, "", TASKS / task / "workspace", "true", {}), options)
        try:
            for trajectory in read.trajectories:
                steps = trajectory_steps(trajectory, scrubber, Budget(counter(), 1024, ""),
                                         ExportOptions(dialect="apr-runtime"), stats)
                for step in steps:
                    if step.tool not in FILE_TOOLS:
                        continue
                    act(episode, render_tool_call(step.tool, step.input), counter(), options)
                    same = episode.steps[-1].observation == step.observation
                    (matched if same else differed)[step.tool] += 1
        finally:
            episode.sandbox.close()
        totals.update(stats.runtime_observations)
        kept.update(stats.teacher_observations)
        observed = stats.remappable - sum(stats.refused.values()) - stats.calls_without_result
        assert sum(stats.runtime_observations.values()) + sum(stats.teacher_observations.values()) == observed
    assert {tool: totals[tool] for tool in FILE_TOOLS} == {tool: matched[tool] for tool in FILE_TOOLS}
    assert not differed and not any(tool in kept for tool in FILE_TOOLS), (differed, kept)
    assert all(totals[tool] > 10 for tool in FILE_TOOLS) and set(kept) <= {"shell", "grep", "glob"}
    assert set(totals) == set(FILE_TOOLS)
    assert runtime_observation("shell", {"command": "ls"}, "a.py", False) is None


# (case, tool, input in the project's names, the teacher's own extra input, translated exactly)
TRANSLATIONS = [
    ("a whole read", "file_read", {"path": "src/a.py"}, {}, True),
    ("a whole read of a file ending in two newlines", "file_read", {"path": "gap.txt"}, {}, True),
    ("a read to the end under a limit", "file_read", {"path": "src/a.py", "limit": 5}, {}, True),
    ("an empty file", "file_read", {"path": "empty.txt"}, {}, True),
    ("a missing file", "file_read", {"path": "nope.py"}, {}, True),
    ("a read cut by its limit", "file_read", {"path": "src/a.py", "limit": 2}, {}, False),
    ("a read from line 2", "file_read", {"path": "src/a.py", "offset": 2}, {}, False),
    ("a read of a line over 2,000 characters", "file_read", {"path": "long.txt"}, {}, False),
    ("a write", "file_write", {"path": "new/b.py", "content": "é = 1\n"}, {}, True),
    ("an edit", "file_edit", {"path": "src/a.py", "old": "two", "new": "zwei"}, {}, True),
    ("an edit whose old string is absent", "file_edit", {"path": "src/a.py", "old": "four", "new": "4"}, {}, True),
    ("an edit whose old string occurs twice", "file_edit", {"path": "src/dup.py", "old": "x = 1", "new": "x"}, {}, True),
    ("an edit that changes nothing", "file_edit", {"path": "src/a.py", "old": "one", "new": "one"}, {}, True),
    ("an edit of every occurrence", "file_edit", {"path": "src/dup.py", "old": "x = 1", "new": "x"},
     {"replace_all": True}, False),
    ("a shell command", "shell", {"command": "ls src"}, {}, False),
    ("a grep", "grep", {"pattern": "two"}, {}, False),
]


@pytest.mark.parametrize("case, tool, tool_input, teacher_extra, exact", TRANSLATIONS, ids=[c[0] for c in TRANSLATIONS])
def test_a_teacher_result_is_translated_only_where_it_is_exact(tmp_path, case, tool, tool_input, teacher_extra, exact):
    """The teacher's result (Claude Code's text, as harness.runtime.Runtime answers, really executed) is translated
    into exactly what apr-code's runtime (AprRuntime, really executed on another copy of the same workspace) answers
    the same call, or, where the teacher's text does not determine that answer, not at all (None: kept and counted)."""
    from harness.apr_runtime import runtime_observation
    from harness.contracts import dialect_input
    from harness.runtime import AprRuntime

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("one\ntwo\nthree\n")
    (tmp_path / "src" / "dup.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "gap.txt").write_text("a\n\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "long.txt").write_text("y" * 2500 + "\n")
    with Sandbox(tmp_path) as claude_box, Sandbox(tmp_path) as apr_box:
        teacher = Runtime(claude_box).execute(tool, tool_input)
        answer = AprRuntime(apr_box).execute(tool, dialect_input(tool, tool_input, "apr-runtime"))
        scrubber = Scrubber(sorted({str(apr_box.root), str(apr_box.real_root)}), Counter())
        translated = runtime_observation(tool, tool_input, teacher.text, teacher.is_error,
                                         {**tool_input, **teacher_extra})
        if exact:
            assert translated == scrubber.text(answer.text), case
        else:
            assert translated is None, case
