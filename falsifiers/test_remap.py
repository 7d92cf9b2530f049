"""Falsifiers of contracts/claims/remap.yaml: peft <-> apr / llama.cpp adapter names, the Llama q/k permutation, the GGUF adapter.

Tiny random models (hidden 64, 2 layers, 4 query heads / 2 KV heads: GQA, so a k permutation with the wrong head count
shows) with a tiny byte-level BPE tokenizer (GGUF bases need tokenizer metadata; a 49k-token vocabulary would make
every GGUF read slow). Also imported by test_merge.py for the same builders.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import FlipError, merge, remap

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
RANK, ALPHA = 4, 8  # alpha != rank and alpha / rank != rank / alpha, so swapped metadata or an inverted scale shows
N_LAYERS, N_HEAD, N_KV_HEAD, HIDDEN = 2, 4, 2, 64
TEXT = ["def main():\n    print('hello world')\n", "<tool_call>{\"name\": \"file_read\"}</tool_call>",
        "The quick brown fox jumps over the lazy dog. 0123456789"] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# ---------------------------------------------------------------------------------------------------------------------
# Builders (shared with test_merge.py)
# ---------------------------------------------------------------------------------------------------------------------

def tiny_tokenizer(directory: Path):
    """A ~300-token byte-level BPE tokenizer, trained in milliseconds, saved as tokenizer.json."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, min_frequency=1, special_tokens=SPECIALS, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_base(directory: Path, arch: str, seed: int = 0) -> Path:
    """A random tiny Llama or Qwen2 with GQA, saved with its tokenizer. Larger-than-default init so logits are O(1)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer(directory)
    common = dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=N_LAYERS,
                  num_attention_heads=N_HEAD, num_key_value_heads=N_KV_HEAD, max_position_embeddings=128,
                  initializer_range=0.2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common))
    model.save_pretrained(directory)
    return directory


def tiny_adapter(base_dir: Path, out_dir: Path, targets=TARGETS, seed: int = 1) -> Path:
    """A peft LoRA adapter with random non-zero A and B (init_lora_weights=False), saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(targets), lora_dropout=0.0,
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


def input_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(7))


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def peft_logits(base_dir: Path, adapter_dir: Path, ids) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return logits(PeftModel.from_pretrained(base, adapter_dir), ids)


def gguf_logits(gguf_file: Path, ids, dtype=torch.float32) -> torch.Tensor:
    """Logits of a GGUF as transformers' GGUF loader reads it (it un-permutes Llama q/k rows)."""
    from transformers import AutoModelForCausalLM

    gguf_file = Path(gguf_file)
    return logits(AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=dtype), ids)


def converter_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, written out here independently of harness.remap."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _edited_copy(adapter: Path, dest: Path, config=None, tensors=None) -> Path:
    """A copy of a peft adapter dir with adapter_config.json keys changed (None deletes) and its tensors edited."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(adapter, dest)
    if config:
        data = json.loads((dest / "adapter_config.json").read_text())
        data = {k: v for k, v in {**data, **config}.items() if v is not None}
        (dest / "adapter_config.json").write_text(json.dumps(data))
    if tensors:
        save_file(tensors(read_peft_tensors(adapter)), str(dest / "adapter_model.safetensors"))
    return dest


def read_peft_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(adapter_dir) / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{arch: (base_dir, adapter_dir)} for llama and qwen2, built once per module."""
    root = tmp_path_factory.mktemp("tiny")
    built = {}
    for arch in ("llama", "qwen2"):
        base = tiny_base(root / f"{arch}-base", arch)
        built[arch] = (base, tiny_adapter(base, root / f"{arch}-adapter"))
    return built


