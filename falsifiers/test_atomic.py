"""Falsifiers of contracts/claims/cli.yaml (outputs): no command deletes or overwrites what it did not write.

Each case of issue 10's data-loss list is a test here, run through `flip` itself (harness.cli.main, in process) on tiny
models: a non-empty --out is refused before any work, --force writes beside the user's files without deleting any, a
command's own earlier output is replaced atomically, and an output is never written over an input.
"""
from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from falsifiers.test_remap import tiny_adapter, tiny_base
from harness import FlipError
from harness.atomic import (MANIFEST, check_out_dir, claim_dir, dir_state, remove_entry, remove_ours, remove_stale,
                            replaced_dir)
from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-atomic")
    base = tiny_base(root / "base", "llama", seed=3)
    return base, tiny_adapter(base, root / "adapter", seed=4)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256): what 'unchanged' means for a user's directory."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def user_dir(path: Path) -> Path:
    (path / "src").mkdir(parents=True)
    (path / "NOTES.md").write_text("my notes\n")
    (path / "src" / "main.py").write_text("print('mine')\n")
    return path


def _no_work(monkeypatch, module: str, name: str) -> None:
    """Make `module.name` fail loudly: a refusal must come before the command's real work starts."""
    def work(*args, **kwargs):
        raise AssertionError(f"{module}.{name} ran before the output was validated")

    monkeypatch.setattr(f"{module}.{name}", work)


def test_merge_refuses_a_user_directory_and_force_keeps_its_files(tiny, tmp_path, capsys, monkeypatch):
    base, adapter = tiny
    out = user_dir(tmp_path / "out")
    before = tree_digest(out)
    with monkeypatch.context() as patch:
        _no_work(patch, "harness.remap", "base_config")
        assert main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]) == 2
    assert "is not empty and was not written by `flip merge`" in capsys.readouterr().err
    assert tree_digest(out) == before and not (tmp_path / "out.gguf").exists()

    assert main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out), "--force"]) == 0
    after = tree_digest(out)
    assert {k: after[k] for k in before} == before, "--force deleted or changed a user file"
    assert "model.safetensors" in after and (tmp_path / "out.gguf").is_file()


def test_merge_replaces_its_own_output_and_refuses_the_current_directory(tiny, tmp_path, capsys, monkeypatch):
    base, adapter = tiny
    out = tmp_path / "merged"
    assert main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]) == 0
    (out / "stale.bin").write_bytes(b"x")  # not ours: the directory is no longer only merge's output
    assert main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]) == 2
    (out / "stale.bin").unlink()
    first = tree_digest(out)
    assert main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]) == 0
    assert tree_digest(out) == first, "a rerun of the same merge gives the same bytes"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temporary directories left behind"

    work = user_dir(tmp_path / "work")
    before = tree_digest(work)
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", "."]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert tree_digest(work) == before


def test_merge_never_writes_over_its_base_gguf(tiny, tmp_path, capsys, monkeypatch):
    """The user's own spellings, the output through a symlinked directory (as /tmp is on macOS): the same file under
    two names is still the same file."""
    from harness.merge import export_gguf

    base, adapter = tiny
    (tmp_path / "real" / "gg").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    base_gguf = tmp_path / "real" / "gg" / "smol.gguf"
    export_gguf(base, base_gguf)
    digest = hashlib.sha256(base_gguf.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path / "real")
    code = main(["merge", "--base", "gg/smol.gguf", "--adapter", str(adapter), "--out", str(tmp_path / "link/gg/smol")])
    assert code == 2 and "refusing to write an output over an input" in capsys.readouterr().err
    assert hashlib.sha256(base_gguf.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "real" / "gg" / "smol").exists()


def test_remap_to_peft_refuses_a_user_directory(tiny, tmp_path, capsys):
    base, adapter = tiny
    apr = tmp_path / "a.safetensors"
    assert main(["remap", str(adapter), "--out", str(apr), "--base", str(base)]) == 0
    out = user_dir(tmp_path / "out")
    before = tree_digest(out)
    assert main(["remap", str(apr), "--to", "peft", "--base", str(base), "--out", str(out)]) == 2
    assert tree_digest(out) == before
    assert main(["remap", str(apr), "--to", "peft", "--base", str(base), "--out", str(out), "--force"]) == 0
    after = tree_digest(out)
    assert {k: after[k] for k in before} == before and "adapter_model.safetensors" in after
    capsys.readouterr()
    assert main(["remap", str(adapter), "--out", str(tmp_path), "--base", str(base)]) == 2
    assert "is a directory; this option takes a file path" in capsys.readouterr().err


