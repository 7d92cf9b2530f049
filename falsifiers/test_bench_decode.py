"""Benchmarks of the batched greedy decoder (`make bench`): the batch's shared prompt prefix prefilled once
(harness.decode._prefill) against every row prefilled whole, prompts batched by length (harness.decode.length_batches)
against one padded batch of all of them, and an agent's next turn with the prompt cache (harness.decode.PromptCache)
against prefilling whole conversations again.

Agent-shaped prompts: the bundled smollm2-135m's chat template, the apr-code system turn (238 tokens) and a task with
three file observations (~820 tokens in all, a little over an agent's longest: 1024 less the reply's 256). One
thread, CPU seconds: the ratio is this process's work whatever the neighbours do. Both sides decode the same tokens (FALSIFY-EVAL-006).
"""
from __future__ import annotations

import time

import pytest

from harness.prompt import render_instruction, render_observation

pytestmark = [pytest.mark.bench, pytest.mark.helper]

FLOOR = 1.2  # measured 1.40x (31.7 vs 44.6 CPU s); the longer a prompt, the smaller the shared part's share
SOURCE = "\n".join(f"{n}\tdef helper_{n}(value):\n{n}\t    return value * {n} + len(str(value))" for n in range(1, 6))


def cpu_seconds(run) -> tuple[float, list[str]]:
    """This process's CPU seconds for run() (a decode), and the outputs it decoded."""
    start = time.process_time()
    outputs = [r["output"] for r in run()]
    return time.process_time() - start, outputs


def agent_prompts(tokenizer, n: int, reads=lambda i: 3, more: int = 0) -> list[str]:
    """n agent prompts, prompt i after reads(i) + `more` file reads."""
    from harness.decode import render_prompt

    prompts = []
    for i in range(n):
        observations = [render_observation("file_read", {"path": f"pkg/mod_{i}_{j}.py"}, SOURCE, False)
                        for j in range(reads(i) + more)]
        task = f"helper_{i} in pkg/mod_{i}_0.py returns the wrong value for negative numbers; fix it (case {i})."
        prompts.append(render_prompt(tokenizer, render_instruction(task, observations)))
    return prompts


def test_shared_prefix_prefill_against_whole_rows(benchmark, monkeypatch):
    import torch

    import harness.decode as decode

    model, tokenizer = decode.load_for_eval("smollm2-135m", device="cpu")
    texts = agent_prompts(tokenizer, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = lambda: decode.generate(model, tokenizer, texts, 16, 16)  # noqa: E731

    try:
        shared, shared_outputs = cpu_seconds(run)
        with monkeypatch.context() as patch:
            patch.setattr(decode, "shared_prefix_length", lambda rows: 0)
            whole, whole_outputs = cpu_seconds(run)
    finally:
        torch.set_num_threads(threads)
    ratio = whole / shared
    tokens = len(tokenizer(texts[0])["input_ids"])
    benchmark.extra_info.update({"prompts": len(texts), "prompt_tokens": tokens, "speedup": round(ratio, 2),
                                 "shared_prefix_cpu_s": round(shared, 2), "whole_rows_cpu_s": round(whole, 2)})
    print(f"\n16 prompts of ~{tokens} tokens, 16 new tokens: shared prefix {shared:.1f} CPU s, whole rows {whole:.1f} "
          f"CPU s: {ratio:.2f}x")
    benchmark.pedantic(lambda: None, rounds=1)
    assert shared_outputs == whole_outputs
    assert ratio >= FLOOR


LENGTH_FLOOR = 1.1  # measured 1.42x and 1.16x in two runs alone (46.3 vs 65.7, 49.0 vs 57.0 CPU s; 3 length batches)


def test_length_batches_against_one_padded_batch(benchmark, monkeypatch):
    """An agent's later turn: 24 prompts whose episodes read 0 to 3 files (about 330 to 820 tokens), 16 new tokens
    each, decoded in batches of at most 40 (the default). Batched by length (harness.decode.MAX_PADDING) against one
    batch of all 24 padded to the longest; the same outputs either way."""
    import torch

    import harness.decode as decode

    model, tokenizer = decode.load_for_eval("smollm2-135m", device="cpu")
    texts = agent_prompts(tokenizer, 24, reads=lambda i: i % 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    run = lambda: decode.generate(model, tokenizer, texts, 16, 40)  # noqa: E731

    original = decode.length_batches
    try:
        bucketed, bucketed_outputs = cpu_seconds(run)
        with monkeypatch.context() as patch:
            patch.setattr(decode, "length_batches", lambda lengths, size: original(lengths, size, float("inf")))
            padded, padded_outputs = cpu_seconds(run)
    finally:
        torch.set_num_threads(threads)
    ratio = padded / bucketed
    lengths = sorted(len(tokenizer(text)["input_ids"]) for text in texts)
    batches = len(original(lengths, 40))
    benchmark.extra_info.update({"prompts": len(texts), "prompt_tokens": [lengths[0], lengths[-1]], "batches": batches,
                                 "speedup": round(ratio, 2), "length_batches_cpu_s": round(bucketed, 2),
                                 "one_batch_cpu_s": round(padded, 2)})
    print(f"\n24 prompts of {lengths[0]}-{lengths[-1]} tokens, 16 new tokens: {batches} length batches {bucketed:.1f} "
          f"CPU s, one padded batch {padded:.1f} CPU s: {ratio:.2f}x")
    benchmark.pedantic(lambda: None, rounds=1)
    assert bucketed_outputs == padded_outputs
    assert ratio >= LENGTH_FLOOR


CACHE_FLOOR = 1.3  # measured 1.95x alone (20.8 vs 40.5 CPU s, 2026-12-06); one run, so a margin below it


def test_prompt_cache_against_whole_conversations(benchmark):
    """An agent's next turn: 24 conversations that read 0 to 2 files read one more (about 330 to 820 tokens), 16 new
    tokens each. With the prompt cache holding each conversation's last prompt (its priming decode not counted: in an
    agent run it is the previous turn) against prefilling every prompt whole; the same outputs either way."""
    import torch

    import harness.decode as decode

    model, tokenizer = decode.load_for_eval("smollm2-135m", device="cpu")
    before = agent_prompts(tokenizer, 24, reads=lambda i: i % 3)
    texts = agent_prompts(tokenizer, 24, reads=lambda i: i % 3, more=1)
    keys = [f"episode-{i}" for i in range(len(texts))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = decode.PromptCache()
        decode.generate(model, tokenizer, before, 1, 40, keys=keys, prompt_cache=cache)
        cached, cached_outputs = cpu_seconds(lambda: decode.generate(model, tokenizer, texts, 16, 40, keys=keys,
                                                                     prompt_cache=cache))
        whole, whole_outputs = cpu_seconds(lambda: decode.generate(model, tokenizer, texts, 16, 40))
    finally:
        torch.set_num_threads(threads)
    ratio = whole / cached
    lengths = sorted(len(tokenizer(text)["input_ids"]) for text in texts)
    benchmark.extra_info.update({"prompts": len(texts), "prompt_tokens": [lengths[0], lengths[-1]],
                                 "speedup": round(ratio, 2), "prompt_cache_cpu_s": round(cached, 2),
                                 "whole_cpu_s": round(whole, 2)})
    print(f"\n24 next turns of {lengths[0]}-{lengths[-1]} tokens, 16 new tokens: prompt cache {cached:.1f} CPU s, "
          f"whole prompts {whole:.1f} CPU s: {ratio:.2f}x")
    benchmark.pedantic(lambda: None, rounds=1)
    assert cached_outputs == whole_outputs
    assert ratio >= CACHE_FLOOR
