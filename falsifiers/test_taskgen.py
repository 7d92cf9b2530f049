"""Falsifiers of contracts/claims/taskgen.yaml: generated training tasks never carry a held-out task's text or function body.

Plus helper checks of fixtures/taskgen.py itself (its code lives in fixtures/, which the mutation runner links rather
than copies, so it cannot carry declared mutants): a small verified generation is reproducible byte for byte, every
task it writes fails before and passes after its recorded solution (re-checked by fixtures/check_tasks.py, not by the
generator), and bad options are one-line errors.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from falsifiers import leaks
from fixtures import check_tasks, taskgen, teacher
from fixtures.taskgen_families import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
SEED = 1
# A 2,000-task verified run of seed 1 drops some candidates (failing teacher, passing tests) and draws later ones;
# checking the first 2,400 text candidates covers every task such a run can keep (fixtures/README.md has its counts).
LEAK_CANDIDATES = 2400


def generated_texts(cand: taskgen.Candidate) -> dict[str, str]:
    """Everything a task puts in front of a student: the workspace as given and as solved (edits, new files)."""
    files = dict(cand.files)
    files.update({f"solved/{path}": text for path, text in taskgen.solved_files(cand).items()})
    return files


def leaks_in(cands: list[taskgen.Candidate]) -> list[str]:
    texts, prints = leaks.held_out()
    assert len(texts) == 38 and len(prints) > 50, "the held-out set was not read"
    return [why for cand in cands for why in leaks.leaks(cand.id, cand.prompt, generated_texts(cand), texts, prints)]


def copied_held_out_family() -> taskgen.Family:
    """A family whose body is held-out h-median's `median`, its names changed and its indentation reflowed: what a
    generator that copied one held-out function would produce."""
    source = (ROOT / "fixtures/holdout/workspaces/h-median/workspace/stats/summary.py").read_text()
    fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "median")
    body = textwrap.dedent("\n".join(ast.get_source_segment(source, s) for s in fn.body))
    for old, new in (("values", "numbers"), ("xs", "ordered"), ("mid", "centre")):
        body = re.sub(rf"\b{old}\b", new, body)
    return taskgen.Family("copied_median", "lists", ("middle_value", "central_value"), "numbers", "returns the middle value", body,
                          (([3, 1, 2],), ([5, 1, 4, 2],)))


def copied_held_out_rust_family() -> taskgen.RustFamily:
    """A Rust twin whose body is held-out h-squeeze-spaces' `squeeze`, its names changed and reindented."""
    source = (ROOT / "fixtures/holdout/workspaces/h-squeeze-spaces/workspace/src/squeeze.rs").read_text()
    body = textwrap.dedent(leaks.rust_bodies(source)[0]).strip("\n")
    for old, new in (("s", "text"), ("target", "marker"), ("ch", "letter"), ("out", "result"), ("prev", "last_seen")):
        body = re.sub(rf"\b{old}\b", new, body)
    return taskgen.RustFamily("kebab", "text: &str", "String", body)


def test_no_generated_task_leaks_held_out_text_or_function_bodies(monkeypatch):
    # candidate i is one Python and one Rust task whatever --rust-share is (the share picks which): checking the first
    # LEAK_CANDIDATES of each language covers every share
    clean = [*taskgen.text_candidates(LEAK_CANDIDATES, SEED, rust_share=0.0),
             *taskgen.text_candidates(LEAK_CANDIDATES, SEED, rust_share=1.0)]
    assert len(clean) == 2 * LEAK_CANDIDATES
    # every kind in both languages is among them, the Rust and add-method tasks included
    langs_kinds = {(c.task["lang"], c.kind) for c in clean}
    assert {("python", k) for k in taskgen.KIND_WEIGHTS} | {("rust", k) for k in taskgen.RUST_KIND_WEIGHTS} \
        <= langs_kinds, langs_kinds
    found = leaks_in(clean)
    assert not found, f"{len(found)} leaks, e.g. {found[:3]}"

    # The check can fail: a generator that copies one held-out body (renamed) is caught in every task that uses it,
    monkeypatch.setattr(taskgen, "FAMILIES", FAMILIES + (copied_held_out_family(),))
    leaky = taskgen.text_candidates(300, SEED)
    users = {c.id for c in leaky if any(re.search(r"\b(middle|central)_value\(", text)
                                        for text in generated_texts(c).values())}
    caught = {why.split(":")[0] for why in leaks_in(leaky)}
    assert users and caught == users, (sorted(users)[:3], sorted(caught)[:3])
    # the same for a Rust twin copied from a held-out crate,
    monkeypatch.setattr(taskgen, "FAMILIES", FAMILIES)
    monkeypatch.setattr(taskgen, "RUST_FAMILIES", taskgen.RUST_FAMILIES + (copied_held_out_rust_family(),))
    leaky = taskgen.text_candidates(1000, SEED)
    users = {c.id for c in leaky if any("last_seen" in text for text in generated_texts(c).values())}
    caught = {why.split(":")[0] for why in leaks_in(leaky)}
    assert users and caught == users, (sorted(users)[:3], sorted(caught)[:3])
    # and a prompt that quotes a held-out task (other case, other spacing, inside a longer request) is caught too.
    quoted = (ROOT / "fixtures/holdout/workspaces/h-weekend/prompt.txt").read_text().strip()
    copy = dataclasses.replace(clean[0], prompt="Hi!  " + quoted.upper().replace(" ", "\n  ") + " Thanks.")
    assert leaks_in([copy]) == [f"{copy.id}: prompt contains the task text of h-weekend"]


