"""Where `flip run`'s options travel: a tiny real run traced with sys.setprofile.

    python tools/trace_options.py [WORKDIR]

Runs `flip run` on a tiny random Llama carrying SmolLM2's tokenizer (1 training step, 1 agent turn on one held-out
task), and at every call into a harness module notes which option objects the new frame holds as locals (its
arguments): flip run's RunOptions and the stage option objects made from it (ExportOptions, TrainConfig,
AgentOptions, and any other *Options / *Config dataclass of harness). It prints:

- modules: the harness modules whose functions received an option object;
- names: the distinct (module, local name) pairs an option object was bound to;
- re-entries: calls holding an option object that went into a module the objects had already left (A -> B -> A);
- frames: calls that received an option object.

It measures the code as it is (issue 21: "the orchestrator goes back and forth"); the numbers go in the closing note.
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tiny_base(directory: Path) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer and chat template: a valid --base that trains in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def is_option_object(value) -> bool:
    """A dataclass instance of harness whose class is named *Options or *Config (RunOptions, TrainConfig, ...)."""
    kind = type(value)
    return (dataclasses.is_dataclass(value) and not isinstance(value, type)
            and kind.__module__.startswith("harness") and kind.__name__.endswith(("Options", "Config")))


class Tracer:
    def __init__(self):
        self.modules: list[str] = []  # in order of first arrival
        self.names: set[tuple[str, str]] = set()
        self.frames = 0
        self.reentries = 0
        self._last_module = None

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("harness"):
            return
        held = [name for name, value in frame.f_locals.items() if is_option_object(value)]
        if not held:
            return
        self.frames += 1
        self.names.update((module, name) for name in held)
        if module != self._last_module:
            if module in self.modules:
                self.reentries += 1
            else:
                self.modules.append(module)
            self._last_module = module


def main(argv: list[str]) -> int:
    from harness.cli import main as flip
    from harness.contracts import FIXTURES

    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="trace-options-"))
    base = tiny_base(work / "base")
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "h-age-birthday").symlink_to(FIXTURES / "holdout" / "workspaces" / "h-age-birthday")
    tracer = Tracer()
    sys.setprofile(tracer)
    try:
        code = flip(["run", "--out", str(work / "run"), "--base", str(base), "--holdout", str(tasks), "--steps", "1",
                     "--rank", "4", "--targets", "q_proj", "--no-merge", "--eval-every", "0", "--max-new-tokens", "4",
                     "--max-turns", "1", "--agent-tokens", "4", "--quiet"])
    finally:
        sys.setprofile(None)
    print(f"flip run exit {code} (1: ran to its report, a 1-step student misses the goals)")
    print(f"modules ({len(tracer.modules)}): {', '.join(tracer.modules)}")
    print(f"names ({len(tracer.names)}): " + ", ".join(f"{m.removeprefix('harness.')}:{n}"
                                                       for m, n in sorted(tracer.names)))
    print(f"re-entries: {tracer.reentries}; frames holding an option object: {tracer.frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
