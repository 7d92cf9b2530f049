"""Task folders, the format `flip agent`, `flip eval --prompts DIR`, tune and curve read:

    DIR/<id>/prompt.txt     the task, as the user would type it
    DIR/<id>/workspace/     the project files
    DIR/<id>/task.json      {"test": "<shell command, run in the workspace, exit 0 = solved>", ...}

and the generated task sets of fixtures/taskgen.py (GEN/tasks/ in that format, GEN/transcripts/<id>/, GEN/manifest.json
with the train/validation split) that curve and `flip run --train-tasks` train on.

Below harness.evaluate and harness.agent, which both load tasks; it imports neither.
"""
from __future__ import annotations

import json
import os
import random
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness import FlipError
from harness.contracts import FIXTURE_TASKS

FIRST_TOOL_BY_KIND = {"fix": "file_read", "add-method": "file_read", "search": "grep", "constant": "grep",
                      "rename": "grep", "test-fix": "shell", "compile": "shell", "create": "file_write",
                      "create-from-tests": "file_read"}


@dataclass
class AgentTask:
    id: str
    prompt: str
    workspace: Path
    test: str
    spec: dict  # the whole task.json

    @property
    def kind(self) -> str | None:
        return self.spec.get("kind")

    @property
    def lang(self) -> str | None:
        """task.json's `lang` (python, rust): the held-out tasks are about half of each."""
        return self.spec.get("lang")

    @property
    def first_tool(self) -> str | None:
        """The teacher's first tool: task.json's `first_tool`, else the canonical one of its kind."""
        return self.spec.get("first_tool") or FIRST_TOOL_BY_KIND.get(self.kind)

    @property
    def fix_lines(self) -> tuple[str, ...]:
        """The workspace lines the task's own fix changes (task.json `edits`), stripped: empty when it has none."""
        return fix_lines(self.spec, self.workspace)


FIX_LINE_CHARS = 4  # a fix line, and a piece of one an edit quotes, is at least this long once stripped


def fix_lines(spec: dict, workspace: Path) -> tuple[str, ...]:
    """The lines of the workspace that the task's own edits (task.json `edits`: {"old", "new"[, "file"]}, each `old`
    found in its file) change, stripped of indentation: the lines the edit's differing span touches, after the common
    start and end of `old` and `new` are set aside; for an edit that only inserts, the lines on both sides of the
    insertion point. Lines shorter than FIX_LINE_CHARS (a lone `}`) say nothing of where the fix is and are left
    out. An edit that does not match its file, or a malformed one, adds none: task.json is the user's."""
    lines: list[str] = []
    edits = spec.get("edits")
    for edit in edits if isinstance(edits, list) else []:
        if not isinstance(edit, dict) or not all(isinstance(edit.get(key), str) for key in ("old", "new")):
            continue
        name = edit.get("file", spec.get("file"))
        try:
            path = (workspace / name).resolve()
            if not path.is_relative_to(workspace.resolve()):  # a task.json naming a file outside: not read
                continue
            text = path.read_text(encoding="utf-8")
        except (TypeError, OSError, UnicodeDecodeError, ValueError):
            continue
        old, new = edit["old"], edit["new"]
        at = text.find(old)
        if at < 0 or not old:
            continue
        same_start = len(os.path.commonprefix([old, new]))
        same_end = len(os.path.commonprefix([old[same_start:][::-1], new[same_start:][::-1]]))
        start, end = at + same_start, at + len(old) - same_end
        first = text.count("\n", 0, max(start - 1, 0) if start == end else start)
        last = text.count("\n", 0, max(end - 1, start))
        lines += [line.strip() for line in text.split("\n")[first:last + 1] if len(line.strip()) >= FIX_LINE_CHARS]
    return tuple(dict.fromkeys(lines))


def touches_fix(old: str, fix: tuple[str, ...]) -> bool:
    """Whether an edit's `old` text names one of the fix's lines: one of its lines, stripped, is a fix line or (at
    least FIX_LINE_CHARS long) part of one. A call that quotes the faulty line, whatever it then writes, found it."""
    return any(part == line or (len(part) >= FIX_LINE_CHARS and part in line)
               for part in (piece.strip() for piece in old.split("\n")) if part for line in fix)


SPECIAL_FILE = "not a regular file, directory or link (a FIFO, socket or device); a task's workspace holds only those"


def is_special(path: str | os.PathLike) -> bool:
    """A FIFO, socket or device: copying one into a sandbox would block or fail half way."""
    mode = os.lstat(path).st_mode
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def first_special_entry(root: Path) -> Path | None:
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            if is_special(os.path.join(directory, name)):
                return Path(directory) / name
    return None