# ---------------------------------------------------------------------------------------------------------------------
# helpers: the generator itself
# ---------------------------------------------------------------------------------------------------------------------

def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def without_timings(data: bytes) -> bytes:
    """The real tools' own timings and scheduling, the only bytes a rerun may change: unittest's "Ran 3 tests in
    0.001s", cargo's "target(s) in 1.52s" and "finished in 0.00s", the Glob tool's measured `durationMs`, and the
    order in which cargo's parallel test threads report "test NAME ... ok" (sorted within each run of such lines)."""
    data = re.sub(rb"Ran (\d+) tests? in \d+\.\d+s", rb"Ran \1 tests in Xs", data)
    data = re.sub(rb"(target\(s\)|finished) in \d+\.\d+s", rb"\1 in Xs", data)
    data = re.sub(rb"(?:test [\w:]+ \.\.\. \w+\\n)+",
                  lambda run: b"".join(sorted(line + b"\\n" for line in run.group(0).split(b"\\n") if line)), data)
    return re.sub(rb'"durationMs":\d+', rb'"durationMs":X', data)


@pytest.mark.helper
def test_the_rust_share_picks_the_language_of_the_same_candidates():
    """--rust-share draws each candidate's language from its own stream: share 0 gives Python only, 1 Rust only, and
    a share in between keeps each candidate the same Python or Rust task the all-Python or all-Rust run draws at its
    index (so a verified candidate is cached once for every share)."""
    python = {c.index: c for c in taskgen.text_candidates(200, SEED, rust_share=0.0)}
    rust = {c.index: c for c in taskgen.text_candidates(200, SEED, rust_share=1.0)}
    assert {c.task["lang"] for c in python.values()} == {"python"} and {c.task["lang"] for c in rust.values()} == {"rust"}
    half = taskgen.text_candidates(200, SEED, rust_share=0.5)
    share = sum(c.task["lang"] == "rust" for c in half) / len(half)
    assert 0.35 < share < 0.65, share
    twins = [(c, (rust if c.task["lang"] == "rust" else python).get(c.index)) for c in half]
    same = [c for c, twin in twins if twin is not None]
    assert len(same) > 100 and all(taskgen.content_hash(c) == taskgen.content_hash(t) for c, t in twins if t is not None)
    assert taskgen.text_candidates(50, SEED) == taskgen.text_candidates(50, SEED, rust_share=taskgen.RUST_SHARE)


@pytest.mark.helper
def test_the_teachers_grep_patterns_find_the_file_as_plain_text():
    """apr-code's grep is a substring match; the apr-prompt runtime's a regex. Every grep pattern a generated task
    gives the teacher (its name pattern and, for a constant, its value) is text that the task's file holds as written,
    and the name pattern carries no regex metacharacter, so both runtimes find the same lines and the apr-runtime
    dialect trains on it (harness.apr_runtime.target_refusal)."""
    from harness.apr_runtime import REGEX_METACHARACTERS

    patterns = 0
    for cand in taskgen.text_candidates(300, SEED, rust_share=0.5):
        task = cand.task
        if "grep" not in task:
            continue
        patterns += 1
        source = cand.files[task["file"]]
        assert not REGEX_METACHARACTERS & set(task["grep"]), (cand.id, task["grep"])
        assert task["grep"] in source and teacher.looked_for(task["grep"]) in source, (cand.id, task["grep"])
        if task.get("locate", "").startswith("= "):
            assert task["locate"] in source and teacher.looked_for(task["locate"]) in cand.prompt, (cand.id, task["locate"])
    assert patterns > 200


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """The same small verified generation twice, each with its own empty cache (so the second is not a copy)."""
    outs = []
    for run in ("a", "b"):
        base = tmp_path_factory.mktemp(f"taskgen-{run}")
        taskgen.generate(12, SEED, base / "out", jobs=1, cache=base / "cache")
        outs.append(base / "out")
    return outs


