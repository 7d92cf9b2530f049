"""Falsifiers of contracts/train.yaml on CUDA (`pytest -m gpu`; skipped where torch sees no CUDA device).

The CUDA path end to end on Llama- and Qwen2-architecture models built from configs (no weights to download): LoRA
training on the GPU (bf16 where the GPU supports it), remap to apr names, merge; the merged model's logits must equal
peft's base + adapter within MERGE_TOL, and the whole pipeline run on the CPU with the same data and seed must give
logits within CPU_TOL of the GPU's (bf16 training rounds differently: the looser bound).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from falsifiers.test_remap import input_ids, logits, peft_logits, tiny_base
from harness.toolcall import render_tool_call

# A helper, not a claim falsifier: the mutation suite runs on CPU machines, where this test is skipped and so cannot
# kill a mutant; on a CUDA runner `pytest -m gpu` runs it.
pytestmark = [pytest.mark.gpu, pytest.mark.helper]

MERGE_TOL = 1e-4  # merged vs peft, both evaluated in fp32 on the CPU: the merge itself must be exact
# CUDA-trained vs CPU-trained students: their logits differ by less than a quarter of how far training moved them (on
# the CPU, 10 steps move these tiny models' logits by about 1.8; not yet calibrated on a GPU)
CPU_TOL = 0.25
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _base(directory: Path, arch: str) -> Path:
    """A tiny random model of the architecture, its tokenizer given a ChatML template (samples are rendered with it)."""
    from transformers import AutoTokenizer

    base = tiny_base(directory, arch, seed=11)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(base)
    return base


def _data(path: Path) -> Path:
    calls = [("file_read", {"path": "src/lib.rs"}), ("shell", {"command": "cargo test"}),
             ("file_edit", {"path": "src/lib.rs", "old": "a - b", "new": "a + b"})]
    path.write_text("".join(json.dumps({"instruction": f"Task:\nfix {i}\n\nReply with the next tool call.",
                                        "response": render_tool_call(*call), "system": "You are apr-code.",
                                        "metadata": {"trajectory": str(i)}}) + "\n"
                            for i, call in enumerate(calls * 4)))
    return path


def _pipeline(base: Path, data: Path, out: Path, device: str) -> Path:
    """train on `device` -> remap to apr -> merge (the apr file): the merged HF directory."""
    from harness.merge import merge
    from harness.remap import remap_to_apr
    from harness.train import TrainConfig, train

    summary = train(TrainConfig(data=data, base=str(base), out=out / "adapter", rank=8, alpha=16, max_steps=10,
                                lr=5e-3, val_fraction=0.0, device=device, save_every=None))
    assert summary["device"].startswith(device)
    if device == "cuda":
        expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        assert summary["dtype"] == expected, summary["dtype"]
    remap_to_apr(out / "adapter", out / "adapter.safetensors", base=str(base))
    merge(str(base), out / "adapter.safetensors", out / "merged")
    return out / "merged"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cuda_training_merges_to_peft_logits_and_matches_the_cpu_pipeline(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    base = _base(tmp_path / "base", arch)
    data = _data(tmp_path / "data.jsonl")
    gpu = _pipeline(base, data, tmp_path / "gpu", "cuda")
    cpu = _pipeline(base, data, tmp_path / "cpu", "cpu")
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    ids = input_ids(vocab)

    def merged_logits(directory):
        return logits(AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), ids)

    merged = merged_logits(gpu)
    exact = (merged - peft_logits(base, tmp_path / "gpu" / "adapter", ids)).abs().max().item()
    print(f"{arch}: CUDA-trained merged vs peft max |logit diff| {exact:.3g}")
    assert exact < MERGE_TOL
    drift = (merged - merged_logits(cpu)).abs().max().item()
    moved = (merged - logits(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), ids)).abs().max().item()
    print(f"{arch}: CUDA vs CPU pipeline max |logit diff| {drift:.3g} (training moved the logits by {moved:.3g})")
    assert moved > 0 and drift < CPU_TOL * moved
