"""The batched decoder every evaluation and agent uses, and the model it decodes with: a chat turn rendered in the
model's own template, greedy or seeded-sampled completions batched with the shared prompt prefix prefilled once, the
model (+ adapter) loaded for it. Below harness.evaluate and harness.agent, which both call it; it imports neither.

torch / transformers / peft are imported inside the functions that need them.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness import FlipError, progress_bar
from harness.contracts import system_prompt

# Prompts decoded together: the 38 held-out tasks in one batch. On a 2-core CPU a decode step costs little more for
# 38 rows than for 8 (the weights are read once per step): the base's 38 first steps at 128 tokens took 50 s in batches
# of 8, 40 s of 16, 26 s in one.
DEFAULT_BATCH_SIZE = 40
# A batch's pad tokens: at most this share of its padded prompt tokens (the shared prefix included). Decoding wants large
# batches (a step reads the weights once for all rows, and each extra batch is a whole extra decode); prefilling wants
# rows of one length (a pad token costs what a prompt token does). An agent's later turns mix prompts of very different
# lengths (one file read against three), so one batch of all of them spends much of its prefill on padding; prompts
# that differ only in a short task (every first step) stay in one batch. Measured against the prompts' own tokens only,
# a first step's 38 prompts split in two and the base's 256-token replies decoded twice: the prefix counts.
# The bench is falsifiers/test_bench_decode.py.
MAX_PADDING = 0.2


def chat_messages(instruction: str, dialect: str | None = None) -> list[dict]:
    return [{"role": "system", "content": system_prompt(dialect)}, {"role": "user", "content": instruction}]


def render_prompt(tokenizer, instruction: str, dialect: str | None = None) -> str:
    """A user turn (an instruction from harness.prompt) in the model's own chat template, ready for its reply."""
    return tokenizer.apply_chat_template(chat_messages(instruction, dialect), tokenize=False,
                                         add_generation_prompt=True)


def stop_token_ids(tokenizer) -> list[int]:
    """End of turn: the tokenizer's family's end-of-turn and stop tokens (contracts/families.yaml) where its vocabulary
    has them, and the tokenizer's eos."""
    from harness.families import of_tokenizer

    family = of_tokenizer(tokenizer)
    ids = []
    for token in (family.end_of_turn, *family.stop_tokens):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.append(token_id)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def generate(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int = DEFAULT_BATCH_SIZE,
             stop_strings: tuple[str, ...] = (), progress: str | None = None, temperature: float = 0.0,
             seed: int = 0, keys: list[str] | None = None, prompt_cache: PromptCache | None = None) -> list[dict]:
    """Greedy completions (or, with `temperature` > 0, samples from the softmax at that temperature, drawn from a
    generator seeded with `seed`, so a sampled run repeats exactly) of chat-rendered prompts, `batch_size` at a time
    with left padding (every row's generation starts right after its own prompt). Returns {"output", "new_tokens",
    "hit_token_limit", "over_context"} per text, in order. A prompt whose tokens and `max_new_tokens` together exceed
    the model's context (max_position_embeddings) is not decoded at all (positions past it give garbage): its output
    is empty and `over_context` true, for the caller to count.

    A row ends at an end-of-turn token, or at the first of `stop_strings` (kept in its output; the agent's
    `</tool_call>`: the runtime executes only the first call), and then leaves its batch at once, its cache rows
    dropped. This greedy loop is written here rather than calling transformers' `generate` because that keeps decoding
    every row until the slowest one ends: on a CPU one unclosed reply made a whole batch of agent turns decode to the
    token limit, most of an agent run's time. The tokens every prompt of a batch starts with (the chat template's system
    turn: about 240 of an agent prompt's ~700) are computed once per batch, not once per row (_prefill). `progress`: a
    progress bar over the prompts with this label (stderr; --quiet disables every tqdm bar).

    `prompt_cache` with `keys` (one per text: its conversation): each prompt's keys and values are kept under its key,
    and a later prompt of the same conversation that starts with the same tokens prefills only the rest (PromptCache).
    The cache then holds exactly the conversations of `keys`."""
    stops = set(stop_token_ids(tokenizer))
    device = next(model.parameters()).device
    pick = _sampler(temperature, seed, device)
    was_training = model.training
    model.eval()
    fits = [index for index, text in enumerate(texts) if fits_context(model, tokenizer, text, max_new_tokens)]
    results = [{"output": "", "new_tokens": 0, "hit_token_limit": False, "over_context": True} for _ in texts]
    # the chat template already holds every special token; add_special_tokens would add a BOS twice
    ids = tokenizer([texts[index] for index in fits], add_special_tokens=False)["input_ids"] if fits else []
    caching = prompt_cache is not None and keys is not None and PromptCache.supports(model)
    reused = [prompt_cache.reusable(keys[index], row) if caching else 0 for index, row in zip(fits, ids)]
    bar = progress_bar(progress is not None, total=len(texts), desc=progress, unit="prompt", leave=False)
    try:
        # what a row prefills is what it did not reuse: batch on that
        for batch in length_batches([len(row) - done for row, done in zip(ids, reused)], batch_size):
            indices = [fits[position] for position in batch]
            prefixes = ([prompt_cache.prefix(keys[index], reused[position]) for index, position in zip(indices, batch)]
                        if caching and all(reused[position] for position in batch) else None)
            store = (prompt_cache, [keys[index] for index in indices]) if caching else None
            decoded = _decode_batch(model, tokenizer, [ids[position] for position in batch], max_new_tokens, stops,
                                    stop_strings, device, pick, prefixes, store)
            for index, result in zip(indices, decoded):
                results[index] = {**result, "over_context": False}
            bar.update(len(batch))
    finally:
        bar.close()
        if was_training:
            model.train()
    if caching:
        prompt_cache.retain(keys[index] for index in fits)
    return results


