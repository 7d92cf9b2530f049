"""`flip`: one subcommand per pipeline stage.

Each stage module provides `add_arguments(parser)` and `main(args) -> int`. A stage is imported only when it runs,
so `flip --help` and `flip export` never import torch.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from harness import FlipError, __version__

COMMANDS = {
    "export": ("harness.export", "Claude Code transcripts -> apr-code <tool_call> SFT datasets"),
    "train": ("harness.train", "LoRA SFT of a student model on an exported dataset"),
    "remap": ("harness.remap", "rename a peft adapter to apr / llama.cpp GGUF names (and back)"),
    "merge": ("harness.merge", "fold an adapter into its base; write a merged HF dir and merged.gguf"),
    "eval": ("harness.evaluate", "greedy tool-call evaluation of a model on held-out tasks"),
    "agent": ("harness.agent", "run a model as an apr-code agent on task workspaces in a sandbox; count solved tasks"),
    "run": ("harness.run", "the whole pipeline and the flip report (what `make flip` runs)"),
    "tune": ("harness.tune", "choose the training recipe on a validation split of the training tasks"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flip",
        description="apr-flip: distil Claude Code transcripts into a tool-calling student, and measure the flip.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\n`flip COMMAND --help` shows a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"apr-flip {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv)  # prints help / version / a usage error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"flip {name}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    signal.signal(signal.SIGTERM, _interrupt)  # temporary files are removed on SIGTERM as on Ctrl-C
    try:
        return int(module.main(args) or 0)
    except FlipError as err:
        print(f"flip {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flip {name}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