@pytest.mark.helper  # fixtures/taskgen.py is linked, not copied, by the mutation runner: no declared mutant can reach it
def test_small_generation_is_reproducible_byte_for_byte(small_runs):
    a, b = (tree_bytes(out) for out in small_runs)
    assert sorted(a) == sorted(b)
    tasks = [p for p in a if p.startswith("tasks/")]
    streams = [p for p in a if p.endswith("teacher.stream.ndjson")]
    assert len({p.split("/")[1] for p in tasks}) == 12 and len(streams) == 12
    assert [p for p in tasks if a[p] != b[p]] == []
    assert [p for p in streams if without_timings(a[p]) != without_timings(b[p])] == []
    manifests = [json.loads(x["manifest.json"]) for x in (a, b)]
    for m in manifests:
        m.pop("timing")
    assert manifests[0] == manifests[1] and manifests[0]["tasks"] == 12
    # the 12 include a Rust crate and an add-method task, so both are verified and compared here too
    assert manifests[0]["by_lang"].get("rust", 0) >= 1 and manifests[0]["by_kind"].get("add-method", 0) >= 1


@pytest.mark.helper
def test_every_generated_task_fails_before_and_passes_after_its_solution(small_runs):
    out = small_runs[0]
    dirs = sorted((out / "tasks").iterdir())
    problems = {d.name: check_tasks.check(d) for d in dirs}
    assert len(dirs) == 12 and {k: v for k, v in problems.items() if v} == {}
    manifest = json.loads((out / "manifest.json").read_text())
    split = manifest["split"]
    assert sorted(split["train"] + split["validation"]) == [d.name for d in dirs]
    assert sum(manifest["by_kind"].values()) == 12 == sum(manifest["by_operator"].values())


@pytest.mark.helper
def test_cached_rerun_copies_the_verified_tasks(small_runs, tmp_path):
    # small_runs[0]'s cache sits beside its output
    again = taskgen.generate(12, SEED, tmp_path / "out", jobs=1, cache=small_runs[0].parent / "cache")
    assert again["timing"]["cache_hits"] >= 12
    assert tree_bytes(tmp_path / "out" / "tasks") == tree_bytes(small_runs[0] / "tasks")


def edit_results(stream: Path) -> list[tuple[dict, str, bool]]:
    """Each Edit of a teacher transcript: (its input, its result text, is_error), in order."""
    uses, results = {}, {}
    for line in stream.read_text().splitlines():
        event = json.loads(line)
        for block in event.get("message", {}).get("content", []):
            if isinstance(block, dict) and block.get("type") == "tool_use" and block["name"] == "Edit":
                uses[block["id"]] = block["input"]
            if isinstance(block, dict) and block.get("type") == "tool_result" and block["tool_use_id"] in uses:
                results[block["tool_use_id"]] = (block["content"], bool(block.get("is_error")))
    return [(uses[i], *results[i]) for i in uses]


@pytest.mark.helper
def test_edit_recovery_is_a_rejected_edit_then_the_right_one_and_trains_only_the_recovery(tmp_path):
    """--edit-recover-share 1: the teacher's first Edit of every editing task is rejected by Claude Code's own errors
    (old = new; an old string not in the file), then it recovers (after not-found, by reading the file again) and the
    task's tests pass; the export never makes a rejected Edit a response, and trains the step after each rejection."""
    from harness.export import ExportOptions, export

    out = tmp_path / "out"
    manifest = taskgen.generate(8, SEED, out, jobs=1, cache=tmp_path / "cache", rust_share=0.0, edit_recover_share=1.0)
    editing = [d.name for d in (out / "tasks").iterdir() if json.loads((d / "task.json").read_text()).get("edits")]
    failures = manifest["edit_recover"]["by_failure"]
    assert sum(failures.values()) == len(editing) >= 6 and set(failures) == {"identical", "not-found"}, failures
    errors = {"identical": "<tool_use_error>No changes to make: old_string and new_string are exactly the same.",
              "not-found": "<tool_use_error>String to replace not found in file."}
    rejected = []
    for task in editing:
        [stream] = (out / "transcripts" / task).glob("*/teacher.stream.ndjson")
        edits = edit_results(stream)
        (first, result, is_error), rest = edits[0], edits[1:]
        kind = "identical" if first["old_string"] == first["new_string"] else "not-found"
        assert is_error and result.startswith(errors[kind]) and rest and not any(e for _, _, e in rest), (task, edits)
        assert rest[0][0]["new_string"] == first["new_string"] or kind == "identical"
        rejected.append((kind, first))
    export([str(out / "transcripts")], tmp_path / "sft", ExportOptions(progress=False))
    samples = [json.loads(line) for line in (tmp_path / "sft" / "apr_code_sft_full.jsonl").read_text().splitlines()]
    samples = [s for s in samples if "<tool_call>" in s["response"]]  # not the final answers
    responses = [json.loads(s["response"].split("<tool_call>")[1].split("</tool_call>")[0]) for s in samples]
    edits = [r["input"] for r in responses if r["name"] == "file_edit"]
    assert edits and all(e["old"] != e["new"] for e in edits)
    for kind, first in rejected:
        assert not any(e["old"] == first["old_string"] and e["new"] == first["new_string"] for e in edits), first
    after = [r["name"] for s, r in zip(samples, responses)
             if s["instruction"].rstrip().removesuffix("Reply with the next tool call.").rstrip().endswith("</tool_use_error>")]
    assert sorted(after) == sorted("file_edit" if kind == "identical" else "file_read" for kind, _ in rejected), after


