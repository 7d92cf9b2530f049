"""Outputs: atomic files, and output directories that never lose what the tool did not write.

Files are written to a temporary name beside the target and renamed over it, so a crash or a full disk never leaves a
half-written dataset, adapter or report behind, and a temporary file is removed on any exception (SIGTERM included:
`flip` turns it into one).

An output directory is *claimed* before any long work: it must be absent, empty, or this command's own earlier output
(a manifest, MANIFEST, names the command, and every entry is a name that command writes). Anything else is refused
with exit 2 unless `--force` is given, and even then nothing already there is deleted: the new files are written
beside the old ones. Only entries the manifest proves to be ours are ever replaced or removed: the manifest records
each file's sha256 as written, so a file edited since then is the user's, and a file of one of
our names that no run recorded writing is refused before any work, --force or not.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from harness import FlipError

MANIFEST = ".apr-flip-outputs.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path in the target's directory; on success it replaces the target."""
    target = Path(target)
    refuse_special(target, "output")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the permissions a plain open() would give
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------------------------------
# Output directories
# ---------------------------------------------------------------------------------------------------------------------

# What tempfile names the temporaries of atomic_path / replaced_dir: `.NAME.` + 8 random characters + our suffix
# (`.gguf`, `.safetensors`, `.png`, `.old`) + `.tmp`. A user's `.NAME.backup.tmp` does not have that shape.
_OUR_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?:\.[a-z]+)?\.tmp")


def _is_our_temp(name: str, names) -> bool:
    """A temporary file or directory that atomic_path / replaced_dir left for one of our names."""
    match = _OUR_TEMP.fullmatch(name)
    return match is not None and any(fnmatch.fnmatchcase(match["name"], pattern) for pattern in names)


def _ours(name: str, names) -> bool:
    return name == MANIFEST or any(fnmatch.fnmatchcase(name, p) for p in names) or _is_our_temp(name, names)


def _stamp(path: Path) -> dict:
    """What a file held when we wrote it (its sha256: the same output gives the same manifest bytes, which an mtime
    would not); a directory is recorded by name (the command that owns it judges its contents)."""
    if not stat.S_ISREG(path.lstat().st_mode):
        return {}
    with open(path, "rb") as handle:
        return {"sha256": hashlib.file_digest(handle, "sha256").hexdigest()}


def _recorded(manifest: dict) -> dict:
    """{name: stamp} of a manifest's entries; an older manifest's list of names carries no stamps."""
    entries = manifest.get("entries") or {}
    return dict(entries) if isinstance(entries, dict) else {name: {} for name in entries if isinstance(name, str)}


def _edited(path: Path, stamp) -> bool:
    """A recorded file that no longer looks as we wrote it."""
    if not isinstance(stamp, dict) or "sha256" not in stamp or not os.path.lexists(path):
        return False
    return _stamp(path) != stamp


def not_ours(path: Path, command: str, names) -> list[str]:
    """Entries of `path` named like this command's outputs that it may not replace: edited since a run recorded
    writing them, or (in a directory that is not this command's) recorded by no run of it."""
    if not path.is_dir():
        return []
    manifest = _manifest(path)
    recorded = _recorded(manifest) if manifest.get("command") == command else {}
    foreign = dir_state(path, command, names) == "foreign"
    clashes = []
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name == MANIFEST or _is_our_temp(name, names) or not any(fnmatch.fnmatchcase(name, p) for p in names):
            continue
        if name in recorded and _edited(entry, recorded[name]):
            clashes.append(f"{name} (changed since flip {command} wrote it)")
        elif name not in recorded and foreign:
            clashes.append(f"{name} (not written by flip {command})")
    return clashes


def _manifest(path: Path) -> dict:
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def dir_state(path: Path, command: str, names) -> str:
    """"absent", "empty", "ours" (this command's manifest, and only names it writes or recorded) or "foreign"."""
    if not path.exists():
        return "absent"
    entries = [p.name for p in path.iterdir()]
    if not entries:
        return "empty"
    manifest = _manifest(path)
    known = tuple(names) + tuple(_recorded(manifest))
    if manifest.get("command") == command and all(_ours(name, known) for name in entries):
        return "ours"
    return "foreign"