def load_task(folder: Path) -> AgentTask:
    for name in ("prompt.txt", "task.json", "workspace"):
        if not (folder / name).exists():
            raise FlipError(f"task {folder}: no {name} (a task folder holds prompt.txt, task.json and workspace/)")
    try:
        spec = json.loads((folder / "task.json").read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as err:
        raise FlipError(f"{folder / 'task.json'}: not JSON ({err})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("test"), str) or not spec["test"].strip():
        raise FlipError(f"{folder / 'task.json'}: needs a \"test\" field holding a shell command")
    for key in ("kind", "first_tool", "summary"):  # read as text later, after minutes of running: checked now
        if key in spec and not isinstance(spec[key], str):
            raise FlipError(f"{folder / 'task.json'}: \"{key}\" must be a string, not {json.dumps(spec[key])}")
    prompt = (folder / "prompt.txt").read_bytes().decode("utf-8-sig", "replace").strip()
    if not prompt:
        raise FlipError(f"{folder / 'prompt.txt'} is empty")
    if not (folder / "workspace").is_dir():
        raise FlipError(f"{folder / 'workspace'} is not a directory")
    special = first_special_entry(folder / "workspace")
    if special is not None:
        raise FlipError(f"{special}: {SPECIAL_FILE}")
    return AgentTask(folder.name, prompt, folder / "workspace", spec["test"], spec)


def load_tasks(directory: str | os.PathLike) -> list[AgentTask]:
    """Every task folder under DIR, sorted by id."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FlipError(f"--tasks {directory} is not a directory")
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    tasks = [load_task(p) for p in folders]
    if not tasks:
        raise FlipError(f"--tasks {directory} holds no task folder (<id>/prompt.txt, task.json, workspace/)")
    return tasks


def read_manifest(tasks: Path, flag: str = "--tasks") -> dict:
    """A generated task set's split: {"train": ids, "validation": ids, "seed": the generator's seed}."""
    path = tasks / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        split = manifest["split"]
        train, validation = list(split["train"]), list(split["validation"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FlipError(f"{flag} {tasks}: no generated task set there ({path}: {err})") from None
    return {"train": train, "validation": validation, "seed": manifest.get("seed")}


# flip tune's split of the hand-written training tasks (fixtures/tasks): flip curve validates on the same split, and
# flip run --with-fixtures trains on its other side only.
VALIDATION_SEED = 7


def task_folders(directory: Path) -> list[Path]:
    """The task folders of a hand-written task set (DIR/<id>/task.json), sorted by id."""
    return sorted(p for p in directory.iterdir() if (p / "task.json").is_file())


def validation_split(task_dirs: list[Path], seed: int = VALIDATION_SEED) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): one task of each (kind, language) group goes to validation."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for folder in task_dirs:
        spec = json.loads((folder / "task.json").read_text(encoding="utf-8"))
        groups[(spec.get("kind", ""), spec.get("lang", ""))].append(folder.name)
    rng = random.Random(seed)
    val = sorted(rng.choice(sorted(ids)) for _, ids in sorted(groups.items()))
    train = sorted(folder.name for folder in task_dirs if folder.name not in val)
    return train, val


def hand_written_training_transcripts(tasks: Path, transcripts: Path) -> list[Path]:
    """The transcript folders (transcripts/<id>/) of the training side of flip tune's split of the hand-written tasks
    (tasks/<id>/task.json): never a task of its validation split, which flip tune and flip curve validate on."""
    train, _ = validation_split(task_folders(tasks))
    return [transcripts / task_id for task_id in train if (transcripts / task_id).is_dir()]


def training_order(tasks: Path, train_ids: list[str], seed: int) -> list[str]:
    """One seeded order of a generated set's training ids: the first N of it are the curve's N tasks, nested across N.
    A task whose prompt is word for word the prompt of a task of flip tune's validation split of the hand-written
    tasks (a generic "a couple of tests fail when I run cargo test") is left out: flip curve validates on that split,
    and a student trained on a validation task's exact words would not be validated on text it never saw."""
    validation_prompts = {prompt_text(FIXTURE_TASKS / task_id) for task_id in validation_split(
        task_folders(FIXTURE_TASKS))[1]} - {None}
    order = sorted(train_ids)
    random.Random(seed).shuffle(order)  # then filtered: the other tasks keep the order they had before the filter
    return [task_id for task_id in order if prompt_text(tasks / "tasks" / task_id) not in validation_prompts]


def prompt_text(folder: Path) -> str | None:
    """A task folder's prompt.txt, stripped; None when it has none."""
    path = folder / "prompt.txt"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def training_transcripts(tasks: Path, n: int | None, seed: int, flag: str = "--train-tasks") -> list[Path]:
    """The transcript folders of the first n tasks (all when n is None) of a generated set's training order: the
    tasks a curve student of size n trained on, so a student trained from them repeats a curve row's data."""
    order = training_order(tasks, read_manifest(tasks, flag)["train"], seed)
    if n is not None and not 1 <= n <= len(order):
        raise FlipError(f"--train-n must be between 1 and {len(order)} (the training tasks of {tasks}), not {n}")
    folders = [tasks / "transcripts" / task_id for task_id in order[:n]]
    missing = next((folder for folder in folders if not folder.is_dir()), None)
    if missing is not None:
        raise FlipError(f"{flag} {tasks}: {missing} is missing (an incomplete generated task set)")
    return folders
