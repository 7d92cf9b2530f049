"""Falsifiers of contracts/claims/train.yaml on CUDA (`pytest -m gpu`; skipped where torch sees no CUDA device).

The CUDA path end to end on Llama- and Qwen2-architecture models built from configs (no weights to download): LoRA
training on the GPU (bf16 where the GPU supports it), remap to apr names, merge; the merged model's logits must equal
peft's base + adapter within MERGE_TOL, and the whole pipeline run on the CPU with the same data and seed must give
logits within CPU_TOL of the GPU's (bf16 training rounds differently: the looser bound).

And a benchmark (also `-m bench`): bf16 training on a Qwen2 the size of Qwen2.5-Coder-1.5B, flip train against TRL's
SFTTrainer (transformers' Trainer + peft where TRL is not installed), tokens per second and peak GPU memory.
"""
from __future__ import annotations

import gc
import json
import time
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


# Qwen2.5-Coder-1.5B-Instruct's architecture (its config.json), built with random weights: the GPU machine has no
# weights, and throughput and memory do not depend on their values.
QWEN2_CODER_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                        rms_norm_eps=1e-6, tie_word_embeddings=True)
BENCH_STEPS = 12
BENCH_TOKENS = 700  # per sample: the middle of the exporter's 1024-token budget
THROUGHPUT_FLOOR = 1.0  # flip train must not be slower than the library trainer it replaces (not yet run on a GPU)
MEMORY_CEILING = 1.1  # nor take more than 1.1x its peak GPU memory


def _bench_base(directory: Path, size: dict) -> Path:
    """A random Qwen2 of `size`, saved in bf16 with the tiny byte-level tokenizer and a ChatML template."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tiny = _base(directory.parent / "tokenizer-source", "qwen2")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    config = Qwen2Config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **size)
    with torch.device("cuda"):  # initialising 1.5B parameters is minutes on the CPU, a second on the GPU
        model = Qwen2ForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(directory)
    del model
    tokenizer.save_pretrained(directory)
    return directory


def _bench_data(path: Path, tokenizer, tokens: int, n: int) -> Path:
    """n exporter-shaped samples of about `tokens` tokens each (an observation padded to the length)."""
    call = render_tool_call("file_edit", {"path": "src/lib.rs", "old": "a - b", "new": "a + b"})
    filler = "fn add(a: i32, b: i32) -> i32 { a - b }\n"
    rows = []
    for i in range(n):
        body = f"Task:\nfix add in src/lib.rs ({i})\n\nResult:\n"
        while len(tokenizer(body + filler)["input_ids"]) < tokens - 40:
            body += filler
        rows.append({"instruction": body + "\nReply with the next tool call.", "response": call,
                     "system": "You are apr-code.", "metadata": {"trajectory": str(i)}})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _cuda_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def _ours(base: Path, data: Path, out: Path, recipe: dict) -> tuple[float, int]:
    """(wall seconds of steps 2..N, peak GPU bytes) of flip train, stamped at each step's end."""
    from harness.train import TrainConfig, train

    stamps: list[float] = []
    torch.cuda.reset_peak_memory_stats()
    summary = train(TrainConfig(data=data, base=str(base), out=out, rank=recipe["rank"], alpha=recipe["alpha"],
                                targets=tuple(recipe["targets"]), lr=recipe["lr"], max_steps=BENCH_STEPS,
                                val_fraction=0.0, device="cuda", save_every=None, eval_every=1),
                    on_eval=lambda step, model, tokenizer: stamps.append(_cuda_clock()))
    assert summary["dtype"] == "bfloat16" and len(stamps) == BENCH_STEPS, (summary["dtype"], len(stamps))
    return stamps[-1] - stamps[0], torch.cuda.max_memory_allocated()


