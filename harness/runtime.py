"""The apr-code tool runtime the agent executes calls with, giving each tool the semantics (and the result texts) that
the exporter renders from Claude Code's own results, so the student sees at evaluation what it saw in training.

    file_read  `N<TAB>line` per line (a file ending in a newline shows one more, empty, line); offset (first line, 1-based)
               and limit (lines; default 2000); a missing file, a directory or an empty file gets Claude Code's text;
               a file over READ_MAX_BYTES is refused before it is read, as apr-code refuses it
    file_write the new file's text, parents created; `File created successfully at: P ...` or, over an existing file,
               `The file P has been updated successfully. ...`
    file_edit  `old` must occur exactly once; otherwise Claude Code's `String to replace not found in file.` /
               `Found N matches of the string to replace, ...` texts, wrapped in <tool_use_error>
    shell      stdout and stderr merged in order; a non-zero exit is `Exit code N` on its own line, then the output
    grep       Claude Code's default output mode: `Found N file(s)` and the paths, or `No files found` (a Python regex;
               build outputs and hidden directories skipped)
    glob       matching files (sorted), or `No files found`
    memory     remember / recall, per task; pmat_query and rag are not available here (an error result)

Results name files by their absolute sandbox paths, exactly as Claude Code names recording paths; the agent then runs
them through the exporter's Scrubber (paths made relative, secrets redacted, long results cut head + tail).
Every path goes through Sandbox.resolve: a call naming a path outside the workspace raises sandbox.Refused.
"""
from __future__ import annotations

import fnmatch
import glob as glob_module
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import apr_runtime as apr
from harness.sandbox import SKIP_DIRS, Refused, Sandbox

READ_LIMIT = 2000  # Claude Code's Read: lines shown by default
READ_LINE_CHARS = 2000  # and characters per line
# The apr-code runtime refuses to read a file over 128 KB, whatever offset and limit ask for (paiml/batuta
# src/agent/tool/file.rs, MAX_READ_BYTES = 128 * 1024, with this error text); here it also keeps a huge workspace file
# out of flip's own memory, since file_read runs in flip's process, not in the sandbox.
READ_MAX_BYTES = 128 * 1024
TOO_LARGE = "file too large ({size} bytes, max {cap}). Use offset/limit to read a portion."
STATE_NOTE = "(file state is current in your context — no need to Read it back)"
EDIT_OK = "The file {path} has been updated successfully. " + STATE_NOTE
WRITE_OK = "File created successfully at: {path} " + STATE_NOTE
EMPTY_FILE = "<system-reminder>Warning: the file exists but the contents are empty.</system-reminder>"


def tool_error(text: str) -> str:
    """Claude Code's wrapper for a call refused before it ran."""
    return f"<tool_use_error>{text}</tool_use_error>"


@dataclass
class Result:
    text: str
    is_error: bool = False
    refused: bool = False  # the call named a path outside the workspace and did not run


