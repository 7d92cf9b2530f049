"""`flip remap`: rename a peft LoRA adapter to apr / llama.cpp GGUF names, and back.

peft:  base_model.model.model.layers.{L}.self_attn.q_proj.lora_A.weight [r, in], ...lora_B.weight [out, r]
apr / llama.cpp: blk.{L}.attn_q.weight.lora_a [r, in], blk.{L}.attn_q.weight.lora_b [out, r]

The HF-module -> GGUF-name table is not written here: it is gguf-py's TensorNameMap, the same table llama.cpp's
converters and transformers' GGUF loader use, for the family's GGUF architecture (contracts/families.yaml). This module
owns the one other piece of layout knowledge, the Llama q/k row permutation (see `permute_rows`; which families it
applies to is the table's `permute_qk`), and merge imports both from here.

Outputs:
  apr safetensors: tensors under GGUF names, header metadata `lora_rank` / `lora_alpha` (strings; apr silently assumes
    rank 64 / alpha 16 without them);
  llama.cpp GGUF adapter (--gguf): general.type=adapter, adapter.type=lora, adapter.lora.alpha (float32),
    general.architecture equal to the base's;
  --to peft: the inverse (apr safetensors -> peft adapter dir), so round trips can be tested.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

from harness import FlipError
from harness.atomic import atomic_path, check_out_dir, check_out_file, replaced_dir
from harness.options import add_options, force_option, option, options_of

PEFT_PREFIX = "base_model.model."
PEFT_SUFFIXES = {"lora_A": "lora_a", "lora_B": "lora_b"}
# Which families' HF -> GGUF conversion permutes q/k rows is contracts/families.yaml's permute_qk (llama.cpp's
# LlamaModel does; transformers' GGUF loader undoes it in LlamaTensorProcessor); the tensors and their head counts:
PERMUTED_TENSORS = {"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"}
META_RANK, META_ALPHA = "lora_rank", "lora_alpha"
# The largest lora_alpha accepted. Trained adapters use one to a few times the rank (this project's recipes: 32; common
# values stop at a few hundred); a value far beyond, like 1e300, is a damaged config whose alpha / r would scale the
# update past any float32 weight.
MAX_ALPHA = 65536


def checked_alpha(value, where) -> float:
    """lora_alpha as a float when it is a finite number in (0, MAX_ALPHA]; otherwise a FlipError naming its source."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not 0 < value <= MAX_ALPHA:
        raise FlipError(f"{where}: lora_alpha={value!r} is not a finite number in (0, {MAX_ALPHA}]")
    return float(value)


def check_finite(tensors: dict, where) -> None:
    """Every tensor finite: one NaN or infinite weight spreads into every merged weight it touches."""
    import torch

    bad = sorted(name for name, tensor in tensors.items() if not bool(torch.isfinite(tensor).all()))
    if bad:
        raise FlipError(f"{where}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])})")


# ---------------------------------------------------------------------------------------------------------------------
# The base model: architecture and head counts (config only, no weights)
# ---------------------------------------------------------------------------------------------------------------------

def base_config(base):
    """The base's transformers config, from its HF directory. A GGUF base goes through harness.models' cached conversion:
    reading the config straight from the GGUF parses all of its metadata (~50k tokenizer strings, ~10 s) on every call,
    the cached config.json is read in milliseconds, and train / merge need that conversion anyway."""
    from transformers import AutoConfig

    from harness.models import hf_directory, loading

    directory = hf_directory(base)
    with loading(directory / "config.json"):
        return AutoConfig.from_pretrained(directory)


def family(config):
    """The base's family (contracts/families.yaml) from its config's model_type."""
    from harness.families import of_model_type

    return of_model_type(config.model_type)


def gguf_arch_name(config) -> str:
    """The GGUF architecture name of the base (`llama`, `qwen2`, `gemma3` for model_type `gemma3_text`)."""
    return family(config).gguf_arch