@pytest.mark.helper
def test_every_family_is_well_formed_and_runs_on_its_samples():
    assert len(FAMILIES) >= 40 and len({f.key for f in FAMILIES}) == len(FAMILIES)
    for family in FAMILIES:
        assert set(re.findall(r"@(\w+)@", family.body)) == set(family.consts), family.key
        values = {c: taskgen.CONSTS[c].values[0] for c in family.consts}
        source = taskgen.module_source(list(family.imports), [taskgen.function_source(family, family.names[0], values)])
        outcomes = taskgen.run_calls(source, family.names[0], family.samples)
        assert sum(status == "ok" for status, _ in outcomes) >= 2, family.key


@pytest.mark.helper
def test_every_rust_family_agrees_with_its_python_twin(tmp_path):
    """One crate holding every Rust twin (each constant value too) and a test per function asserting what the Python
    twin returns on the samples: one cargo build checks them all, so no family's tasks are doomed to be dropped."""
    py = {f.key: f for f in FAMILIES}
    assert len(taskgen.RUST_FAMILIES) >= 25 and all(r.key in py for r in taskgen.RUST_FAMILIES)
    functions, names, cases = [], [], []
    for rfam in taskgen.RUST_FAMILIES:
        family = py[rfam.key]
        assert set(re.findall(r"@(\w+)@", rfam.body)) == set(family.consts), rfam.key
        for i in range(max([len(taskgen.CONSTS[c].values) for c in family.consts] or [1])):
            values = {c: taskgen.CONSTS[c].values[i % len(taskgen.CONSTS[c].values)] for c in family.consts}
            name = f"{rfam.key}_{i}"
            checks = taskgen.rust_checks(rfam, family, name, taskgen.python_outcomes(family, name, values))
            assert len(checks) >= 2, rfam.key
            functions.append(taskgen.rust_function(rfam, family, name, values))
            names.append(name)
            cases.append((f"{name}_examples", rfam.ret, checks))
    (tmp_path / "src").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "Cargo.toml").write_text(taskgen.rs.cargo_toml("twins"))
    (tmp_path / "src/lib.rs").write_text("pub mod all;\n")
    (tmp_path / "src/all.rs").write_text(taskgen.rs.module_source([], functions))
    (tmp_path / "tests/all.rs").write_text(taskgen.rs.test_source("twins::all", names, cases))
    proc = subprocess.run(["cargo", "test", "--offline"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{len(names)} passed" in proc.stdout


@pytest.mark.helper
@pytest.mark.parametrize("args, message", [
    (["--n", "0", "--out", "{tmp}/o"], "--n must be at least 1"),
    (["--n", "2", "--jobs", "0", "--out", "{tmp}/o"], "--jobs must be at least 1"),
    (["--n", "2", "--rust-share", "1.5", "--out", "{tmp}/o"], "--rust-share must be between 0 and 1, not 1.5"),
    (["--n", "2", "--rust-share", "nan", "--out", "{tmp}/o"], "--rust-share must be between 0 and 1, not nan"),
    (["--n", "2", "--edit-recover-share", "-0.1", "--out", "{tmp}/o"], "--edit-recover-share must be between 0 and 1"),
    (["--n", "2", "--edit-recover-share", "0.5", "--text-only", "--out", "{tmp}/o"], "needs the teacher's transcripts"),
    (["--n", "2", "--out", "{tmp}/mine"], "holds files this generator did not write"),
    (["--n", "2", "--out", "{tmp}/mine/notes.txt"], "is not a directory"),
    (["--n", "2", "--out", "{tmp}/o", "--cache", "{tmp}/mine/notes.txt"], "--cache {tmp}/mine/notes.txt is not a dir"),
    (["--n", "two", "--out", "{tmp}/o"], "argument --n: invalid int value: 'two'"),
    (["--out", "{tmp}/o"], "the following arguments are required: --n"),
    (["--n", "2", "--out", "{tmp}/o", "--verify"], "unrecognized arguments: --verify"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, message):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "fixtures.taskgen", *(a.format(tmp=tmp_path) for a in args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    # one line, exit 2: no argparse usage dump, no traceback, nothing on stdout, nothing written
    assert proc.returncode == 2 and proc.stdout == "", proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskgen: error: ") and message.format(tmp=tmp_path) in lines[0], \
        proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and not (tmp_path / "o").exists()


def alive_sleep(proc: Path) -> bool:
    """Whether /proc/PID is still our `sleep 60` and not a zombie (a reused pid is someone else's process)."""
    try:
        return proc.joinpath("cmdline").read_bytes().startswith(b"sleep") and \
            proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.helper
def test_a_hanging_test_run_is_killed_with_its_children(tmp_path, monkeypatch):
    """A seeded bug can make a test binary loop forever under cargo: the before-run gives up after BEFORE_TIMEOUT_S
    and kills the whole process group, so no spinning grandchild outlives the candidate."""
    monkeypatch.setattr(taskgen, "BEFORE_TIMEOUT_S", 1)
    (tmp_path / "ws").mkdir()
    pid_file = tmp_path / "child.pid"
    assert taskgen.test_exit_code(tmp_path / "ws", f"sh -c 'echo $$ > {pid_file}; exec sleep 60'; true") is None
    sleeper = Path(f"/proc/{int(pid_file.read_text())}")
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously; the orphan is reaped by init
    while time.monotonic() < deadline and alive_sleep(sleeper):
        time.sleep(0.1)
    assert not alive_sleep(sleeper)
    assert taskgen.test_exit_code(tmp_path / "ws", "exit 3") == 3


def unseen_actions(stream: Path, task: dict) -> list[str]:
    """The Greps and the Reads of the task's own file in a teacher transcript that nothing before them showed: each
    Grep's name (or phrase) and the file's path must be in the prompt or an earlier tool result."""
    seen, problems = task["prompt"], []
    for line in stream.read_text().splitlines():
        for block in json.loads(line).get("message", {}).get("content", []):
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use" and block["name"] == "Grep":
                if teacher.looked_for(block["input"]["pattern"]) not in seen:
                    problems.append(f"Grep {block['input']['pattern']!r}")
            if (block.get("type") == "tool_use" and block["name"] == "Read"
                    and block["input"]["file_path"].endswith("/" + task["file"]) and task["file"] not in seen):
                problems.append(f"Read {task['file']}")
            if block.get("type") == "tool_result":
                content = block.get("content")
                seen += "\n" + (content if isinstance(content, str) else json.dumps(content))
    return problems


@pytest.mark.helper
def test_the_teacher_greps_and_reads_only_what_it_was_shown(tmp_path):
    """A generated search, test-fix or constant task whose prompt names neither the function (or setting) nor its
    file: the teacher finds them from what it has seen (the tests' output, the doc phrase the prompt quotes, the old
    value it gives), never by a name it was not told (fixtures/README.md has how often version 2's teacher did)."""
    wanted = {(kind, lang) for kind in ("search", "test-fix", "constant") for lang in ("rust", "python")}
    found = {}
    for index in range(400):
        cand = taskgen.build_candidate(SEED, index, rust_share=0.5)
        key = (cand.kind, cand.task.get("lang"))
        if key in wanted and key not in found and not cand.rejected:
            found[key] = cand
    assert set(found) == wanted
    for key, cand in sorted(found.items()):
        task = dict(cand.task, id=cand.id, prompt=cand.prompt)
        for variant in teacher.VARIANTS[cand.kind]:
            entry = tmp_path / f"{cand.id}-{variant}"
            taskgen.write_task(cand, entry / "task")
            session = teacher.run_session(task, entry / "task" / "workspace", variant, random.Random(cand.index))
            stream = entry / "teacher.stream.ndjson"
            stream.write_text(session.rec.dump())
            assert unseen_actions(stream, task) == [], f"{cand.id} ({variant})"
