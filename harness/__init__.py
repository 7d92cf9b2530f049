"""apr-flip: turn Claude Code transcripts into a tool-calling student model, and prove it.

One module per pipeline stage, in data-flow order:
  transcripts (read) -> export (remap + samples) -> train -> remap (adapter names) -> merge -> evaluate -> run (the flip)
Shared pieces: contracts (the data in contracts/), toolcall (the apr-code <tool_call> format), models (model references).
"""
__version__ = "0.1.0"


class FlipError(Exception):
    """A user-facing error: bad path, missing model, unusable input. `flip` prints it and exits 2, no traceback."""
