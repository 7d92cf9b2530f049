"""apr-flip: turn Claude Code transcripts into a tool-calling student model, and prove it.

One module per pipeline stage, in data-flow order:
  transcripts (read) -> export (remap + samples) -> train -> remap (adapter names) -> merge -> evaluate -> run (the flip)
Shared pieces: contracts (the data in contracts/), toolcall (the apr-code <tool_call> format), models (model references).
"""
import os

__version__ = "0.1.0"



def offline_by_default() -> None:
    """No model hub at run time. The hub libraries read these when they are imported, which is always after this
    package; a user who wants the hub sets them to 0 explicitly."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if not os.environ.get(name):
            os.environ[name] = "1"


offline_by_default()


def progress_bar(show: bool = True, **kwargs):
    """A tqdm bar on stderr, hidden when not `show` and under --quiet. The CLI's --quiet sets TQDM_DISABLE, which tqdm
    reads only when no disable= is passed, so it is read here too."""
    import sys

    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=not show or os.environ.get("TQDM_DISABLE") == "1", **kwargs)


class FlipError(Exception):
    """A user-facing error: bad path, missing model, unusable input. `flip` prints it and exits 2, no traceback."""
    exit_code = 2


class FlipFailure(FlipError):
    """A failure found while running on valid inputs (a merge that came out non-finite): one line, exit 1."""
    exit_code = 1


def read_jsonl(path, what: str = "file"):
    """Yield (line number, object) for each non-blank line of a JSONL file; any other line is a FlipError naming it.
    Lines end at "\n" only (a raw U+2028 inside a JSON string is content, not a line break, whatever splitlines says)."""
    import codecs
    from pathlib import Path
    import json

    path = Path(path)
    if not path.is_file():
        raise FlipError(f"{what} {path} not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # a UTF-8 byte-order mark is not part of the first record
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise FlipError(f"{path}:{number}: not UTF-8 text (is {path.name} a binary file?)") from None
            except (ValueError, RecursionError) as err:
                raise FlipError(f"{path}:{number}: not JSON ({type(err).__name__})") from None
            if not isinstance(obj, dict):
                raise FlipError(f"{path}:{number}: a JSON {type(obj).__name__}, not an object")
            yield number, obj
