"""apr-flip: turn Claude Code transcripts into a tool-calling student model, and prove it.

One module per pipeline stage, in data-flow order:
  transcripts (read) -> export (remap + samples) -> train -> remap (adapter names) -> merge -> evaluate -> run (the flip)
Shared pieces: contracts (the data in contracts/), toolcall (the apr-code <tool_call> format), models (model references).
"""
import os

__version__ = "0.1.0"

# Offline by default: no model hub at run time. The hub libraries read these when they are imported, which is always
# after this package; a user who wants the hub sets them to 0 explicitly.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")


class FlipError(Exception):
    """A user-facing error: bad path, missing model, unusable input. `flip` prints it and exits 2, no traceback."""
