"""Falsifiers of contracts/claims/merge.yaml: W + (alpha / r) B A gives peft's logits, and merged.gguf gives the merged model's.

Tiny random Llama (GQA, untied head) and Qwen2 (GQA, tied head, q/k/v biases) from test_remap's builders; one test on the
real bundled SmolLM2-135M (a GGUF base).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from falsifiers.test_remap import (N_LAYERS, TARGETS, gguf_logits, input_ids, logits, peft_logits, tiny_adapter,
                                   tiny_base)
from harness import FlipError, merge, remap


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-merge")
    built = {}
    for arch in ("llama", "qwen2"):
        base = tiny_base(root / f"{arch}-base", arch, seed=3)
        built[arch] = (base, tiny_adapter(base, root / f"{arch}-adapter", seed=4))
    return built


def _vocab(base) -> int:
    return json.loads((base / "config.json").read_text())["vocab_size"]


def _merged_logits(directory, ids, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(directory, dtype=dtype), ids)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_merged_matches_peft(tiny, tmp_path, arch):
    """The merged HF directory's logits equal peft(base + adapter)'s within 1e-4; every adapted tensor is merged."""
    base, adapter = tiny[arch]
    ids = input_ids(_vocab(base))
    report = merge.merge(base, adapter, tmp_path / "merged")
    assert report["merged"] == N_LAYERS * len(TARGETS) and report["total"] > report["merged"]
    assert report["max_abs_delta"] > 0
    diff = (_merged_logits(tmp_path / "merged", ids) - peft_logits(base, adapter, ids)).abs().max().item()
    print(f"{arch}: merged HF vs peft max |logit diff| {diff:.3g}")
    assert diff < 1e-4, f"merged differs from peft by {diff}"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "merged" / name).is_file(), name


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_merged_gguf_matches_merged_hf(tiny, tmp_path, arch):
    """merged.gguf (default path: a sibling <DIR>.gguf), read back by transformers' GGUF loader, gives the merged HF
    model's logits within 1e-4 (HF-directory base: metadata from config.json, q/k rows permuted on Llama)."""
    base, adapter = tiny[arch]
    ids = input_ids(_vocab(base))
    report = merge.merge(base, adapter, tmp_path / "merged")
    assert report["paths"]["gguf"] == str(tmp_path / "merged.gguf")
    diff = (gguf_logits(tmp_path / "merged.gguf", ids) - _merged_logits(tmp_path / "merged", ids)).abs().max().item()
    print(f"{arch}: merged.gguf vs merged HF max |logit diff| {diff:.3g}")
    assert diff < 1e-4, f"merged.gguf differs from the merged HF model by {diff}"


