"""What the export falsifiers (falsifiers/test_export*.py) share: fixture paths, hypothesis settings, and
builders of small recordings and exports."""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, settings

import transcript_gen as gen
from harness.atomic import MANIFEST
from harness.export import ExportOptions, export

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