def test_eval_refuses_a_directory_out_before_evaluating(tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "task": "Fix src/lib.rs"}\n')
    (tmp_path / "out").mkdir()
    _no_work(monkeypatch, "harness.evaluate", "load_for_eval")
    assert main(["eval", "--model", "smollm2-135m", "--prompts", str(prompts), "--out", str(tmp_path / "out")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["eval", "--model", "smollm2-135m", "--prompts", str(prompts), "--out", str(prompts)]) == 2
    assert "over an input" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the mechanism

def test_output_directory_states_and_stale_files(tmp_path):
    names = ("a_*.jsonl", "stats.json")
    out = tmp_path / "out"
    assert dir_state(out, "export", names) == "absent"
    claim_dir(out, "export", names)
    assert dir_state(out, "export", names) == "ours" and (out / MANIFEST).is_file()
    (out / "a_x.jsonl").write_text("1")
    (out / "a_y.jsonl").write_text("2")
    (out / ".a_x.jsonl.k3j_9xq2.tmp").write_text("left by a killed run")  # atomic_path's shape
    assert dir_state(out, "export", names) == "ours"
    assert dir_state(out, "train", names) == "foreign", "another command's directory is not ours"
    claim_dir(out, "export", names)
    assert not (out / ".a_x.jsonl.k3j_9xq2.tmp").exists(), "an interrupted run's temporary file survived the next run"
    # under --force in a user's directory: our temporaries go, a user's file of a similar name stays
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("user")
    (mixed / ".a_x.jsonl.backup.tmp").write_text("user")
    (mixed / ".stats.json.ab12cd34.tmp").write_text("left by a killed run")
    claim_dir(mixed, "export", names, force=True)
    assert sorted(p.name for p in mixed.iterdir()) == [".a_x.jsonl.backup.tmp", "notes.txt"]
    assert remove_stale(out, "export", names, keep={"a_x.jsonl", "a_y.jsonl"}) == [], "nothing was recorded yet"
    (out / "a_mine.jsonl").write_text("user")  # the user's file, named like ours, in our directory
    claim_dir(out, "export", names)  # the next run keeps what the last one recorded writing
    assert remove_stale(out, "export", names, keep={"a_x.jsonl"}) == ["a_y.jsonl"]
    assert (out / "a_mine.jsonl").read_text() == "user", "a file no run of ours recorded writing was removed"
    (out / "a_mine.jsonl").unlink()
    (out / "mine.txt").write_text("user")
    assert dir_state(out, "export", names) == "foreign"
    assert remove_stale(out, "export", names, keep=set()) == [], "stale removal touched a directory with user files"
    assert (out / "a_x.jsonl").exists() and (out / "mine.txt").exists()
    with pytest.raises(FlipError, match="--out .* is a file"):
        check_out_dir(out / "mine.txt", "export", names)
    # a whole directory is removed only when it is ours: never a user's, nor an empty one nobody can prove is ours
    assert remove_ours(out, "export", names) is False and (out / "mine.txt").exists()
    (tmp_path / "empty").mkdir()
    assert remove_ours(tmp_path / "empty", "export", names) is False and (tmp_path / "empty").is_dir()
    (out / "mine.txt").unlink()
    assert remove_ours(out, "export", names) is True and not out.exists()
    # an entry that is a link to the user's files is unlinked, never followed
    users = tmp_path / "users"
    users.mkdir()
    (users / "keep.txt").write_text("user")
    (tmp_path / "link").symlink_to(users, target_is_directory=True)
    remove_entry(tmp_path / "link")
    assert not (tmp_path / "link").is_symlink() and (users / "keep.txt").read_text() == "user"


def test_a_failed_replacement_keeps_the_old_directory(tmp_path):
    out = tmp_path / "out"
    with replaced_dir(out, "merge", ()) as tmp:
        (tmp / "model.bin").write_text("v1")
    with pytest.raises(RuntimeError):
        with replaced_dir(out, "merge", ()) as tmp:
            (tmp / "model.bin").write_text("v2")
            raise RuntimeError("disk full")
    assert (out / "model.bin").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sigterm_during_export_leaves_no_temporary_file(tmp_path):
    """A killed export (SIGTERM, as a batch scheduler sends) removes its temporary files like Ctrl-C does."""
    from falsifiers.test_bench_export import make_corpus

    corpus = tmp_path / "in"
    make_corpus(corpus, 8 * 2**20, seed=2)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "export", str(corpus), "--out", str(out), "--quiet"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") for p in out.glob(".*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_umask_permissions_whatever_their_kind(tmp_path, umask):
    """A file written atomically and a directory swapped in get what a plain open() / mkdir() would give under the
    umask (mkstemp alone makes 0600 files and 0700 directories)."""
    import os

    from harness.atomic import write_bytes

    old = os.umask(umask)
    try:
        write_bytes(tmp_path / "out.json", b"{}\n")
        with replaced_dir(tmp_path / "outdir", "test", ("a.txt",)) as tmp:
            (tmp / "a.txt").write_text("a")
        (tmp_path / "plain.txt").write_text("x")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "out.json") == mode(tmp_path / "plain.txt") == 0o666 & ~umask
    assert mode(tmp_path / "outdir") == mode(tmp_path / "plain") == 0o777 & ~umask


def test_agent_keep_never_deletes_a_users_task_folder_even_with_force(tmp_path):
    """Keeping a workspace replaces KEEP/<id>; in a --keep directory the tool did not write (allowed by --force) a
    folder of that name is the user's, so the run is refused before any work, and the folder is untouched."""
    from harness.contracts import FIXTURES

    import shutil

    held_out = FIXTURES / "holdout" / "workspaces"
    task_id = sorted(p.name for p in held_out.iterdir() if (p / "task.json").is_file())[0]
    tasks = tmp_path / "tasks"  # one task: were the run let through, it would be seconds, not minutes
    shutil.copytree(held_out / task_id, tasks / task_id)
    keep = user_dir(tmp_path / "keep")
    (keep / task_id).mkdir()
    (keep / task_id / "notes.txt").write_text("mine")
    before = tree_digest(keep)
    code = main(["agent", "--model", "smollm2-135m", "--tasks", str(tasks), "--out", str(tmp_path / "t.jsonl"),
                 "--keep", str(keep), "--force", "--quiet"])
    assert code == 2
    assert tree_digest(keep) == before
    assert not (tmp_path / "t.jsonl").exists()
