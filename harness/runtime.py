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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

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