def gguf_arch(model_type: str):
    """gguf-py's MODEL_ARCH for a transformers model_type, through the family table's GGUF architecture name."""
    import gguf

    from harness.families import of_model_type

    wanted = of_model_type(model_type).gguf_arch
    for arch, name in gguf.MODEL_ARCH_NAMES.items():
        if name == wanted:
            return arch
    raise FlipError(f"architecture {wanted!r} has no GGUF tensor naming in gguf-py (gguf.MODEL_ARCH_NAMES)")


def name_map(config):
    """gguf-py's HF -> GGUF tensor name table for this base (the one table; merge uses it too)."""
    import gguf

    return gguf.get_tensor_name_map(gguf_arch(config.model_type), config.num_hidden_layers)


def gguf_module_name(config, hf_module: str, table=None) -> str:
    """`model.layers.3.self_attn.q_proj` -> `blk.3.attn_q`."""
    name = (table or name_map(config)).get_name(hf_module)
    if name is None:
        raise FlipError(f"no GGUF name for module {hf_module!r} of a {config.model_type} model (gguf-py TensorNameMap)")
    return name


def hf_module_names(config) -> dict[str, str]:
    """GGUF module name -> the HF module name transformers uses for this base."""
    return {gguf_name: hf_name for gguf_name, (hf_name, _) in linear_modules(config).items()}


