"""Model families (contracts/families.yaml): what differs between bases, read from one table.

Weights side (remap, merge): a family is found by the config's model_type: its GGUF architecture name, whether the
q/k rows are permuted in GGUF layout, whether an HF-directory base can be written as a GGUF.
Text side (export, train, eval, agent): a family is found by the tokenizer's vocabulary, the first family whose
end-of-turn token is one token of it: its turn format (what export counts and what a tokenizer without a chat template
of its own is given), the token that closes a reply, the tokens that stop decoding. No torch, no transformers here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from harness import FlipError


@dataclass(frozen=True)
class Turn:
    """One chat turn pair: prefix (with {system}) + instruction + middle + reply + end."""
    prefix: str
    middle: str
    end: str

    def render(self, system: str, instruction: str, response: str) -> str:
        """The whole sample as the trainer renders it; the token budget counts exactly this."""
        return self.opening(system) + instruction + self.middle + response + self.end

    def opening(self, system: str) -> str:
        return self.prefix.replace("{system}", system)

    def chat_template(self) -> str:
        """A Jinja chat template that renders [system, user(, assistant)] exactly as `render` does (a prompt rendered
        with add_generation_prompt=True ends with `middle`). JSON string literals are valid Jinja string literals."""
        before, after = self.prefix.split("{system}")
        text = json.dumps
        return (
            "{%- if messages[0]['role'] == 'system' -%}"
            "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
            "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
            f"{{{{- {text(before)} + system + {text(after)} -}}}}"
            "{%- for message in turns -%}"
            "{%- if message['role'] == 'user' -%}"
            f"{{{{- message['content'] + {text(self.middle)} -}}}}"
            "{%- else -%}"
            f"{{{{- message['content'] + {text(self.end)} -}}}}"
            "{%- endif -%}"
            "{%- endfor -%}"
        )


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    gguf_arch: str
    permute_qk: bool
    gguf_tokenizer: str | None
    turn: Turn
    end_of_turn: str
    stop_tokens: tuple[str, ...]


@lru_cache(maxsize=1)
def families() -> tuple[Family, ...]:
    import yaml

    from harness.contracts import CONTRACTS

    raw = yaml.safe_load((CONTRACTS / "families.yaml").read_text(encoding="utf-8"))["families"]
    return tuple(Family(name=f["name"], model_types=tuple(f["model_types"]), gguf_arch=f["gguf_arch"],
                        permute_qk=bool(f["permute_qk"]), gguf_tokenizer=f["gguf_tokenizer"], turn=Turn(**f["turn"]),
                        end_of_turn=f["end_of_turn"], stop_tokens=tuple(f["stop_tokens"])) for f in raw)


def by_name(name: str) -> Family:
    for family in families():
        if family.name == name:
            return family
    raise KeyError(name)


def of_model_type(model_type: str) -> Family:
    """The family of a transformers model_type (`llama`, `qwen2`, `gemma3_text`)."""
    for family in families():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in families() for t in f.model_types)
    raise FlipError(f"architecture {model_type!r} is not in contracts/families.yaml (known: {', '.join(known)})")


def of_vocabulary(token_id: Callable[[str], int | None]) -> Family:
    """The family whose end-of-turn token is one token of a vocabulary; `token_id(text)` gives a token's id or None.
    The first family's (ChatML) when none matches, the format the project has always trained."""
    for family in families():
        if token_id(family.end_of_turn) is not None:
            return family
    return families()[0]


def of_tokenizer(tokenizer) -> Family:
    """The family of a transformers tokenizer (an unknown token maps to unk, which is not a match)."""
    def token_id(text: str) -> int | None:
        found = tokenizer.convert_tokens_to_ids(text)
        return found if isinstance(found, int) and found >= 0 and found != tokenizer.unk_token_id else None

    return of_vocabulary(token_id)


def give_chat_template(tokenizer) -> None:
    """A tokenizer without a chat template of its own (a pretrained base such as Gemma 3 270M) gets its family's turn
    format as one, so that train, eval and agent render every sample through `apply_chat_template` alike."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = of_tokenizer(tokenizer).turn.chat_template()
