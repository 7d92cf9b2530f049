"""Falsifiers of contracts/agent.yaml (held-out integrity): nothing of a held-out task reaches training data.

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