def _writable_parent(path: Path, option: str) -> None:
    """The nearest existing ancestor must be a directory we can create entries in."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FlipError(f"{option} {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FlipError(f"{option} {path}: cannot create entries in {ancestor} (permission denied)")


def check_out_dir(path: str | os.PathLike, command: str, names, force: bool = False, option: str = "--out",
                  inputs=()) -> Path:
    """Validate an output directory before any work: (absolute path). Refuses what check_output refuses (even with
    force), a file, an unwritable place, and a non-empty directory that is not this command's own earlier output
    (unless force)."""
    check_output(path, option, inputs)
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise FlipError(f"{option} {path} is a file; this option takes a directory")
    if path.exists():
        if not os.access(path, os.W_OK | os.X_OK):
            raise FlipError(f"{option} {path}: not writable")
    else:
        _writable_parent(path, option)
    if dir_state(path, command, names) == "foreign" and not force:
        sample = sorted(p.name for p in path.iterdir() if p.name != MANIFEST)[:3]
        raise FlipError(
            f"{option} {path} is not empty and was not written by `flip {command}` (it holds {', '.join(sample)}"
            f"{' ...' if len(sample) == 3 else ''}); choose an empty or new directory, or pass --force to write "
            "beside what is there (nothing in it is deleted)")
    clashes = not_ours(path, command, names)
    if clashes:
        raise FlipError(f"{option} {path} holds {', '.join(clashes[:3])}{' ...' if len(clashes) > 3 else ''}, which "
                        f"flip {command} would replace; it never replaces a file it did not write, --force or not: "
                        "move it away or choose another directory")
    return path


def _write_manifest(path: Path, command: str, entries: dict | None = None) -> None:
    """Record `entries` ({name: stamp}) as what this command wrote in `path`."""
    manifest = {"command": command, "tool": "apr-flip"}
    if entries:
        manifest["entries"] = dict(sorted(entries.items()))
    write_text(path / MANIFEST, json.dumps(manifest, sort_keys=True) + "\n")


def claim_dir(path: str | os.PathLike, command: str, names, force: bool = False, option: str = "--out",
              inputs=()) -> Path:
    """check_out_dir, then create the directory, mark it as this command's, and remove temporary files an earlier,
    interrupted run of ours left there. Returns the absolute path."""
    path = check_out_dir(path, command, names, force, option, inputs)
    state = dir_state(path, command, names)
    path.mkdir(parents=True, exist_ok=True)
    if state in ("absent", "empty", "ours"):
        _write_manifest(path, command, _recorded(_manifest(path)))  # what earlier runs recorded writing
    for entry in path.iterdir():
        if _is_our_temp(entry.name, names):
            remove_entry(entry)
    return path


def record_outputs(path: Path, command: str, names) -> None:
    """Record the entries `names` of a directory this command claimed as written, as they are now (a resumed run
    trusts what is recorded and unedited: recorded_outputs)."""
    entries = _recorded(_manifest(path))
    entries.update({name: _stamp(path / name) for name in names if os.path.lexists(path / name)})
    _write_manifest(path, command, entries)


def forget_outputs(path: Path, command: str, names) -> None:
    """Stop recording `names` (about to be rewritten): a half-written output is never taken for a finished one."""
    entries = {name: stamp for name, stamp in _recorded(_manifest(path)).items() if name not in names}
    _write_manifest(path, command, entries)


def recorded_outputs(path: Path, command: str, names) -> bool:
    """Every one of `names` is recorded in this command's manifest of `path`, still there and not edited since."""
    manifest = _manifest(path)
    recorded = _recorded(manifest) if manifest.get("command") == command else {}
    return all(name in recorded and os.path.lexists(path / name) and not _edited(path / name, recorded[name])
               for name in names)


def remove_stale(path: Path, command: str, names, keep) -> list[str]:
    """In a directory that is ours, remove the entries an earlier run recorded writing that this run did not write
    (e.g. another mode's dataset), then record this run's entries (`keep`). A file that merely matches our names was
    recorded by no run of ours: it is the user's and stays. A directory holding foreign files is left untouched."""
    if dir_state(path, command, names) != "ours":
        return []
    recorded = _recorded(_manifest(path))
    stale = sorted(name for name in set(recorded) - set(keep) if os.path.lexists(path / name))
    removed = [name for name in stale if not _edited(path / name, recorded[name])]  # an edited file is the user's
    for name in removed:
        remove_entry(path / name)
    _write_manifest(path, command, {name: _stamp(path / name) for name in keep if os.path.lexists(path / name)})
    return removed


def remove_ours(path: Path, command: str, names) -> bool:
    """Remove a whole directory only when it is this command's own output (its manifest, only its names); True when
    it was removed. An empty directory is not provably ours: it is left for the command to claim."""
    if dir_state(path, command, names) != "ours":
        return False
    shutil.rmtree(path)
    return True