@dataclass
class Runtime:
    sandbox: Sandbox
    memory: dict = field(default_factory=dict)

    def execute(self, tool: str, tool_input: dict) -> Result:
        """Run one schema-valid apr-code call. Refusals become error results (refused=True), never exceptions."""
        handler = getattr(self, f"_{tool}", None)
        if handler is None:
            return Result(tool_error(f"No such tool available: {tool}"), True)
        try:
            return handler(**tool_input)
        except Refused as refusal:
            return Result(tool_error(f"Refused: {refusal}. Paths must stay inside the project directory."), True, True)
        except (OSError, ValueError) as err:  # a pattern pathlib rejects, a path that is a FIFO...: the call's fault
            return Result(tool_error(f"{type(err).__name__}: {err}"), True)

    # ----------------------------------------------------------------------------------------------------- files

    def _missing(self) -> Result:
        return Result(tool_error(f"File does not exist. Note: your current working directory is {self.sandbox.root}."),
                      True)

    def _file_read(self, path: str, offset: int = 0, limit: int = READ_LIMIT) -> Result:
        target = self.sandbox.resolve(path)
        if target.is_dir():
            return Result(f"EISDIR: illegal operation on a directory, read '{target}'", True)
        if not target.is_file():
            return self._missing()
        with target.open("rb") as handle:  # never more than the cap in memory, even if the file grows meanwhile
            data = handle.read(READ_MAX_BYTES + 1)
        if len(data) > READ_MAX_BYTES:
            size = max(target.stat().st_size, len(data))
            return Result(tool_error(TOO_LARGE.format(size=size, cap=READ_MAX_BYTES)), True)
        text = data.decode("utf-8", "replace")
        if not text:
            return Result(EMPTY_FILE)
        lines = text.split("\n")
        first = max(offset, 1)
        shown = lines[first - 1:first - 1 + limit]
        return Result("\n".join(f"{number}\t{line[:READ_LINE_CHARS]}" for number, line in enumerate(shown, first)))

    def _file_write(self, path: str, content: str) -> Result:
        target = self.sandbox.resolve(path)
        if target.is_dir():
            return Result(f"EISDIR: illegal operation on a directory, open '{target}'", True)
        existed = target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_within(self.sandbox, target, content)
        return Result((EDIT_OK if existed else WRITE_OK).format(path=target))

    def _file_edit(self, path: str, old: str, new: str) -> Result:
        target = self.sandbox.resolve(path)
        if not target.is_file():
            return self._missing()
        text = target.read_bytes().decode("utf-8", "replace")
        if old == new:
            return Result(tool_error("No changes to make: old_string and new_string are exactly the same."), True)
        count = text.count(old)
        if count == 0:
            return Result(tool_error(f"String to replace not found in file.\nString: {old}"), True)
        if count > 1:
            return Result(tool_error(
                f"Found {count} matches of the string to replace, but replace_all is false. To replace all "
                "occurrences, set replace_all to true. To replace only one occurrence, please provide more context "
                f"to uniquely identify the instance.\nString: {old}"), True)
        _write_within(self.sandbox, target, text.replace(old, new, 1))
        return Result(EDIT_OK.format(path=target))

    # ----------------------------------------------------------------------------------------------------- shell

    def _shell(self, command: str) -> Result:
        result = self.sandbox.shell(command)
        output = result.output.rstrip("\n")
        if result.over_limit:
            return Result(f"{output}\n[the command used {result.over_limit}; it was stopped]".lstrip("\n"), True)
        if result.timed_out:
            limit = self.sandbox.limits.timeout_s
            return Result(f"Command timed out after {limit:g}s\n{output}".rstrip("\n"), True)
        if result.truncated:
            cap = self.sandbox.limits.output_bytes
            return Result(f"{output}\n[output exceeded {cap} bytes; the command was stopped]", True)
        if result.exit_code != 0:
            return Result(f"Exit code {result.exit_code}\n{output}", True)
        return Result(output)

    # --------------------------------------------------------------------------------------------------- search

    def _files_under(self, path: str | None) -> list[Path]:
        start = self.sandbox.resolve(path) if path is not None else self.sandbox.real_root
        if start.is_file():
            return [start]
        found = []
        for directory, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            found += [Path(directory) / name for name in sorted(filenames)]
        return found

    def _grep(self, pattern: str, path: str | None = None, glob: str | None = None,
              case_insensitive: bool = False) -> Result:
        try:
            regex = re.compile(pattern, re.IGNORECASE if case_insensitive else 0)
        except re.error as err:
            return Result(tool_error(f"Invalid regular expression {pattern!r}: {err}"), True)
        files = [p for p in self._files_under(path) if glob is None or fnmatch.fnmatch(p.name, glob)]
        hits = [str(p) for p in files if regex.search(p.read_bytes().decode("utf-8", "replace"))]
        if not hits:
            return Result("No files found")
        return Result(f"Found {len(hits)} {'file' if len(hits) == 1 else 'files'}\n" + "\n".join(hits))

    def _glob(self, pattern: str, path: str | None = None) -> Result:
        if pattern.startswith(("/", "~")) or ".." in re.split(r"[/\\]", pattern):
            raise Refused(f"the pattern {pattern} reaches outside the project directory")
        start = self.sandbox.resolve(path) if path is not None else self.sandbox.real_root
        root = self.sandbox.real_root
        hits = []
        for match in sorted(start.glob(pattern)):
            real = Path(os.path.realpath(match))
            inside = real == root or root in real.parents
            if inside and match.is_file() and not SKIP_DIRS.intersection(match.relative_to(start).parts):
                hits.append(str(match))
        return Result("\n".join(hits) if hits else "No files found")

    # --------------------------------------------------------------------------------------------------- others

    def _memory(self, action: str, key: str | None = None, value: str | None = None) -> Result:
        if action == "remember":
            self.memory[key or ""] = value or ""
            return Result(f"Remembered {key}.")
        return Result(self.memory.get(key or "", f"Nothing remembered under {key}."))

    def _pmat_query(self, query: str, limit: int | None = None) -> Result:
        return Result(tool_error("pmat_query is not available in this sandbox"), True)

    def _rag(self, query: str) -> Result:
        return Result(tool_error("rag is not available in this sandbox"), True)


