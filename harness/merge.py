"""`flip merge`: fold a LoRA adapter into its base, W + (alpha / r) * B @ A in fp32, and write
  DIR/        a runnable Hugging Face directory (model.safetensors, config, generation config, tokenizer);
  DIR.gguf    (default: a sibling of DIR, so RUN/merged/ gets RUN/merged.gguf) the same model as an F32 GGUF that
              transformers' GGUF loader and llama.cpp load.

The adapter is a peft adapter directory or an apr safetensors written by `flip remap` (rank / alpha from its header
metadata; a file without them is refused, since apr itself would silently assume rank 64 / alpha 16).

merged.gguf is F32, not F16: F16 rounds every weight to ~11 bits (relative error ~5e-4), which moves the logits of even
a 135M model by far more than the 1e-4 this project checks; F32 holds the dequantized base weights exactly.
  GGUF base (e.g. smollm2-135m): its key/value metadata (tokenizer.* included) is copied, every tensor is dequantized
    to F32, and the adapted ones get the delta in GGUF layout (lora_B q/k rows permuted by harness.remap).
  HF-directory base: the architecture metadata comes from config.json, the tokenizer from tokenizer.json (GPT-2 style
    BPE, read with gguf-py's BpeVocab / SpecialVocab) and the tensors from the merged model (q/k rows permuted on Llama).
    A tokenizer that is not byte-level BPE (SentencePiece) is not converted: the GGUF is skipped with a message.
Tensor names and the q/k permutation come from harness.remap (gguf-py's TensorNameMap), never from a table here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness import FlipError, FlipFailure
from harness.atomic import atomic_path, check_out_dir, check_out_file, replaced_dir
from harness import remap
from harness.options import MODEL_HELP, add_options, force_option, option, options_of


# ---------------------------------------------------------------------------------------------------------------------
# The adapter, in both layouts
# ---------------------------------------------------------------------------------------------------------------------

def load_adapter(adapter, config) -> dict:
    """{"hf": {hf_module: {"lora_A", "lora_B"}}, "gguf": {gguf tensor name: tensor}, "rank", "alpha", "kind"} for a peft
    adapter dir, an apr safetensors file or a llama.cpp adapter GGUF."""
    path = Path(adapter)
    if path.is_dir():
        adapter_config, hf_pairs = remap.read_peft(path)
        remap.check_pair_shapes(hf_pairs, config)
        rank, alpha = remap._rank(hf_pairs, adapter_config), float(adapter_config["lora_alpha"])
        gguf_tensors, _ = remap.to_gguf_layout(hf_pairs, config)
        kind = "peft"
    elif path.is_file() and _magic(path) == b"GGUF":
        gguf_tensors, rank, alpha = remap.read_gguf_adapter(path)
        hf_pairs = remap.to_hf_layout(gguf_tensors, config)
        kind = "gguf"
    elif path.is_file():
        gguf_tensors, rank, alpha = remap.read_apr(path)
        hf_pairs = remap.to_hf_layout(gguf_tensors, config)
        kind = "apr"
    else:
        raise FlipError(f"adapter {adapter} not found (give a peft adapter directory or an apr .safetensors)")
    return {"hf": hf_pairs, "gguf": gguf_tensors, "rank": rank, "alpha": alpha, "kind": kind}


def _magic(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(4)


def lora_delta(lora_a, lora_b, scale: float):
    """scale * B @ A in fp32 (bf16 / fp16 adapters would otherwise lose the small delta against W)."""
    return scale * (lora_b.float() @ lora_a.float())


def default_gguf_path(out_dir) -> Path:
    """RUN/merged -> RUN/merged.gguf."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".gguf")


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face layout
# ---------------------------------------------------------------------------------------------------------------------

def merge_into_model(model, hf_pairs: dict, scale: float) -> tuple[int, float]:
    """Add the delta to every adapted Linear weight of an fp32 model, in place. (merged count, max |delta|)."""
    import torch

    max_abs = 0.0
    with torch.no_grad():
        for module_name in sorted(hf_pairs):
            try:
                weight = model.get_submodule(module_name).weight
            except AttributeError:
                raise FlipError(f"the base has no module {module_name!r} (adapter trained on another model?)") from None
            delta = lora_delta(hf_pairs[module_name]["lora_A"], hf_pairs[module_name]["lora_B"], scale)
            if delta.shape != weight.shape:
                raise FlipError(f"{module_name}: delta {list(delta.shape)} does not fit weight {list(weight.shape)}")
            weight += delta.to(weight.dtype)
            max_abs = max(max_abs, float(delta.abs().max()))
    return len(hf_pairs), max_abs