def linear_modules(config) -> dict[str, tuple[str, tuple[int, int]]]:
    """GGUF module name -> (HF module name, weight shape [out, in]) of every Linear of the base. gguf-py's table maps
    many HF spellings to one GGUF name, so the inverse is taken over the modules of the real architecture, built on the
    meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    table = name_map(config)
    found = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = table.get_name(module_name)
            if gguf_name is not None:
                found[gguf_name] = (module_name, tuple(module.weight.shape))
    return found


def permute_rows(weight, config, gguf_module: str, inverse: bool = False):
    """The q/k row permutation llama.cpp's convert_hf_to_gguf.py applies to Llama attention weights (families with
    permute_qk in contracts/families.yaml):
    w.reshape(n_head, 2, dim // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape), n_head = num_key_value_heads for k.
    Applied to lora_B (rows = output features) it turns an HF-layout delta B@A into the GGUF-layout delta.
    Other tensors and other families are returned unchanged. Works on torch tensors and numpy arrays."""
    heads = PERMUTED_TENSORS.get(gguf_module.rsplit(".", 1)[-1])
    if not family(config).permute_qk or heads is None:
        return weight
    n_head = getattr(config, heads)
    rest = tuple(weight.shape[1:])
    half = weight.shape[0] // n_head // 2
    if inverse:
        return weight.reshape(n_head, half, 2, *rest).swapaxes(1, 2).reshape(weight.shape)
    return weight.reshape(n_head, 2, half, *rest).swapaxes(1, 2).reshape(weight.shape)


# ---------------------------------------------------------------------------------------------------------------------
# peft adapters
# ---------------------------------------------------------------------------------------------------------------------

def read_peft(adapter_dir) -> tuple[dict, dict]:
    """(adapter_config.json, {hf_module: {"lora_A": tensor, "lora_B": tensor}}) of a saved peft LoRA adapter."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config_file, weights_file = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise FlipError(f"{adapter_dir} is not a peft adapter directory (adapter_config.json + adapter_model.safetensors)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise FlipError(f"{config_file}: not JSON ({err})") from None
    if not isinstance(config, dict) or "r" not in config or "lora_alpha" not in config:
        raise FlipError(f"{config_file}: not a LoRA adapter config (no r / lora_alpha)")
    _check_plain_lora(config, adapter_dir)
    checked_alpha(config["lora_alpha"], config_file)
    try:
        weights = load_file(weights_file)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise FlipError(f"{weights_file}: not a readable safetensors file ({err})") from None
    check_finite(weights, weights_file)
    pairs: dict[str, dict] = {}
    for key, tensor in weights.items():
        module, kind = _split_peft_key(key)
        pairs.setdefault(module, {})[kind] = tensor
    incomplete = sorted(m for m, p in pairs.items() if set(p) != set(PEFT_SUFFIXES))
    if incomplete:
        raise FlipError(f"{weights_file}: LoRA pairs without both lora_A and lora_B: {incomplete[:3]}")
    return config, pairs


def _check_plain_lora(config: dict, where) -> None:
    """apr and llama.cpp apply W + (alpha / r) B A and nothing else: refuse adapters that mean something different."""
    if config.get("peft_type", "LORA") != "LORA":
        raise FlipError(f"{where}: peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("use_rslora") or config.get("use_dora"):
        raise FlipError(f"{where}: rsLoRA / DoRA adapters scale differently from apr and llama.cpp (alpha / r)")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise FlipError(f"{where}: per-module rank_pattern / alpha_pattern cannot be expressed as one lora_rank / lora_alpha")
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise FlipError(f"{where}: trained biases / modules_to_save are not LoRA pairs and would be lost")


def _split_peft_key(key: str) -> tuple[str, str]:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> (`model.layers.0.self_attn.q_proj`, `lora_A`)."""
    parts = key.split(".")
    if not key.startswith(PEFT_PREFIX) or parts[-1] != "weight" or parts[-2] not in PEFT_SUFFIXES:
        raise FlipError(f"unexpected tensor {key!r} in a peft LoRA adapter (want ...lora_A.weight / ...lora_B.weight)")
    return ".".join(parts[:-2])[len(PEFT_PREFIX):], parts[-2]


def check_pair_shapes(pairs: dict, config) -> None:
    """Every peft pair fits its module of the base: lora_A [r, in], lora_B [out, r], one rank (else a named error,
    never a reshape or matmul error deep inside)."""
    shapes = {hf_name: shape for hf_name, shape in linear_modules(config).values()}
    for module, pair in sorted(pairs.items()):
        lora_a, lora_b = pair["lora_A"], pair["lora_B"]
        shape = shapes.get(module)
        if shape is None:
            raise FlipError(f"the base has no module {module!r} (adapter trained on another model?)")
        if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_a.shape[1] != shape[1] or lora_b.shape[0] != shape[0] \
                or lora_a.shape[0] != lora_b.shape[1]:
            raise FlipError(f"{module}: lora_A {list(lora_a.shape)} / lora_B {list(lora_b.shape)} do not fit the base's "
                            f"weight {list(shape)} (adapter trained on another model?)")


def _rank(pairs: dict, config: dict) -> int:
    ranks = {p["lora_A"].shape[0] for p in pairs.values()}
    if ranks != {int(config["r"])}:
        raise FlipError(f"adapter_config.json says r={config['r']} but the tensors have rank {sorted(ranks)}")
    return int(config["r"])


# ---------------------------------------------------------------------------------------------------------------------
# peft -> apr / GGUF layout
# ---------------------------------------------------------------------------------------------------------------------

def to_gguf_layout(pairs: dict, config) -> tuple[dict, int]:
    """{`blk.L.attn_q.weight.lora_a`: A [r, in], `...lora_b`: B [out, r]} from peft pairs, lora_B permuted where the
    GGUF base's rows are; also the number of permuted tensors."""
    table = name_map(config)
    tensors, permuted = {}, 0
    for module in sorted(pairs):
        gguf_module = gguf_module_name(config, module, table)
        lora_b = pairs[module]["lora_B"]
        moved = permute_rows(lora_b, config, gguf_module)
        permuted += moved is not lora_b
        tensors[f"{gguf_module}.weight.lora_a"] = pairs[module]["lora_A"].contiguous()
        tensors[f"{gguf_module}.weight.lora_b"] = moved.contiguous()
    return tensors, permuted


def remap_to_apr(adapter_dir, out_file, gguf_file=None, base=None) -> dict:
    """peft adapter dir -> apr safetensors (and optionally a llama.cpp GGUF adapter). Returns a report."""
    from safetensors.torch import save_file

    out_file = check_out_file(out_file, "--out", inputs=(adapter_dir, base))
    if gguf_file is not None:
        gguf_file = check_out_file(gguf_file, "--gguf", inputs=(adapter_dir, base))
        if gguf_file == out_file:
            raise FlipError(f"--gguf and --out are the same file {out_file}")
    adapter_config, pairs = read_peft(adapter_dir)
    base = base or adapter_config.get("base_model_name_or_path")
    if not base:
        raise FlipError(f"{adapter_dir}: no base model: pass --base (adapter_config.json has no base_model_name_or_path)")
    config = base_config(base)
    check_pair_shapes(pairs, config)
    rank, alpha = _rank(pairs, adapter_config), float(adapter_config["lora_alpha"])
    tensors, permuted = to_gguf_layout(pairs, config)
    metadata = {META_RANK: str(rank), META_ALPHA: _number_text(alpha), "architecture": gguf_arch_name(config)}
    with atomic_path(out_file, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        _sort_header_metadata(tmp)
    report = {"out": str(out_file), "tensors": len(tensors), "pairs": len(tensors) // 2, "rank": rank, "alpha": alpha,
              "arch": config.model_type, "permuted": permuted, "base": str(base)}
    if gguf_file is not None:
        report["gguf"] = str(write_gguf_adapter(tensors, alpha, config, gguf_file, base))
    return report


def _sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place and at the same length.

    safetensors (Rust) serialises `__metadata__` from a hash map, so the same adapter gave a differently ordered
    header, hence different bytes, on every run; the library has no option for a stable order. The header is compact
    JSON, so re-ordering keys keeps its length and every tensor offset."""
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        metadata = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(metadata.items()))} if metadata else {}) | header
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:
            raise FlipError(f"{path}: the re-ordered safetensors header grew ({len(text)} > {size} bytes)")
        handle.seek(8)
        handle.write(text.ljust(size))  # safetensors pads headers with spaces too


def _number_text(value: float) -> str:
    """16.0 -> "16" (apr parses an integer or a float), 0.5 -> "0.5"."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_gguf_adapter(tensors: dict, alpha: float, config, gguf_file, base=None) -> Path:
    """A llama.cpp LoRA adapter, laid out as llama.cpp's convert_lora_to_gguf.py writes one: numpy arrays in torch order
    (a [r, in], b [out, r]); gguf-py reverses them into ggml's ne order (a.ne = [in, r], b.ne = [r, out])."""
    import gguf

    base_shapes = _base_gguf_shapes(base) if base is not None else None
    if base_shapes is not None:
        _check_against_base(tensors, base_shapes)
    gguf_file = Path(gguf_file)
    with atomic_path(gguf_file, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf_arch_name(config))
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for name, tensor in tensors.items():
            writer.add_tensor(name, tensor.detach().to("cpu").float().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return gguf_file


def _base_gguf_shapes(base) -> dict | None:
    """{tensor name: ne} of the base when it is a GGUF (llama.cpp checks adapter names and shapes against it)."""
    import gguf

    from harness.models import resolve

    ref = resolve(base)
    if ref.gguf_file is None:
        return None
    return {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(ref.gguf_file).tensors}


def _check_against_base(tensors: dict, base_shapes: dict) -> None:
    """llama.cpp's loader rules (llama-adapter.cpp): the base tensor exists; a.ne[0] == base.ne[0] (in),
    b.ne[1] == base.ne[1] (out), a.ne[1] == b.ne[0] (rank). ne is the reverse of the torch shape."""
    for name, lora_a in tensors.items():
        if not name.endswith(".lora_a"):
            continue
        target = name[: -len(".lora_a")]
        lora_b = tensors[target + ".lora_b"]
        if target not in base_shapes:
            raise FlipError(f"{target} does not exist in the base GGUF (wrong base model?)")
        ne = base_shapes[target]
        if ne[0] != lora_a.shape[1] or ne[1] != lora_b.shape[0] or lora_a.shape[0] != lora_b.shape[1]:
            raise FlipError(f"{target}: adapter shapes a{list(lora_a.shape)} b{list(lora_b.shape)} do not fit the base ne {ne}")


# ---------------------------------------------------------------------------------------------------------------------
# apr -> peft (the inverse)
# ---------------------------------------------------------------------------------------------------------------------

def read_apr(apr_file) -> tuple[dict, int, float]:
    """(tensors, rank, alpha) of an apr safetensors; refuses a file without lora_rank / lora_alpha, because apr itself
    would silently assume rank 64 / alpha 16."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(apr_file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise FlipError(f"{apr_file} is not a readable safetensors file ({err}); an adapter is a peft directory, an "
                        "apr .safetensors or a LoRA .gguf") from None
    missing = [key for key in (META_RANK, META_ALPHA) if key not in metadata]
    if missing:
        raise FlipError(f"{apr_file} has no {' / '.join(missing)} in its safetensors header metadata; refusing to guess "
                        f"(apr would silently assume rank 64 / alpha 16). Re-run `flip remap` on the peft adapter.")
    try:
        rank, alpha = int(metadata[META_RANK]), float(metadata[META_ALPHA])
    except ValueError as err:
        raise FlipError(f"{apr_file}: unreadable lora_rank / lora_alpha metadata: {err}") from None
    if rank <= 0:
        raise FlipError(f"{apr_file}: lora_rank={rank} is not usable")
    alpha = checked_alpha(alpha, apr_file)
    check_finite(tensors, apr_file)
    shapes = tensor_rank(tensors, apr_file)
    if shapes != rank:
        raise FlipError(f"{apr_file}: its header says lora_rank={rank} but its tensors have rank {shapes}; the scale "
                        "alpha / r would be wrong (the shapes are what was trained)")
    return tensors, rank, alpha


def tensor_rank(tensors: dict, where) -> int:
    """The rank the GGUF-named lora_a [r, in] / lora_b [out, r] tensors have; one rank for all, else refused."""
    ranks = {t.shape[0] for n, t in tensors.items() if n.endswith(".lora_a") and t.dim() == 2}
    ranks |= {t.shape[1] for n, t in tensors.items() if n.endswith(".lora_b") and t.dim() == 2}
    if len(ranks) != 1 or any(t.dim() != 2 for t in tensors.values()):
        raise FlipError(f"{where}: lora_a / lora_b tensors must be 2-D with one shared rank (found {sorted(ranks)})")
    return ranks.pop()


def read_gguf_adapter(path) -> tuple[dict, int, float]:
    """(tensors, rank, alpha) of a llama.cpp LoRA adapter GGUF (as `flip remap --gguf` writes): alpha from
    adapter.lora.alpha, rank from the tensor shapes."""
    import gguf
    import numpy as np
    import torch

    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # noqa: BLE001 - gguf-py raises ValueError, KeyError, struct errors on foreign files
        raise FlipError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None

    def value(key):
        entry = reader.fields.get(key)
        return entry.contents() if entry is not None else None

    if value(gguf.Keys.General.TYPE) != "adapter" or value(gguf.Keys.Adapter.TYPE) != "lora":
        raise FlipError(f"{path} is not a LoRA adapter GGUF (general.type={value(gguf.Keys.General.TYPE)!r}, "
                        f"adapter.type={value(gguf.Keys.Adapter.TYPE)!r}): give it as --base, or give an adapter")
    alpha = checked_alpha(value(gguf.Keys.Adapter.LORA_ALPHA), f"{path}: adapter.lora.alpha")
    tensors = {t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
               for t in reader.tensors}
    check_finite(tensors, path)
    return tensors, tensor_rank(tensors, path), float(alpha)


def to_hf_layout(tensors: dict, config) -> dict:
    """GGUF-named tensors -> {hf_module: {"lora_A", "lora_B"}}, undoing the q/k permutation of lora_B. Every tensor's
    shape is checked against the base's module first (a wrong-shaped adapter is named, never a reshape error)."""
    linears = linear_modules(config)
    modules = {gguf_name: hf_name for gguf_name, (hf_name, _) in linears.items()}
    pairs: dict[str, dict] = {}
    for name, tensor in tensors.items():
        target, _, kind = name.rpartition(".")
        gguf_module = target.removesuffix(".weight")
        if kind not in ("lora_a", "lora_b") or not target.endswith(".weight") or gguf_module not in modules:
            raise FlipError(f"unexpected tensor {name!r} in an apr adapter for a {config.model_type} base")
        out_features, in_features = linears[gguf_module][1]
        if (kind == "lora_a" and tensor.shape[1] != in_features) or (kind == "lora_b" and tensor.shape[0] != out_features):
            raise FlipError(f"{name} has shape {list(tensor.shape)}, which does not fit {modules[gguf_module]} "
                            f"[{out_features}, {in_features}] of the base (adapter trained on another model?)")
        if kind == "lora_b":
            tensor = permute_rows(tensor, config, gguf_module, inverse=True)
        pairs.setdefault(modules[gguf_module], {})["lora_A" if kind == "lora_a" else "lora_B"] = tensor.contiguous()
    incomplete = sorted(m for m, p in pairs.items() if len(p) != 2)
    if incomplete:
        raise FlipError(f"apr adapter: incomplete lora_a / lora_b pairs for {incomplete[:3]}")
    return pairs


def remap_to_peft(apr_file, out_dir, base, force: bool = False) -> dict:
    """apr safetensors -> peft adapter dir (adapter_model.safetensors + adapter_config.json)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    out_dir = check_out_dir(out_dir, "remap", (), force, inputs=(apr_file, base))
    tensors, rank, alpha = read_apr(apr_file)
    config = base_config(base)
    pairs = to_hf_layout(tensors, config)
    weights = {f"{PEFT_PREFIX}{module}.{kind}.weight": pair[kind] for module, pair in sorted(pairs.items()) for kind in pair}
    targets = sorted({module.rsplit(".", 1)[-1] for module in pairs})
    lora_alpha = int(alpha) if alpha.is_integer() else alpha
    lora_config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                             task_type="CAUSAL_LM", base_model_name_or_path=str(base))
    with replaced_dir(out_dir, "remap", ()) as tmp:
        lora_config.save_pretrained(tmp)
        save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return {"out": str(out_dir), "tensors": len(weights), "rank": rank, "alpha": alpha, "arch": config.model_type,
            "targets": targets}


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class RemapOptions:
    """`flip remap`'s options, but for the adapter to remap (a positional argument)."""
    out: str = option(help="apr .safetensors to write (or the peft dir with --to peft)")
    gguf: str | None = option(None, "also write a llama.cpp LoRA adapter GGUF here")
    base: str | None = option(
        None, "smollm2-135m, gemma3-270m, an HF dir or a .gguf (default: the adapter's base_model_name_or_path)")
    to: str = option("apr", "direction: peft -> apr, or apr -> peft", choices=("apr", "peft"))
    force: bool = force_option("remap")


def add_arguments(parser) -> None:
    # A positional argument: option() makes --options only.
    parser.add_argument("adapter",
                        help="a peft adapter dir (default direction) or an apr .safetensors (--to peft)")
    add_options(parser, RemapOptions)


def main(args) -> int:
    options = options_of(RemapOptions, args)
    if options.to == "peft":
        if not options.base:
            raise FlipError("--to peft needs --base (the apr file does not name its base model)")
        if options.gguf:
            raise FlipError("--gguf is only written in the peft -> apr direction")
        report = remap_to_peft(args.adapter, options.out, options.base, force=options.force)
    else:
        report = remap_to_apr(args.adapter, options.out, gguf_file=options.gguf, base=options.base)
    print(json.dumps(report, indent=2))
    return 0