def length_batches(lengths: list[int], batch_size: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """The positions of `lengths` in batches of at most `batch_size`, shortest first: a batch takes the next longer
    prompt while its pad tokens (every row padded to its longest) stay within `max_padding` of its padded tokens."""
    batches: list[list[int]] = []
    for position in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        batch = batches[-1] if batches else []
        width, rows = lengths[position], len(batch) + 1
        padding = sum(width - lengths[i] for i in batch)
        if batch and rows <= max(1, batch_size) and padding <= max_padding * width * rows:
            batch.append(position)
        else:
            batches.append([position])
    return batches


def fits_context(model, tokenizer, text: str, max_new_tokens: int) -> bool:
    """Whether the prompt and its reply fit the model's context (a model without a stated context always fits)."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(context, int):
        return True
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + max_new_tokens <= context


def _sampler(temperature: float, seed: int, device):
    """The next-token rule over a batch's last logits: argmax when greedy; else a draw from softmax(logits / T)."""
    import torch

    if not temperature > 0:
        return lambda logits: logits.argmax(-1)
    generator = torch.Generator(device=device).manual_seed(seed)

    def draw(logits):
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return draw


def _cache_keyword(model) -> str:
    """transformers 5.24 renamed the forward argument `past_key_values` to `cache` (the old name only warns)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _decode_batch(model, tokenizer, ids, max_new_tokens, stops, stop_strings, device, pick, prefixes=None,
                  store=None) -> list[dict]:
    """Decode a batch of tokenized prompts. `prefixes`: each row's reused keys and values (PromptCache.prefix), or
    None to prefill whole prompts; `store`: (a PromptCache, each row's key) to keep each row's prompt in once
    prefilled."""
    import torch
    from transformers import DynamicCache

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = list(range(len(ids)))  # batch row -> prompt index, for the rows still decoding
    tokens_out: list[list[int]] = [[] for _ in ids]
    ended = [False] * len(ids)  # by an end-of-turn token or a stop string
    eos = [False] * len(ids)
    with torch.inference_mode():
        if prefixes is None:
            cache = DynamicCache(config=getattr(model, "config", None))
            cache_arg = {_cache_keyword(model): cache}
            out, mask, next_position = _prefill(model, ids, pad, cache, cache_arg, device)
        else:
            cache = DynamicCache(ddp_cache_data=_left_padded(prefixes), config=getattr(model, "config", None))
            cache_arg = {_cache_keyword(model): cache}
            out, mask, next_position = _prefill_after(model, ids, [_length(p) for p in prefixes], pad, cache, cache_arg,
                                                      device)
        if store is not None:
            prompt_cache, keys = store
            for row in rows:
                prompt_cache.put(keys[row], ids[row], _row_layers(cache, row, mask[row]))
        limit = max_new_tokens
        for step in range(limit):
            chosen = pick(out.logits[:, -1])
            keep = []
            for row, token in enumerate(chosen.tolist()):
                index = rows[row]
                if token in stops:
                    ended[index] = eos[index] = True
                    continue
                tokens_out[index].append(token)
                if stop_strings and any(s in tokenizer.decode(tokens_out[index][-16:]) for s in stop_strings):
                    ended[index] = True
                    continue
                keep.append(row)
            if not keep or step == limit - 1:
                break
            if len(keep) < len(rows):
                selected = torch.tensor(keep, device=device)
                cache.batch_select_indices(selected)
                mask, next_position, chosen = mask[selected], next_position[selected], chosen[selected]
                rows = [rows[row] for row in keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_position, use_cache=True,
                        **cache_arg)
            next_position = next_position + 1
    results = []
    for index, body in enumerate(tokens_out):
        text = tokenizer.decode(body, skip_special_tokens=True)
        cut = min((text.find(s) + len(s) for s in stop_strings if s in text), default=None)
        results.append({"output": text if cut is None else text[:cut],
                        "new_tokens": len(body) + eos[index],
                        "hit_token_limit": not ended[index]})
    return results


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens every row has in common, leaving each row at least one token of its own (the prefill
    must end on a row's last prompt token to give its first logits)."""
    if len(rows) < 2:
        return 0
    first, limit = rows[0], min(len(row) for row in rows) - 1
    length = 0
    while length < limit and all(row[length] == first[length] for row in rows):
        length += 1
    return length


def _prefill(model, ids, pad, cache, cache_arg, device):
    """Run every prompt into the cache: (the output holding each row's last logits, the attention mask, each row's next
    position). The batch's shared prefix runs once as one row and is repeated into every row's cache; the rest of each
    prompt follows it left-padded, so a row reads [prefix | padding | its own tokens] and its positions skip the padding
    (prefix 0..P-1, own tokens P..)."""
    import torch

    shared = shared_prefix_length(ids)
    if shared:
        model(input_ids=torch.tensor([ids[0][:shared]], device=device), use_cache=True, logits_to_keep=1, **cache_arg)
        cache.batch_repeat_interleave(len(ids))
    return _prefill_after(model, ids, [shared] * len(ids), pad, cache, cache_arg, device)


def _prefill_after(model, ids, done, pad, cache, cache_arg, device):
    """The rest of each prompt, after the `done[row]` tokens the cache already holds for that row (right-aligned in the
    cache's columns, padding before them): left-padded, so a row reads [padding | its cached tokens | padding | its own
    tokens], each row's positions counting its own tokens only."""
    import torch

    cached = cache.get_seq_length()
    own = [row[start:] for row, start in zip(ids, done)]
    width = max(len(row) for row in own)
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in own], device=device)
    own_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in own], device=device)
    cache_mask = torch.tensor([[0] * (cached - start) + [1] * start for start in done], device=device,
                              dtype=own_mask.dtype)
    mask = torch.cat([cache_mask, own_mask], dim=1)
    start = torch.tensor(done, device=device)[:, None]
    positions = torch.maximum(start + own_mask.cumsum(-1) - 1, start)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **cache_arg)
    return out, mask, positions[:, -1:] + 1