def check_merged_finite(model) -> None:
    """A merged weight that came out NaN or infinite (finite inputs can still overflow float32) makes no model: the
    merge fails (exit 1) before anything is written."""
    import torch

    bad = sorted(name for name, tensor in model.state_dict().items() if not bool(torch.isfinite(tensor).all()))
    if bad:
        raise FlipFailure(f"the merge produced {len(bad)} non-finite tensor(s) ({', '.join(bad[:3])}); nothing was "
                          "written")


def _unique_tensor_count(model) -> int:
    return len(model.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# GGUF from a GGUF base
# ---------------------------------------------------------------------------------------------------------------------

def _copy_metadata(reader, writer) -> None:
    """Every key/value of the base except those the writer owns or that no longer hold (file type: now all F32)."""
    import gguf

    skipped = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE, gguf.Keys.General.QUANTIZATION_VERSION}
    for field in reader.fields.values():
        if field.name in skipped or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def merge_gguf_base(base_gguf, gguf_tensors: dict, scale: float, arch: str, out_file) -> int:
    """Dequantize every tensor of the base GGUF to F32 and add the GGUF-layout delta to the adapted ones."""
    import gguf
    import numpy as np
    import torch

    reader = gguf.GGUFReader(base_gguf)
    targets = {name[: -len(".lora_a")] for name in gguf_tensors if name.endswith(".lora_a")}
    missing = targets - {t.name for t in reader.tensors}
    if missing:
        raise FlipError(f"adapter tensors {sorted(missing)[:3]} do not exist in the base GGUF {base_gguf}")
    merged = 0
    with atomic_path(out_file, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        _copy_metadata(reader, writer)
        for tensor in reader.tensors:
            weight = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            if tensor.name in targets:
                delta = lora_delta(gguf_tensors[tensor.name + ".lora_a"], gguf_tensors[tensor.name + ".lora_b"], scale)
                weight = (torch.from_numpy(weight) + delta).numpy()
                merged += 1
            writer.add_tensor(tensor.name, weight)
        _finish(writer)
    return merged


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------------------------------------------------------------
# GGUF from a Hugging Face model
# ---------------------------------------------------------------------------------------------------------------------

def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _add_architecture(writer, config, name: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _add_bpe_tokenizer(writer, tokenizer_dir: Path, vocab_size: int) -> None:
    """tokenizer.ggml.* for a byte-level BPE tokenizer (SmolLM2, Qwen2.5), as convert_hf_to_gguf.py writes them; ids
    past the tokenizer's own (embedding rows padded for speed) become unused [PADn] tokens, as there."""
    import gguf
    from gguf.vocab import BpeVocab, SpecialVocab

    try:
        vocab = BpeVocab(tokenizer_dir)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise FlipError(f"the tokenizer in {tokenizer_dir} is not a byte-level BPE tokenizer gguf-py can convert ({err})") from None
    tokens, types = [], []
    for text, _score, token_type in vocab.all_tokens():
        tokens.append(text if isinstance(text, str) else text.decode("utf-8"))
        types.append(token_type)
    if len(tokens) > vocab_size:
        raise FlipError(f"the tokenizer has {len(tokens)} tokens, more than the model's vocab_size {vocab_size}")
    for index in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{index}]")
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")  # llama.cpp's pre-tokenizer id; convert_hf_to_gguf.py guesses it by hashing
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def write_gguf_from_hf(model, tokenizer_dir, out_file, name: str = "merged") -> int:
    """An F32 GGUF of a (merged) transformers model: names from gguf-py's table, q/k rows permuted on Llama. Only for
    families whose GGUF this writer knows (contracts/families.yaml gguf_tokenizer: gpt2), else a FlipError."""
    import gguf

    config = model.config
    family = remap.family(config)
    if family.gguf_tokenizer != "gpt2":
        raise FlipError(f"no GGUF writer for an HF-directory {family.name} base (contracts/families.yaml); "
                        "merge into its GGUF base to get a merged GGUF")
    table = remap.name_map(config)
    count = 0
    with atomic_path(out_file, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), remap.gguf_arch_name(config))
        _add_architecture(writer, config, name)
        _add_bpe_tokenizer(writer, Path(tokenizer_dir), config.vocab_size)
        for hf_name, tensor in model.state_dict().items():
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # tied: llama.cpp and transformers both reuse token_embd when output.weight is absent
            module, _, suffix = hf_name.rpartition(".")
            gguf_module = remap.gguf_module_name(config, module, table)
            weight = remap.permute_rows(tensor.detach().float().cpu().numpy(), config, gguf_module)
            writer.add_tensor(f"{gguf_module}.{suffix}", weight)
            count += 1
        _finish(writer)
    return count