def _library_trainer(base: Path, data: Path, out: Path, recipe: dict) -> tuple[float, int, str]:
    """(wall seconds of steps 2..N, peak GPU bytes, name) of TRL's SFTTrainer where it is installed, else of
    transformers' Trainer + peft (what SFTTrainer runs underneath) on the same tokens and labels: bf16 base, the same
    LoRA, batch 1, AdamW, no gradient checkpointing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from harness.train import encode, read_jsonl

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(_cuda_clock())

    tokenizer = AutoTokenizer.from_pretrained(base)
    samples = [sample for _, sample in read_jsonl(data, "dataset")]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to("cuda")
    lora = LoraConfig(r=recipe["rank"], lora_alpha=recipe["alpha"], target_modules=list(recipe["targets"]),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    common = dict(output_dir=str(out), bf16=True, per_device_train_batch_size=1, gradient_accumulation_steps=1,
                  max_steps=BENCH_STEPS, learning_rate=recipe["lr"], lr_scheduler_type="cosine", warmup_steps=0.1,
                  max_grad_norm=1.0, weight_decay=0.0, seed=42, gradient_checkpointing=False, save_strategy="no",
                  logging_steps=1000, report_to=[], dataloader_num_workers=0, disable_tqdm=True)
    try:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        rows = []
        for sample in samples:
            ids, labels = encode(sample, tokenizer, 1024)
            rows.append({"input_ids": ids, "labels": labels})

        def collate(batch):
            return {key: torch.tensor([row[key] for row in batch]) for key in ("input_ids", "labels")}

        trainer = Trainer(model=get_peft_model(model, lora), args=TrainingArguments(**common), train_dataset=rows,
                          data_collator=collate, callbacks=[Clock()])
        name = "transformers Trainer + peft"
    else:
        dataset = Dataset.from_list([{
            "prompt": [{"role": "system", "content": s["system"]}, {"role": "user", "content": s["instruction"]}],
            "completion": [{"role": "assistant", "content": s["response"]}]} for s in samples])
        trainer = SFTTrainer(model=model, args=SFTConfig(max_length=1024, packing=False, completion_only_loss=True,
                                                         **common),
                             train_dataset=dataset, processing_class=tokenizer, peft_config=lora, callbacks=[Clock()])
        name = "TRL SFTTrainer"
    trainer.train()
    assert len(stamps) == BENCH_STEPS
    return stamps[-1] - stamps[0], torch.cuda.max_memory_allocated(), name


@pytest.mark.bench
def test_bf16_training_at_qwen2_coder_1_5b_size_against_the_library_trainer(tmp_path, record_property):
    """flip train on a Qwen2 the size of Qwen2.5-Coder-1.5B (random weights, bf16 base, the default recipe's LoRA),
    against TRL's SFTTrainer (or transformers' Trainer + peft where TRL is absent) on the same samples: tokens per
    second of steps 2..N and peak GPU memory. Ours runs before and after the library trainer; its slower run counts."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    from transformers import AutoTokenizer

    from harness.contracts import default_recipe
    from harness.train import encode, read_jsonl

    recipe = default_recipe()
    base = _bench_base(tmp_path / "qwen2-1.5b", QWEN2_CODER_1_5B)
    tokenizer = AutoTokenizer.from_pretrained(base)
    data = _bench_data(tmp_path / "bench.jsonl", tokenizer, BENCH_TOKENS, BENCH_STEPS)
    lengths = [len(encode(sample, tokenizer, 1024)[0]) for _, sample in read_jsonl(data, "dataset")]
    steady_tokens = sum(lengths) * (BENCH_STEPS - 1) / BENCH_STEPS
    before, our_peak = _ours(base, data, tmp_path / "ours-1", recipe)
    gc.collect()
    lib_seconds, lib_peak, name = _library_trainer(base, data, tmp_path / "library", recipe)
    gc.collect()
    after, _ = _ours(base, data, tmp_path / "ours-2", recipe)
    ours_tps, lib_tps = steady_tokens / max(before, after), steady_tokens / lib_seconds
    result = {"gpu": torch.cuda.get_device_name(), "library": name, "tokens_per_sample": sum(lengths) / len(lengths),
              "ours_tokens_per_s": round(ours_tps), "library_tokens_per_s": round(lib_tps),
              "ratio": round(ours_tps / lib_tps, 3), "ours_peak_gib": round(our_peak / 2**30, 2),
              "library_peak_gib": round(lib_peak / 2**30, 2), "ours_seconds": [before, after]}
    record_property("bench", json.dumps(result))
    print("\nbf16 training at Qwen2.5-Coder-1.5B size:", json.dumps(result))
    assert ours_tps >= THROUGHPUT_FLOOR * lib_tps, result
    assert our_peak <= MEMORY_CEILING * lib_peak, result