class PromptCache:
    """Each conversation's last prompt: its token ids and their keys and values, per layer. An agent's next prompt
    repeats the last one's text up to its closing request for an action, so with this cache a turn prefills only the
    new action and result instead of the whole conversation again (prefix caching, as vLLM and SGLang do across
    requests; transformers reuses a cache within one generate call only). Not for models with sliding-window layers,
    whose cache keeps only the window."""

    def __init__(self):
        self.entries: dict[str, tuple[list[int], list]] = {}

    @staticmethod
    def supports(model) -> bool:
        from transformers import DynamicCache

        config = getattr(model, "config", None)
        return config is not None and not any(DynamicCache(config=config).is_sliding)

    def reusable(self, key: str, ids: list[int]) -> int:
        """How many of `ids`' leading tokens the cache holds for `key`, leaving at least one to prefill (the prefill
        must end on the prompt's last token to give its first logits)."""
        stored = self.entries.get(key, ((), None))[0]
        limit, length = min(len(stored), len(ids) - 1), 0
        while length < limit and stored[length] == ids[length]:
            length += 1
        return length

    def prefix(self, key: str, length: int) -> list:
        """`key`'s keys and values of its first `length` tokens: per layer (keys, values), each [heads, length, dim]."""
        return [(k[:, :length], v[:, :length]) for k, v in self.entries[key][1]]

    def put(self, key: str, ids: list[int], layers: list) -> None:
        self.entries[key] = (list(ids), layers)

    def retain(self, keys) -> None:
        """Forget every conversation but these (the ones still going)."""
        wanted = set(keys)
        self.entries = {key: entry for key, entry in self.entries.items() if key in wanted}


def _length(layers: list) -> int:
    return layers[0][0].shape[-2]


def _left_padded(prefixes: list[list]) -> list[tuple]:
    """Rows' cached keys and values as one batch per layer, each row right-aligned to the longest (zeros before it,
    masked out by the attention mask)."""
    width = max(_length(layers) for layers in prefixes)
    batched = []
    for layer in range(len(prefixes[0])):
        keys, values = prefixes[0][layer]
        shape = (len(prefixes), keys.shape[0], width, keys.shape[-1])
        batch_keys, batch_values = keys.new_zeros(shape), values.new_zeros(shape)
        for row, layers in enumerate(prefixes):
            row_keys, row_values = layers[layer]
            batch_keys[row, :, width - row_keys.shape[-2]:] = row_keys
            batch_values[row, :, width - row_values.shape[-2]:] = row_values
        batched.append((batch_keys, batch_values))
    return batched


def _row_layers(cache, row: int, mask) -> list:
    """One row's keys and values of its real tokens (the columns its attention mask keeps), copied out of the batch."""
    columns = mask.bool()
    return [(layer.keys[row][:, columns], layer.values[row][:, columns]) for layer in cache.layers]


def load_for_eval(model: str, adapter: str | os.PathLike | None = None, device: str = "auto"):
    """(model, tokenizer), with a peft adapter applied on top when one is given."""
    from harness.models import load_model

    loaded, tokenizer = load_model(model, device)
    if adapter is not None:
        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").is_file():
            raise FlipError(f"{adapter} is not a peft adapter directory (no adapter_config.json)")
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, str(adapter)).eval()
    return loaded, tokenizer