def export_gguf(hf_dir, out_file) -> int:
    """An HF model directory as an F32 GGUF (no adapter): used to build GGUF bases, e.g. in the falsifiers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    return write_gguf_from_hf(model, hf_dir, out_file, name=Path(hf_dir).name)


# ---------------------------------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------------------------------

def check_outputs(ref, adapter, out_dir, gguf_file, force: bool = False) -> tuple[Path, Path]:
    """(out_dir, gguf_file), validated before any work: the directory is new, empty or an earlier merge's (or --force);
    the GGUF is neither an input (the base GGUF, the adapter) nor inside the directory that replaces --out."""
    out_dir = check_out_dir(out_dir, "merge", (), force, inputs=(ref.path, adapter))
    gguf_file = check_out_file(gguf_file if gguf_file is not None else default_gguf_path(out_dir), "--gguf",
                               inputs=(ref.path, adapter))
    if gguf_file.parent == out_dir or out_dir in gguf_file.parents:
        raise FlipError(f"--gguf {gguf_file} is inside --out {out_dir}, which the merge replaces; put it elsewhere")
    if not Path(adapter).exists():
        raise FlipError(f"adapter {adapter} not found (give a peft adapter directory or an apr .safetensors)")
    return out_dir, gguf_file


def merge(base, adapter, out_dir, gguf_file=None, force: bool = False) -> dict:
    """Merge `adapter` into `base`; write the HF dir `out_dir` and `gguf_file` (default `<out_dir>.gguf`). Report."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import check, hf_directory, loading

    ref = check(base)
    out_dir, gguf_file = check_outputs(ref, adapter, out_dir, gguf_file, force)
    config = remap.base_config(ref)
    loaded = load_adapter(adapter, config)
    scale = loaded["alpha"] / loaded["rank"]
    hf_dir = hf_directory(ref)
    with loading(f"the model in {hf_dir}"):
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    merged, max_abs = merge_into_model(model, loaded["hf"], scale)
    check_merged_finite(model)
    with replaced_dir(out_dir, "merge", ()) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(hf_dir).save_pretrained(tmp)
    report = {"merged": merged, "total": _unique_tensor_count(model), "rank": loaded["rank"], "alpha": loaded["alpha"],
              "scale": scale, "adapter": loaded["kind"], "arch": config.model_type, "max_abs_delta": max_abs,
              "paths": {"hf": str(out_dir), "gguf": str(gguf_file)}}
    if ref.gguf_file is not None:
        report["gguf_merged"] = merge_gguf_base(ref.gguf_file, loaded["gguf"], scale, remap.gguf_arch_name(config),
                                                  gguf_file)
    else:
        try:
            write_gguf_from_hf(model, hf_dir, gguf_file, name=f"{out_dir.name}")
            report["gguf_merged"] = merged
        except FlipError as err:
            report["paths"]["gguf"] = None
            report["gguf_skipped"] = str(err)
    return report


@dataclass(kw_only=True)
class MergeOptions:
    """`flip merge`'s options."""
    base: str = option(help="base model: " + MODEL_HELP)
    adapter: str = option(help="a peft adapter dir or an apr .safetensors from `flip remap`")
    out: str = option(help="the merged Hugging Face directory to write")
    gguf: str | None = option(None, "the merged GGUF to write (default: <OUT>.gguf beside OUT); never the base")
    force: bool = force_option("merge")


def add_arguments(parser) -> None:
    add_options(parser, MergeOptions)


def main(args) -> int:
    options = options_of(MergeOptions, args)
    report = merge(options.base, options.adapter, options.out, gguf_file=options.gguf, force=options.force)
    print(json.dumps(report, indent=2))
    if report["paths"]["gguf"] is None:
        print(f"flip merge: no GGUF written: {report['gguf_skipped']}")
    print(f"flip merge: merged {report['merged']} of {report['total']} tensors (scale {report['scale']:g})")
    return 0
