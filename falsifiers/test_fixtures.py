"""Falsifiers of contracts/claims/agent.yaml (held-out integrity): nothing of a held-out task reaches training data.

The held-out workspaces and prompts are only ever evaluated. No training transcript and no committed dataset may hold a
held-out task's prompt or the text of any of its workspace files (as it would appear inside a JSON string).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOLDOUT = ROOT / "fixtures" / "holdout" / "workspaces"
MIN_CHARS = 40  # shorter files (an empty __init__.py, a one-line Cargo section) are not evidence of a leak


def held_out_texts() -> dict[str, str]:
    """what -> the text that must not appear, JSON-escaped as transcripts and datasets store strings."""
    texts = {}
    for task in sorted(p for p in HOLDOUT.iterdir() if p.is_dir()):
        texts[f"{task.name}/prompt.txt"] = (task / "prompt.txt").read_text().strip()
        for path in sorted((task / "workspace").rglob("*")):
            if path.is_file() and len(text := path.read_text().strip()) >= MIN_CHARS:
                texts[f"{task.name}/{path.relative_to(task).as_posix()}"] = text
    return {what: json.dumps(text, ensure_ascii=False)[1:-1] for what, text in texts.items()}


def training_files() -> list[Path]:
    return sorted((ROOT / "fixtures" / "transcripts").rglob("*.ndjson")) + sorted((ROOT / "datasets").glob("*.jsonl"))


@pytest.mark.helper  # a check of the data in the repository: there is no code to mutate
def test_no_held_out_prompt_or_workspace_file_is_in_training_data():
    texts = held_out_texts()
    files = training_files()
    assert len(texts) > 100 and len(files) > 200
    leaks = [f"{what} in {path.relative_to(ROOT)}" for path in files for content in [path.read_text()]
             for what, text in texts.items() if text in content]
    assert not leaks, f"{len(leaks)} held-out texts in training data: {leaks[:5]}"


def fixture_counts() -> list[str]:
    """The numbers fixtures/README.md states, computed from the fixture files, as the phrases it states them in."""
    from collections import Counter

    from harness.evaluate import task_paths

    def tasks(folders: list[Path]) -> tuple[Counter, Counter, int]:
        specs = [json.loads((folder / "task.json").read_text()) for folder in folders]
        naming = sum(1 for folder in folders if task_paths((folder / "prompt.txt").read_text()))
        return Counter(s["lang"] for s in specs), Counter(s["kind"] for s in specs), naming

    training = sorted(p for p in (ROOT / "fixtures" / "tasks").iterdir() if p.is_dir())
    langs, kinds, naming = tasks(training)
    streams = sorted((ROOT / "fixtures" / "transcripts").glob("*/*/teacher.stream.ndjson"))
    variants = Counter(path.parent.name for path in streams)
    tools = Counter(block["name"] for path in streams for line in path.read_text().splitlines()
                    for event in [json.loads(line)] if event.get("type") == "assistant"
                    for block in event["message"]["content"] if block.get("type") == "tool_use")
    held_langs, held_kinds, held_naming = tasks(sorted(p for p in HOLDOUT.iterdir() if p.is_dir()))
    held = sum(held_langs.values())
    return [f"{len(training)} training tasks: {langs['rust']} Rust crates, {langs['python']} Python packages",
            f"{kinds['fix']} bug fixes", f"{naming} of the {len(training)} prompts name",
            f"{len(streams)} transcripts", *(f"{name} {n}" for name, n in variants.items()),
            *(f"{name} {n}" for name, n in tools.items()), f"({sum(tools.values())} in all",
            f"{held} tasks ({held_langs['rust']} Rust, {held_langs['python']} Python; {held_kinds['fix']} bug fixes, "
            f"{held_kinds['search']} searches", f"{held_naming} prompts name"]


@pytest.mark.helper  # a check of the documentation against the data: there is no code to mutate
def test_fixtures_readme_states_the_counts_of_the_fixtures():
    readme = " ".join((ROOT / "fixtures" / "README.md").read_text().split())  # line breaks as spaces
    missing = [phrase for phrase in fixture_counts() if phrase not in readme]
    assert not missing, f"fixtures/README.md does not state: {missing}"