def test_apr_file_merge(tiny, tmp_path, monkeypatch):
    """An apr safetensors from `flip remap` merges to the same model as its peft adapter, into an HF base and into a
    GGUF base; an apr file without lora_rank / lora_alpha metadata is refused (apr would assume rank 64 / alpha 16)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    monkeypatch.setenv("FLIP_CACHE", str(tmp_path / "cache"))
    base, adapter = tiny["llama"]
    ids = input_ids(_vocab(base))
    expected = peft_logits(base, adapter, ids)
    remap.remap_to_apr(adapter, tmp_path / "apr.safetensors", base=base)
    merge.merge(base, tmp_path / "apr.safetensors", tmp_path / "from-hf")
    assert (_merged_logits(tmp_path / "from-hf", ids) - expected).abs().max().item() < 1e-4
    base_gguf = tmp_path / "base.gguf"
    merge.export_gguf(base, base_gguf)
    report = merge.merge(base_gguf, tmp_path / "apr.safetensors", tmp_path / "from-gguf")
    assert report["gguf_merged"] == report["merged"] == N_LAYERS * len(TARGETS)
    assert (_merged_logits(tmp_path / "from-gguf", ids) - expected).abs().max().item() < 1e-4
    assert (gguf_logits(tmp_path / "from-gguf.gguf", ids) - expected).abs().max().item() < 1e-4

    with safe_open(str(tmp_path / "apr.safetensors"), framework="pt") as handle:
        bare = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(bare, str(tmp_path / "bare.safetensors"))
    with pytest.raises(FlipError, match="has no lora_rank / lora_alpha in its safetensors header"):
        merge.merge(base, tmp_path / "bare.safetensors", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_gguf_base_is_converted_once_per_content(tiny, tmp_path, monkeypatch):
    """The cached HF conversion of a GGUF base is named by the file's bytes: the same GGUF copied elsewhere or touched
    (a reinstalled wheel) reuses it, a GGUF with other weights gets its own; nothing else is written to the cache."""
    import os

    from harness.models import hf_directory

    monkeypatch.setenv("FLIP_CACHE", str(tmp_path / "cache"))
    merge.export_gguf(tiny["llama"][0], tmp_path / "a" / "base.gguf")
    (tmp_path / "b").mkdir()
    shutil.copyfile(tmp_path / "a" / "base.gguf", tmp_path / "b" / "base.gguf")
    os.utime(tmp_path / "b" / "base.gguf", (1_000_000_000, 1_000_000_000))
    first = hf_directory(tmp_path / "a" / "base.gguf")
    assert hf_directory(tmp_path / "b" / "base.gguf") == first
    merge.export_gguf(tiny["qwen2"][0], tmp_path / "c" / "base.gguf")
    other = hf_directory(tmp_path / "c" / "base.gguf")
    assert other != first
    assert sorted(p.name for p in (tmp_path / "cache" / "hf").iterdir()) == sorted([first.name, other.name])


@pytest.mark.slow
def test_real_model_merge(tmp_path):
    """On the bundled SmolLM2-135M (a Q4_1 GGUF, Llama): merging a q,k,v,o rank-8 adapter via its apr file gives
    peft's logits within 1e-4, and merged.gguf (F32, base metadata and tokenizer copied) gives the merged model's.
    The forward passes run in float64: SmolLM2's logits reach ~30, where fp32 accumulation-order noise alone is
    ~1e-4, so fp32 evaluation could not tell a correct merge from a wrong one at this tolerance."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.models import SMOLLM2, hf_directory

    try:
        hf_dir = hf_directory(SMOLLM2)
    except FlipError as err:
        pytest.skip(str(err))
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # B ~ 0.02 like a briefly trained adapter (peft's random init would wreck the model)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = input_ids(model.config.vocab_size)[:1]
    expected = logits(peft_model.double(), ids)
    del peft_model, model
    remap.remap_to_apr(tmp_path / "adapter", tmp_path / "adapter.safetensors", base=SMOLLM2)
    report = merge.merge(SMOLLM2, tmp_path / "adapter.safetensors", tmp_path / "merged")
    assert report["merged"] == report["gguf_merged"] == 30 * 4
    merged = _merged_logits(tmp_path / "merged", ids, torch.float64)
    diff = (merged - expected).abs().max().item()
    print(f"smollm2-135m: merged HF vs peft (float64 forward) max |logit diff| {diff:.3g}")
    assert diff < 1e-4, f"merged SmolLM2 differs from peft by {diff}"
    gguf_diff = (gguf_logits(tmp_path / "merged.gguf", ids, torch.float64) - merged).abs().max().item()
    print(f"smollm2-135m: merged.gguf vs merged HF max |logit diff| {gguf_diff:.3g}")
    assert gguf_diff < 1e-4, f"merged.gguf differs from the merged HF model by {gguf_diff}"
    shutil.rmtree(tmp_path)


@pytest.mark.helper
def test_cli_merge(tiny, tmp_path, capsys):
    """`flip merge` writes both outputs and reports the count; a missing adapter exits 2 with a message."""
    from harness.cli import main

    base, adapter = tiny["qwen2"]
    assert main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "m"),
                 "--gguf", str(tmp_path / "x.gguf")]) == 0
    assert (tmp_path / "x.gguf").is_file() and (tmp_path / "m" / "config.json").is_file()
    assert f"merged {N_LAYERS * len(TARGETS)} of" in capsys.readouterr().out
    assert main(["merge", "--base", str(base), "--adapter", str(tmp_path / "none"), "--out", str(tmp_path / "n")]) == 2
