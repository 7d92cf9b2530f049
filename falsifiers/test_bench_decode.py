"""Benchmark: batched greedy decoding with the batch's shared prompt prefix prefilled once (harness.evaluate._prefill)
against the same decoder prefilling every row whole (`make bench`).

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


def agent_prompts(tokenizer, n: int) -> list[str]:
    from harness.decode import render_prompt

    prompts = []
    for i in range(n):
        observations = [render_observation("file_read", {"path": f"pkg/mod_{i}_{j}.py"}, SOURCE, False)
                        for j in range(3)]
        task = f"helper_{i} in pkg/mod_{i}_0.py returns the wrong value for negative numbers; fix it (case {i})."
        prompts.append(render_prompt(tokenizer, render_instruction(task, observations)))
    return prompts


def test_shared_prefix_prefill_against_whole_rows(benchmark, monkeypatch):
    import torch

    import harness.evaluate as evaluate

    model, tokenizer = evaluate.load_for_eval("smollm2-135m", device="cpu")
    texts = agent_prompts(tokenizer, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def cpu_seconds() -> tuple[float, list[str]]:
        start = time.process_time()
        outputs = [r["output"] for r in evaluate.generate(model, tokenizer, texts, 16, 16)]
        return time.process_time() - start, outputs

    try:
        shared, shared_outputs = cpu_seconds()
        with monkeypatch.context() as patch:
            patch.setattr(evaluate, "shared_prefix_length", lambda rows: 0)
            whole, whole_outputs = cpu_seconds()
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