def _write_within(sandbox: Sandbox, target: Path, text: str) -> None:
    """Write a file the model chose, capped by the sandbox's file-size limit."""
    data = text.encode("utf-8", "replace")  # a lone surrogate from JSON input becomes "?", never invalid UTF-8
    if len(data) > sandbox.limits.file_bytes:
        raise Refused(f"{len(data)} bytes is more than the {sandbox.limits.file_bytes}-byte file limit")
    target.write_bytes(data)


# ------------------------------------------------------------------------------------------- apr-code's own runtime

class AprRuntime(Runtime):
    """apr-code's own tool runtime (contracts/apr_runtime.yaml, read from paiml/batuta): its field names
    (file_edit old_string/new_string, memory action/content), its checks (`missing required field 'X'`, the shell's
    command rule), its limits (file_read 2,000 lines and 128 KB, shell 30 s and 8,192 bytes) and its result texts
    (`Wrote N bytes to P`, `exit code N:`, substring grep as `path:line:content`, glob newest first). `flip agent
    --runtime apr`: a student trained in either dialect is measured against what apr-code would answer.

    Where the sandbox cannot reproduce it exactly: the shell's stdout and stderr arrive merged (apr-code puts stderr
    after `stderr:` on success); grep walks in sorted order (walkdir's is the file system's); memory recall matches
    substrings (apr-code's InMemorySubstrate ranks them); pmat_query and rag are not available (the error apr-code gives
    without pmat on PATH, and for a tool it has not registered)."""

    def execute(self, tool: str, tool_input: dict) -> Result:
        if tool not in apr.runtime_schemas():
            return Result(f"unknown tool: {tool}", True)
        if tool not in ("memory", "pmat_query"):  # those two read a missing field as "" (their own errors follow)
            for name in apr.runtime_schemas()[tool]["required"]:
                if not isinstance(tool_input.get(name), str):
                    return Result(apr.text(tool, "missing_field").format(field=name), True)
        handler = getattr(self, f"_apr_{tool}")
        try:
            return handler(tool_input)
        except Refused as refusal:
            return Result(f"path '{tool_input.get('path', '')}' outside allowed prefixes: {refusal}", True, True)
        except (OSError, ValueError) as err:
            return Result(f"{type(err).__name__}: {err}", True)

    def _apr_file_read(self, tool_input: dict) -> Result:
        path = tool_input["path"]
        target = self.sandbox.resolve(path)
        if not target.exists():
            return Result(apr.text("file_read", "cannot_resolve").format(
                path=path, error="No such file or directory (os error 2)"), True)
        size, most = target.stat().st_size, apr.limit("file_read", "max_bytes")
        if size > most:
            return Result(apr.text("file_read", "too_large").format(size=size, max=most), True)
        try:
            content = target.read_bytes().decode("utf-8")
        except IsADirectoryError:
            return Result(apr.text("file_read", "cannot_read").format(path=target,
                                                                      error="Is a directory (os error 21)"), True)
        except UnicodeDecodeError:
            return Result(apr.text("file_read", "cannot_read").format(
                path=target, error="stream did not contain valid UTF-8"), True)
        offset = _integer(tool_input.get("offset"), 1)
        limit = min(_integer(tool_input.get("limit"), apr.limit("file_read", "max_lines")),
                    apr.limit("file_read", "max_lines"))
        lines = _rust_lines(content)
        start = min(max(offset, apr.limit("file_read", "offset_min")) - 1, len(lines))
        end = min(start + limit, len(lines))
        text = "".join(apr.text("file_read", "line").format(number=n, line=line)
                       for n, line in enumerate(lines[start:end], start + 1))
        if end < len(lines):
            text += apr.text("file_read", "more_lines").format(remaining=len(lines) - end, next=end + 1)
        return Result(text)

    def _apr_file_write(self, tool_input: dict) -> Result:
        target = self.sandbox.resolve(tool_input["path"])
        content = tool_input["content"]
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_within(self.sandbox, target, content)
        return Result(apr.text("file_write", "ok").format(bytes=len(content.encode("utf-8", "replace")), path=target))

    def _apr_file_edit(self, tool_input: dict) -> Result:
        old, new = tool_input["old_string"], tool_input["new_string"]
        if old == new:
            return Result(apr.text("file_edit", "identical"), True)
        path = tool_input["path"]
        target = self.sandbox.resolve(path)
        if not target.exists():
            return Result(apr.text("file_read", "cannot_resolve").format(
                path=path, error="No such file or directory (os error 2)"), True)
        text = target.read_bytes().decode("utf-8", "replace")
        count = text.count(old)
        if count == 0:
            return Result(apr.text("file_edit", "not_found").format(path=target), True)
        if count > 1:
            return Result(apr.text("file_edit", "found_many").format(count=count, path=target), True)
        _write_within(self.sandbox, target, text.replace(old, new, 1))
        return Result(apr.text("file_edit", "ok").format(path=target, old_bytes=len(old.encode("utf-8")),
                                                         new_bytes=len(new.encode("utf-8"))))

    def _apr_shell(self, tool_input: dict) -> Result:
        command = tool_input["command"]
        if apr.command_refusal(command) is not None:
            return Result(apr.text("shell", "refused"), True)
        result = self.sandbox.shell(command, timeout_s=apr.limit("shell", "timeout_s"))
        if result.timed_out:
            contract = apr.apr_runtime()
            return Result(contract["timeout_error"].format(name="shell", elapsed=contract["timeout_elapsed"]), True)
        output = _truncated(result.output, apr.limit("shell", "output_bytes"), apr.text("shell", "truncated"))
        if result.exit_code != 0:
            return Result(apr.text("shell", "failure").format(code=result.exit_code, output=output), True)
        return Result(output)

    def _apr_grep(self, tool_input: dict) -> Result:
        pattern, given = tool_input["pattern"], tool_input.get("path") or "."
        folded = bool(tool_input.get("case_insensitive"))
        needle = pattern.lower() if folded else pattern
        root = self.sandbox.resolve(given)
        if not root.exists():
            return Result(apr.text("grep", "path_missing").format(path=given), True)
        most, file_glob = apr.limit("grep", "max_matches"), tool_input.get("glob")
        files = [(root, given)] if root.is_file() else [
            (path, os.path.join(given, os.path.relpath(path, root))) for path in _walk(root, apr.limit("grep", "max_depth"))
            if file_glob is None or fnmatch.fnmatchcase(path.name, file_glob)]
        lines: list[str] = []
        for path, shown in files:
            if len(lines) >= most or (path != root and _binary(path)):
                continue
            try:
                content = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for number, line in enumerate(_rust_lines(content), 1):
                if len(lines) >= most:
                    break
                if needle in (line.lower() if folded else line):
                    lines.append(apr.text("grep", "match").format(path=shown, line=number, content=line))
        if not lines:
            return Result(apr.text("grep", "none"))
        output = "".join(lines)
        if len(output.encode("utf-8")) > apr.limit("grep", "max_bytes"):
            output = output.encode("utf-8")[:apr.limit("grep", "max_bytes")].decode("utf-8", "ignore")
            output += apr.text("grep", "truncated_bytes")
        if len(lines) >= most:
            output += apr.text("grep", "truncated_matches").format(max=most)
        return Result(output)

    def _apr_glob(self, tool_input: dict) -> Result:
        pattern, base = tool_input["pattern"], tool_input.get("path") or "."
        if pattern.startswith(("/", "~")) or ".." in re.split(r"[/\\]", pattern):
            raise Refused(f"the pattern {pattern} reaches outside the project directory")
        self.sandbox.resolve(base)
        full = f"{base.rstrip('/')}/{pattern}"
        root = self.sandbox.real_root
        most = apr.limit("glob", "max_results")
        found = []
        for shown in sorted(glob_module.glob(full, root_dir=root, recursive=True, include_hidden=True)):
            real = Path(os.path.realpath(root / shown))
            if (real == root or root in real.parents) and real.is_file():
                found.append((shown, real.stat().st_mtime_ns))
        found.sort(key=lambda item: -item[1])  # newest first; equal times keep the glob's (sorted) order
        found = found[:most]
        if not found:
            return Result(apr.text("glob", "none").format(pattern=full))
        suffix = apr.text("glob", "truncated").format(max=most) if len(found) == most else ""
        return Result("\n".join(shown for shown, _ in found) + suffix)

    def _apr_memory(self, tool_input: dict) -> Result:
        action, content = tool_input.get("action", ""), tool_input.get("content", "")
        store = self.memory.setdefault("apr", [])
        if action == "remember":
            store.append(content)
            return Result(apr.text("memory", "stored").format(id=f"mem-{len(store)}"))
        if action == "recall":
            hits = [m for m in store if content.lower() in m.lower()][:_integer(tool_input.get("limit"), 5)]
            if not hits:
                return Result(apr.text("memory", "none"))
            return Result("\n".join(apr.text("memory", "recalled").format(rank=i, score="1.00", content=m)
                                    for i, m in enumerate(hits, 1)))
        return Result(apr.text("memory", "unknown_action").format(action=action), True)

    def _apr_pmat_query(self, tool_input: dict) -> Result:
        return Result(apr.text("pmat_query", "not_installed").format(
            error="No such file or directory (os error 2)"), True)

    def _apr_rag(self, tool_input: dict) -> Result:
        return Result("unknown tool: rag", True)  # `apr code` registers rag only when built with the rag feature


def _integer(value, default: int) -> int:
    """serde_json's as_u64: a non-negative integer, anything else is the default."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _rust_lines(text: str) -> list[str]:
    """Rust's str::lines: split at \\n, drop one \\r before it, no empty last line after a final newline."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _truncated(output: str, most: int, template: str) -> str:
    data = output.encode("utf-8", "replace")
    if len(data) <= most:
        return output
    return template.format(head=data[:most].decode("utf-8", "ignore"), max=most)


def _binary(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return b"\0" in handle.read(512)
    except OSError:
        return True


def _walk(root: Path, max_depth: int) -> list[Path]:
    """Every file under root to max_depth levels, links not followed (walkdir's defaults in apr-code's grep)."""
    found = []
    base = len(root.parts)
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if len(Path(directory).parts) - base >= max_depth:
            dirnames[:] = []
        found += [Path(directory) / name for name in sorted(filenames)
                  if not (Path(directory) / name).is_symlink()]
    return found