# ---------------------------------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_round_trip_is_exact(tiny, tmp_path, arch):
    """peft -> apr -> peft gives bit-identical tensors and the same rank, alpha and targets."""
    base, adapter = tiny[arch]
    report = remap.remap_to_apr(adapter, tmp_path / "apr.safetensors", base=base)
    assert report["pairs"] == N_LAYERS * len(TARGETS)
    assert report["permuted"] == (2 * N_LAYERS if arch == "llama" else 0)
    remap.remap_to_peft(tmp_path / "apr.safetensors", tmp_path / "back", base=base)
    before, after = read_peft_tensors(adapter), read_peft_tensors(tmp_path / "back")
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (RANK, ALPHA, sorted(TARGETS))
    assert type(config["lora_alpha"]) is int  # an integral alpha stays an integer, as peft wrote it
    assert (config["peft_type"], config["task_type"], config["bias"], config["lora_dropout"]) == (
        "LORA", "CAUSAL_LM", "none", 0.0)
    assert config["base_model_name_or_path"] == str(base)
    assert _safetensors_metadata(tmp_path / "back" / "adapter_model.safetensors") == {"format": "pt"}


def test_apr_names_shapes_and_metadata(tiny, tmp_path):
    """The apr file holds blk.{L}.{gguf}.weight.lora_a [r, in] = A and .lora_b [out, r] = B, with lora_B of q and k
    permuted exactly as llama.cpp's converter permutes q / k weights (k with the KV head count), and lora_rank /
    lora_alpha as strings in the header metadata."""
    from safetensors import safe_open

    base, adapter = tiny["llama"]
    remap.remap_to_apr(adapter, tmp_path / "apr.safetensors", base=base)
    with safe_open(str(tmp_path / "apr.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
        apr = {key: handle.get_tensor(key) for key in handle.keys()}
    assert metadata["lora_rank"] == str(RANK) and float(metadata["lora_alpha"]) == ALPHA
    peft = read_peft_tensors(adapter)
    expected = set()
    for layer in range(N_LAYERS):
        for target, gguf_name in GGUF_NAMES.items():
            section = "self_attn" if target.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{section}.{target}"
            name = f"blk.{layer}.{gguf_name}.weight"
            expected |= {name + ".lora_a", name + ".lora_b"}
            lora_a, lora_b = peft[prefix + ".lora_A.weight"], peft[prefix + ".lora_B.weight"]
            assert apr[name + ".lora_a"].shape == (RANK, lora_a.shape[1])
            assert apr[name + ".lora_b"].shape == (lora_b.shape[0], RANK)
            assert torch.equal(apr[name + ".lora_a"], lora_a), name
            heads = {"q_proj": N_HEAD, "k_proj": N_KV_HEAD}.get(target)
            want_b = lora_b if heads is None else torch.from_numpy(converter_permute(lora_b.numpy(), heads))
            assert torch.equal(apr[name + ".lora_b"], want_b), name
    assert set(apr) == expected


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_adapter_satisfies_llama_cpp_loader(tiny, tmp_path, monkeypatch, arch):
    """The --gguf adapter passes llama.cpp's loader rules (llama-adapter.cpp) against the base GGUF: general.type
    adapter, adapter.type lora, adapter.lora.alpha float32, general.architecture equal to the base's; names end in
    .lora_a / .lora_b; pairs complete; the base tensor exists; a.ne[0] == base.ne[0], b.ne[1] == base.ne[1],
    a.ne[1] == b.ne[0] == rank."""
    import gguf

    monkeypatch.setenv("FLIP_CACHE", str(tmp_path / "cache"))  # the GGUF base's cached HF conversion
    base, adapter = tiny[arch]
    base_gguf = tmp_path / "base.gguf"
    merge.export_gguf(base, base_gguf)
    remap.remap_to_apr(adapter, tmp_path / "apr.safetensors", gguf_file=tmp_path / "adapter.gguf", base=base_gguf)
    reader = gguf.GGUFReader(tmp_path / "adapter.gguf")
    base_reader = gguf.GGUFReader(base_gguf)
    fields = reader.fields
    assert fields["general.type"].contents() == "adapter"
    assert fields["adapter.type"].contents() == "lora"
    assert fields["adapter.lora.alpha"].types == [gguf.GGUFValueType.FLOAT32]
    assert fields["adapter.lora.alpha"].contents() == ALPHA
    assert fields["general.architecture"].contents() == base_reader.fields["general.architecture"].contents() == arch
    base_ne = {t.name: [int(n) for n in t.shape] for t in base_reader.tensors}
    ne = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    assert all(name.endswith((".lora_a", ".lora_b")) for name in ne)
    targets = {name.rsplit(".", 1)[0] for name in ne}
    assert len(targets) == N_LAYERS * len(TARGETS)
    for target in targets:
        a, b = ne[target + ".lora_a"], ne[target + ".lora_b"]  # KeyError: an incomplete pair
        assert target in base_ne, f"{target} does not exist in the base"
        assert a[0] == base_ne[target][0] and b[1] == base_ne[target][1], target
        assert a[1] == b[0] == RANK, target
    assert {t.tensor_type for t in reader.tensors} <= {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}


def test_gguf_layout_adapter_matches_peft(tiny, tmp_path, monkeypatch):
    """On a Llama base in GGUF layout (q/k rows permuted, as llama.cpp's converter writes it), W_gguf + s * B_apr @ A_apr
    loaded by transformers' GGUF loader gives peft(base + adapter)'s logits within 1e-4 -- and a plain rename of
    lora_B (no permutation) visibly does not (the falsifier can fail)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    monkeypatch.setenv("FLIP_CACHE", str(tmp_path / "cache"))
    base, adapter = tiny["llama"]
    ids = input_ids(json.loads((base / "config.json").read_text())["vocab_size"])
    expected = peft_logits(base, adapter, ids)
    base_gguf = tmp_path / "base.gguf"
    merge.export_gguf(base, base_gguf)
    remap.remap_to_apr(adapter, tmp_path / "apr.safetensors", base=base_gguf)
    merge.merge(base_gguf, tmp_path / "apr.safetensors", tmp_path / "good", gguf_file=tmp_path / "good.gguf")
    good = (gguf_logits(tmp_path / "good.gguf", ids) - expected).abs().max().item()
    assert good < 1e-4, f"GGUF-layout merge differs from peft by {good}"

    # The control: the same adapter renamed without the permutation.
    with safe_open(str(tmp_path / "apr.safetensors"), framework="pt") as handle:
        metadata, renamed = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    peft = read_peft_tensors(adapter)
    for layer in range(N_LAYERS):
        for target in ("q_proj", "k_proj"):
            renamed[f"blk.{layer}.{GGUF_NAMES[target]}.weight.lora_b"] = \
                peft[f"base_model.model.model.layers.{layer}.self_attn.{target}.lora_B.weight"]
    save_file(renamed, str(tmp_path / "renamed.safetensors"), metadata=metadata)
    merge.merge(base_gguf, tmp_path / "renamed.safetensors", tmp_path / "bad", gguf_file=tmp_path / "bad.gguf")
    bad = (gguf_logits(tmp_path / "bad.gguf", ids) - expected).abs().max().item()
    print(f"GGUF-layout merge vs peft {good:.3g}; plain rename vs peft {bad:.3g}")
    assert bad > 1e-2, f"a plain rename should be visibly wrong, differs by only {bad}"


def test_fractional_alpha_survives_the_round_trip(tiny, tmp_path):
    """lora_alpha 6.5 is written as the metadata text "6.5" (not rounded) and comes back as 6.5; an integral alpha is
    written without a decimal point ("8"), which apr parses as an integer or a float."""
    from safetensors import safe_open

    base, adapter = tiny["qwen2"]
    odd = _edited_copy(adapter, tmp_path / "odd", config={"lora_alpha": 6.5})
    report = remap.remap_to_apr(odd, tmp_path / "apr.safetensors", base=base)
    with safe_open(str(tmp_path / "apr.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"lora_rank": str(RANK), "lora_alpha": "6.5", "architecture": "qwen2"}
    assert report["alpha"] == 6.5
    remap.remap_to_peft(tmp_path / "apr.safetensors", tmp_path / "back", base=base)
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text())["lora_alpha"] == 6.5
    remap.remap_to_apr(adapter, tmp_path / "int.safetensors", base=base)
    assert _safetensors_metadata(tmp_path / "int.safetensors")["lora_alpha"] == str(ALPHA)


Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


def _apr_copy(tiny, tmp_path, metadata=None, edit=None) -> Path:
    """The qwen2 adapter as an apr file, with its header metadata replaced and its tensors edited."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    base, adapter = tiny["qwen2"]
    remap.remap_to_apr(adapter, tmp_path / "good.safetensors", base=base)
    with safe_open(str(tmp_path / "good.safetensors"), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        original = handle.metadata()
    save_file(edit(tensors) if edit else tensors, str(tmp_path / "bad.safetensors"),
              metadata=original if metadata is None else metadata)
    return tmp_path / "bad.safetensors"


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


def _with(mapping: dict, key: str, value) -> dict:
    return {**mapping, key: value.clone()}  # a copy: safetensors refuses to save tensors that share memory


BAD_PEFT = {  # name: (adapter_config.json changes, tensor edit, the error must say)
    "no base model": ({"base_model_name_or_path": None}, None, r"odd: no base model: pass --base"),
    "rank differs": ({"r": 8}, None, r"says r=8 but the tensors have rank \[4\]"),
    "lone lora_A": (None, lambda t: _without(t, Q0 + ".lora_B.weight"),
                    r"adapter_model.safetensors: LoRA pairs without both lora_A and lora_B: \['model.layers.0.self_attn.q_proj'\]"),
    "foreign tensor": (None, lambda t: _with(t, "base_model.model.lm_head.weight", t[Q0 + ".lora_A.weight"]),
                       r"unexpected tensor 'base_model.model.lm_head.weight' in a peft LoRA adapter"),
    "lora bias": (None, lambda t: _with(t, Q0 + ".lora_A.bias", t[Q0 + ".lora_A.weight"][0]),
                  r"unexpected tensor '.*q_proj.lora_A.bias'"),
    "no prefix": (None, lambda t: _with(t, "model.x.lora_A.weight", t[Q0 + ".lora_A.weight"]),
                  r"unexpected tensor 'model.x.lora_A.weight'"),
    "unknown module": (None, lambda t: _with(_with(t, "base_model.model.model.layers.0.mystery.lora_A.weight",
                                                   t[Q0 + ".lora_A.weight"]),
                                             "base_model.model.model.layers.0.mystery.lora_B.weight", t[Q0 + ".lora_B.weight"]),
                       r"the base has no module 'model.layers.0.mystery' \(adapter trained on another model\?\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_PEFT))
def test_bad_peft_adapters_are_refused_naming_the_problem(tiny, tmp_path, case):
    """A damaged or foreign adapter is refused with a FlipError that names the file or tensor and what is wrong,
    before any output is written."""
    config, edit, message = BAD_PEFT[case]
    base, adapter = tiny["qwen2"]
    odd = _edited_copy(adapter, tmp_path / "odd", config=config, tensors=edit)
    with pytest.raises(FlipError, match=message):
        remap.remap_to_apr(odd, tmp_path / "x.safetensors", base=None if case == "no base model" else base)
    assert not (tmp_path / "x.safetensors").exists()
    for missing in ("adapter_config.json", "adapter_model.safetensors"):
        partial = _edited_copy(adapter, tmp_path / f"no-{missing}")
        (partial / missing).unlink()
        with pytest.raises(FlipError, match=f"no-{missing} is not a peft adapter directory"):
            remap.read_peft(partial)


BAD_APR = {  # name: (header metadata or None to keep it, tensor edit, the error must say)
    "no metadata": ({}, None, r"bad.safetensors has no lora_rank / lora_alpha in its safetensors header metadata"),
    "no alpha": ({"lora_rank": "4"}, None, r"has no lora_alpha in its"),
    "unreadable rank": ({"lora_rank": "four", "lora_alpha": "8"}, None, r"unreadable lora_rank / lora_alpha metadata"),
    "rank 0": ({"lora_rank": "0", "lora_alpha": "8"}, None, r"lora_rank=0 is not usable"),
    "alpha nan": ({"lora_rank": "4", "lora_alpha": "nan"}, None, r"lora_alpha=nan is not a finite number"),
    "lone lora_a": (None, lambda t: _without(t, "blk.0.attn_q.weight.lora_b"),
                    r"incomplete lora_a / lora_b pairs for \['model.layers.0.self_attn.q_proj'\]"),
    "not a lora tensor": (None, lambda t: _with(t, "blk.0.attn_q.weight.lora_c", t["blk.0.attn_q.weight.lora_a"]),
                          r"unexpected tensor 'blk.0.attn_q.weight.lora_c' in an apr adapter for a qwen2 base"),
    "not a linear": (None, lambda t: _with(t, "blk.0.attn_norm.weight.lora_a", t["blk.0.attn_q.weight.lora_a"]),
                     r"unexpected tensor 'blk.0.attn_norm.weight.lora_a'"),
    "no .weight": (None, lambda t: _with(t, "blk.0.attn_q.lora_a", t["blk.0.attn_q.weight.lora_a"]),
                   r"unexpected tensor 'blk.0.attn_q.lora_a'"),
}


@pytest.mark.parametrize("case", sorted(BAD_APR))
def test_bad_apr_files_are_refused_naming_the_problem(tiny, tmp_path, case):
    """An apr file without usable lora_rank / lora_alpha (apr itself would silently assume 64 / 16), with a tensor
    that is not a LoRA factor of a linear layer of the base, or with half a pair is refused, naming it."""
    metadata, edit, message = BAD_APR[case]
    bad = _apr_copy(tiny, tmp_path, metadata, edit)
    with pytest.raises(FlipError, match=message):
        remap.remap_to_peft(bad, tmp_path / "back", base=tiny["qwen2"][0])
    assert not (tmp_path / "back").exists()


def test_gguf_adapter_is_checked_against_the_base_gguf():
    """llama.cpp refuses an adapter whose tensor is missing from the base or whose shapes do not fit: so do we, before
    writing. Shapes are torch order ([r, in], [out, r]); the base's ne is ggml order ([in, out])."""
    a, b = torch.zeros(4, 64), torch.zeros(32, 4)
    fine = {"blk.0.attn_q.weight": [64, 32]}
    remap._check_against_base({"blk.0.attn_q.weight.lora_a": a, "blk.0.attn_q.weight.lora_b": b}, fine)
    with pytest.raises(FlipError, match=r"blk.0.attn_k.weight does not exist in the base GGUF"):
        remap._check_against_base({"blk.0.attn_k.weight.lora_a": a, "blk.0.attn_k.weight.lora_b": b}, fine)
    for bad_a, bad_b, base_ne in ((torch.zeros(4, 63), b, [64, 32]), (a, torch.zeros(31, 4), [64, 32]),
                                  (a, torch.zeros(32, 3), [64, 32]), (a, b, [32, 64])):
        with pytest.raises(FlipError, match=r"blk.0.attn_q.weight: adapter shapes a\[\d+, \d+\] b\[\d+, \d+\] do not fit"
                                            r" the base ne \[\d+, \d+\]"):
            remap._check_against_base({"blk.0.attn_q.weight.lora_a": bad_a, "blk.0.attn_q.weight.lora_b": bad_b},
                                      {"blk.0.attn_q.weight": base_ne})
    with pytest.raises(FlipError, match=r"architecture 'no-such-arch' is not in contracts/families.yaml"):
        remap.gguf_arch("no-such-arch")


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------

def test_cli_remap_both_directions(tiny, tmp_path, capsys):
    """`flip remap` writes the apr file (and GGUF) and prints its JSON report, the same bytes for the same adapter
    every time, `--to peft` writes it back, bad inputs exit 2 with a message and write nothing."""
    from harness.cli import main

    base, adapter = tiny["qwen2"]
    # the adapter records a base that has moved away: --base must win
    adapter = _edited_copy(adapter, tmp_path / "moved", config={"base_model_name_or_path": str(tmp_path / "gone")})
    capsys.readouterr()
    assert main(["remap", str(adapter), "--out", str(tmp_path / "a.safetensors"), "--gguf", str(tmp_path / "a.gguf"),
                 "--base", str(base)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "out": str(tmp_path / "a.safetensors"), "tensors": 2 * N_LAYERS * len(TARGETS), "pairs": N_LAYERS * len(TARGETS),
        "rank": RANK, "alpha": ALPHA, "arch": "qwen2", "permuted": 0, "base": str(base), "gguf": str(tmp_path / "a.gguf")}
    assert (tmp_path / "a.gguf").is_file()
    assert main(["remap", str(tmp_path / "a.safetensors"), "--to", "peft", "--out", str(tmp_path / "p"),
                 "--base", str(base)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "out": str(tmp_path / "p"), "tensors": 2 * N_LAYERS * len(TARGETS), "rank": RANK, "alpha": ALPHA,
        "arch": "qwen2", "targets": sorted(TARGETS)}
    assert (tmp_path / "p" / "adapter_config.json").is_file()
    assert main(["remap", str(adapter), "--to", "apr", "--out", str(tmp_path / "b.safetensors"), "--base", str(base)]) == 0
    assert (tmp_path / "b.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()
    for again in range(5):  # safetensors orders header metadata by a hash map: one lucky repeat proves nothing
        remap.remap_to_apr(adapter, tmp_path / f"again{again}.safetensors", base=base)
        assert (tmp_path / f"again{again}.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["remap", str(tmp_path / "a.safetensors"), "--to", "peft", "--out", str(tmp_path / "q")]) == 2
    assert capsys.readouterr().err == \
        "flip remap: error: --to peft needs --base (the apr file does not name its base model)\n"
    assert main(["remap", str(tmp_path / "a.safetensors"), "--to", "peft", "--out", str(tmp_path / "q"),
                 "--base", str(base), "--gguf", str(tmp_path / "q.gguf")]) == 2
    assert capsys.readouterr().err == "flip remap: error: --gguf is only written in the peft -> apr direction\n"
    for bad, says in (([str(adapter)], "the following arguments are required: --out"),
                      ([str(adapter), "--out", "x", "--to", "gguf"], "argument --to: invalid choice")):
        with pytest.raises(SystemExit) as exit_info:
            main(["remap", *bad])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "q").exists() and not (tmp_path / "q.gguf").exists()
    (tmp_path / "plain").mkdir()  # a directory that is not an adapter (an output inside it would be refused first)
    assert main(["remap", str(tmp_path / "plain"), "--out", str(tmp_path / "x.safetensors"), "--base", str(base)]) == 2
    assert "not a peft adapter directory" in capsys.readouterr().err


NOT_PLAIN_LORA = {  # adapter_config.json changes apr / llama.cpp cannot express as W + (alpha / r) B A
    "rslora": ({"use_rslora": True}, "rsLoRA"),
    "dora": ({"use_dora": True}, "DoRA"),
    "rank_pattern": ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
    "alpha_pattern": ({"alpha_pattern": {"q_proj": 8}}, "alpha_pattern"),
    "bias": ({"bias": "lora_only"}, "biases"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    "peft_type": ({"peft_type": "IA3"}, "not LORA"),
}


@pytest.mark.parametrize("case", sorted(NOT_PLAIN_LORA))
def test_refuses_adapters_that_are_not_plain_lora(tiny, tmp_path, case):
    """rsLoRA scales by alpha / sqrt(r), DoRA rescales columns, patterns give per-module ranks, biases and saved modules
    are not LoRA pairs: apr and llama.cpp would silently apply something else, so each is refused with its reason."""
    import shutil

    change, reason = NOT_PLAIN_LORA[case]
    base, adapter = tiny["qwen2"]
    shutil.copytree(adapter, tmp_path / "odd")
    config = json.loads((tmp_path / "odd" / "adapter_config.json").read_text())
    (tmp_path / "odd" / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(FlipError, match=reason):
        remap.remap_to_apr(tmp_path / "odd", tmp_path / "x.safetensors", base=base)