def remove_entry(entry: Path) -> None:
    """An entry of a directory that is ours: a link is unlinked (never followed), a directory removed whole."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


@contextmanager
def replaced_dir(target: str | os.PathLike, command: str, names):
    """Yield a temporary directory beside the target; on success it becomes the target.

    A target that is absent, empty or ours is swapped in by two renames (the old one is renamed away, never deleted
    before the new one is in place, then removed). A target holding anything else (allowed by --force) keeps it: the
    new entries are moved in one by one, replacing only same-named ones."""
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _write_manifest(tmp, command, {p.name: _stamp(p) for p in tmp.iterdir()})
        state = dir_state(target, command, names)
        if state == "absent":
            os.replace(tmp, target)
        elif state in ("empty", "ours"):
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old.tmp", dir=target.parent))
            os.replace(target, old / "dir")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            _move_beside(tmp, target, command)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_beside(tmp: Path, target: Path, command: str) -> None:
    """--force into a directory holding what we did not write: move the new entries in one by one, replacing only
    those a run of this command recorded writing there, unchanged; record them in its manifest unless that is
    another command's. A command whose names are not known beforehand (merge, remap --to peft) finds out here."""
    manifest = _manifest(target)
    recorded = _recorded(manifest) if manifest.get("command") in (command, None) else {}
    entries = [e for e in sorted(tmp.iterdir()) if e.name != MANIFEST]
    clashes = [e.name for e in entries if os.path.lexists(target / e.name)
               and (e.name not in recorded or _edited(target / e.name, recorded[e.name]))]
    if clashes:
        raise FlipError(f"{target} already holds {', '.join(clashes[:3])}, which flip {command} did not write; "
                        "nothing was replaced: move them away or choose another directory")
    for entry in entries:
        if (target / entry.name).is_dir() and not (target / entry.name).is_symlink():
            raise FlipError(f"{target / entry.name} is a directory; not replacing it with a file")
        os.replace(entry, target / entry.name)
    if manifest.get("command") in (command, None):
        _write_manifest(target, command, {**recorded, **{e.name: _stamp(target / e.name) for e in entries}})
    shutil.rmtree(tmp)


def check_out_file(path: str | os.PathLike, option: str = "--out", inputs=()) -> Path:
    """Validate an output file before any work: what check_output refuses, not a directory, a writable place."""
    check_output(path, option, inputs)
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise FlipError(f"{option} {path} is a directory; this option takes a file path")
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise FlipError(f"{option} {path}: cannot replace a file in {path.parent} (permission denied)")
    if not path.exists():
        _writable_parent(path, option)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Outputs never replace inputs, nor anything that is not a regular file or a directory
# ---------------------------------------------------------------------------------------------------------------------

_SPECIAL_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                  (stat.S_ISSOCK, "a socket"))


def _special_kind(path: Path) -> str | None:
    """What `path` is when it exists but is neither a regular file nor a directory (links followed), else None."""
    if os.path.islink(path) and not path.exists():
        return f"a dangling symbolic link (to {os.readlink(path)})"
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return next((word for test, word in _SPECIAL_KINDS if test(mode)), None)


def refuse_special(path: str | os.PathLike, option: str) -> None:
    """An output path, or one of its parents, that is a device, FIFO, socket or dangling link is refused: renaming a
    file over a device node would replace the node itself (as root, `--out /dev/null` would replace /dev/null)."""
    path = Path(os.path.abspath(path))
    for place in (path, *path.parents):
        kind = _special_kind(place)
        if kind is not None:
            what = f"{option} {path}" + ("" if place == path else f": {place}")
            raise FlipError(f"{what} is {kind}; outputs are written only as regular files and directories")


def _identities(path: Path) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of a path and, for a directory, of everything under it: a hard link or a bind mount of an
    input is the same file under another name."""
    found = set()
    for place in [path] + ([p for p in path.rglob("*")] if path.is_dir() else []):
        try:
            info = place.stat()
        except OSError:
            continue
        found.add((info.st_dev, info.st_ino))
    return found


def refuse_over_inputs(path: str | os.PathLike, option: str, inputs=()) -> None:
    """An output (file or directory) is refused when it is an input, lies inside an input directory, holds an input,
    or is the same file as anything an input holds (compared by resolved path and by st_dev/st_ino)."""
    out = Path(os.path.abspath(path)).resolve()
    given = [Path(os.path.abspath(p)) for p in inputs if p is not None and str(p) and os.path.exists(p)]
    for source in given:
        resolved = source.resolve()
        if out == resolved or resolved in out.parents or out in resolved.parents:
            raise FlipError(f"{option} {path} overlaps the input {source}; refusing to write an output over an input "
                            "or inside one (choose a path outside every input)")
    if out.exists():
        identities = set().union(*(_identities(source) for source in given)) if given else set()
        mine = [out] + (list(out.iterdir()) if out.is_dir() else [])
        for place in mine:
            info = place.stat()
            if (info.st_dev, info.st_ino) in identities:
                raise FlipError(f"{option} {path}: {place} is the same file as an input (a hard link or a mount); "
                                "refusing to write an output over an input")


def check_output(path: str | os.PathLike, option: str, inputs=()) -> None:
    """The checks every output path gets before any work, with or without --force: a path that is given (not
    empty), no device / FIFO / socket / dangling link, and never over or inside an input."""
    if not str(path).strip():
        raise FlipError(f"{option} is empty; give a path")
    refuse_special(path, option)
    refuse_over_inputs(path, option, inputs)
