"""`flip`: one subcommand per pipeline stage.

Each stage module provides `add_arguments(parser)` and `main(args) -> int`. A stage is imported only when it runs,
so `flip --help` and `flip export` never import torch. Every command also takes --quiet and --debug.

Exit codes: 0 done (an export wrote at least one sample; a run met its goal); 1 ran but produced nothing or missed
its goal, or failed on valid input (a non-finite merge); 2 a usage or input error, or an unexpected one, always as one line on stderr (the traceback only with
--debug); 130 interrupted (Ctrl-C or SIGTERM; temporary files removed).
"""
from __future__ import annotations

import argparse
import importlib
import os
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
    "curve": ("harness.curve", "the learning curve: students on N distinct generated tasks, as agents on validation"),
    "parity": ("harness.parity", "CCPA's action parity score of student traces against teacher traces"),
    "passk": ("harness.passk", "pass@k of sampled flip agent runs of one model on the same tasks, with intervals"),
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
    name = argv[0]
    args = None
    try:
        module, args = parse_command(argv)
        if args.quiet:
            quiet_libraries()
        signal.signal(signal.SIGTERM, _interrupt)  # temporary files are removed on SIGTERM as on Ctrl-C
        return int(module.main(args) or 0)
    except FlipError as err:
        print(f"flip {name}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"flip {name}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the user gets one line; --debug shows where
        if args is not None and args.debug:
            raise
        print(f"flip {name}: error: unexpected {type(err).__name__}: {_one_line(err)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 2


def parse_command(argv: list[str]):
    """(the command's module, its arguments). A command whose module has config_defaults takes --config FILE: the
    file's options become the parser's defaults and the command line is parsed again, so options given explicitly
    override the file's (argparse applies a default only to an option not given). One whose module has
    recipe_defaults takes --recipe NAME the same way."""
    name, rest = argv[0], argv[1:]
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"flip {name}", description=text, formatter_class=_DefaultsShown)
    module.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars and no summary on stderr")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an unexpected error")
    args = parser.parse_args(rest)
    if getattr(args, "config", None) is not None:
        parser.set_defaults(**module.config_defaults(args.config))
        args = parser.parse_args(rest)
    if hasattr(module, "recipe_defaults") and args.recipe != parser.get_default("recipe"):
        # --recipe NAME (other than the default, or than the --config file's): its values become the defaults, over
        # the file's; options given explicitly still override them
        parser.set_defaults(**module.recipe_defaults(args.recipe))
        args = parser.parse_args(rest)
    return module, args


class _DefaultsShown(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none to show (a flag, a required option)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + " ..."


def quiet_libraries() -> None:
    """--quiet: no progress bars from tqdm, transformers or huggingface_hub, and only their errors."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    if "transformers" in sys.modules:  # imported already (flip called in process): it read the variables then
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
