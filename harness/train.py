"""`flip train`: LoRA SFT of a student model on an exported dataset (docs/apr-code.md §4).

Each sample is rendered through the tokenizer's own chat template (ChatML for SmolLM2 / Qwen2.5); the loss covers the
response tokens and the closing end-of-turn token only. Too-long samples are dropped and counted, never truncated:
a cut sample would train on a partial response or on nothing at all (the failure of the reference trainer).

The training loop is plain torch (AdamW, warmup + cosine, grad clipping), not transformers.Trainer, because:
- the loss only needs logits at the trainable positions: we pass them as `logits_to_keep`, so the lm_head (a third of
  a 135M model's compute at these lengths) runs on ~40 response tokens instead of ~300; Trainer/TRL project every
  position and, in TRL, also compute entropy / token accuracy over the whole vocabulary each step;
- the data order is a pure function of (seed, epoch, rank), so resume needs no sampler state and a resumed run is
  bit-identical to an uninterrupted one on CPU;
- the same loop runs under `torchrun` (DDP) with rank-strided sharding and rank-0-only writes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import FlipError, progress_bar, read_jsonl
from harness.atomic import atomic_path, claim_dir, replaced_dir, write_text
from harness.models import DTYPES
from harness.options import MODEL_HELP, add_options, device_option, force_option, option, options_of, positive_or_none
from harness.prompt import SAMPLE_TOKENS
from harness.remap import MAX_ALPHA

IGNORE = -100  # the label value torch's cross_entropy skips
CHECKPOINT = "checkpoint"
# Config fields that do not change the trained weights: a checkpoint made with other values still resumes.
NOT_IN_FINGERPRINT = ("out", "device", "eval_every", "save_every", "val_samples", "force", "allow_prose")
# What `flip train` writes into --out (a directory holding anything else is refused unless --force).
OUTPUT_NAMES = ("adapter_model.safetensors", "adapter_config.json", CHECKPOINT, "metrics.jsonl", "loss.png",
                "train_summary.json", ".adapter.*")


# A recipe (contracts/recipes.yaml) names its fields like flip run's options; where that differs from TrainConfig:
RECIPE_FIELD_NAMES = {"steps": "max_steps"}
RECIPE_DATA_KEYS = ("mode",)  # which exported dataset a recipe trains on: chosen by the caller, not by TrainConfig


@dataclass
class TrainConfig:
    data: Path = option(help="SFT jsonl (instruction, response, system, metadata)")
    base: str = option(help=MODEL_HELP)
    out: Path = option(help="output directory (adapter, metrics, checkpoint)")
    rank: int = option(16, "LoRA rank r")
    alpha: int = option(32, "LoRA alpha (the update is scaled by alpha / r)")
    targets: tuple[str, ...] = option(("q_proj", "v_proj"), "comma-separated LoRA target module names")
    lr: float = option(2e-4, "peak learning rate (AdamW; warmup, then cosine to 0)")
    epochs: int = option(3, "passes over the training samples (unless --max-steps)")
    max_steps: int | None = option(None, "optimizer steps (at least 1); overrides epochs", type=int)
    batch_size: int = option(1, "samples per micro-batch (per process)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    seed: int = option(42, "seed of the data order, the split and LoRA's initialisation")
    val_fraction: float = option(0.2, "of training trajectories, held out for the validation loss")
    # Every validation sample costs a full forward pass at each eval: the whole split of the default export (~300
    # samples) took about 3 minutes per eval on 2 cores, more than the steps between evals.
    val_samples: int | None = option(
        32, "validation samples the loss is measured on, a fixed seeded subset (0: all of them)", type=positive_or_none)
    warmup: float = option(0.1, "fraction of steps, then cosine")
    grad_clip: float = option(1.0, "gradient norm clip")
    max_length: int = option(SAMPLE_TOKENS, "tokens; longer samples are dropped and counted, never truncated")
    pack: bool = option(False, "train each trajectory's samples as prefix trees: the prompt tokens they share are "
                               "computed once and every sample's loss is unchanged; a micro-batch is then trees, "
                               "not samples")
    # A tree's attention is tokens x tokens: the cap bounds its memory (training SmolLM2-135M on CPU over trees of the
    # default export, ~1,200 tokens on average, peaked at 5.4 GB RSS).
    pack_tokens: int = option(2048, "most tokens in one packed tree (at least --max-length)")
    device: str = device_option()
    # The base's frozen weights and the matmuls; the LoRA weights and the optimizer stay float32 either way (peft
    # keeps an adapter of a bf16 base in fp32), and so does the loss.
    dtype: str = option("auto", "of the frozen base: auto (bfloat16 where the hardware computes it natively: CUDA, "
                                "a CPU with avx512_bf16 or AMX; float32 elsewhere), float32, bfloat16", choices=DTYPES)
    eval_every: int | None = option(None, "steps (default: at the end)", type=positive_or_none)
    save_every: int | None = option(50, "checkpoint steps", type=positive_or_none)
    # An auto-resume of a matching checkpoint happens anyway; --resume makes a missing one an error.
    resume: bool = option(False, "require resuming from OUT/checkpoint (a matching checkpoint is resumed anyway)")
    allow_prose: bool = option(
        False, "train on samples whose response is not one valid call (counted as prose in the summary)")
    force: bool = force_option("train")

    def __post_init__(self):
        self.data, self.out, self.targets = Path(self.data), Path(self.out), tuple(self.targets)
        for name in ("rank", "alpha", "epochs", "batch_size", "grad_accum", "max_length", "val_samples", "pack_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FlipError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise FlipError(f"--max-steps must be at least 1, not {self.max_steps}")
        if self.alpha > MAX_ALPHA:
            raise FlipError(f"--alpha must be at most {MAX_ALPHA}, not {self.alpha}")
        if not 0 <= self.val_fraction < 1:
            raise FlipError("--val-fraction must be in [0, 1)")
        if not 0 <= self.warmup < 1:
            raise FlipError("--warmup must be in [0, 1)")
        if not self.targets:
            raise FlipError("--targets names no module")
        if self.pack and self.pack_tokens < self.max_length:
            raise FlipError("--pack-tokens must be at least --max-length: a tree must hold any one sample")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FlipError(f"--{name.replace('_', '-')} must be a positive number, not {value}")

    @classmethod
    def from_recipe(cls, recipe: dict, **given) -> TrainConfig:
        """A recipe of contracts/recipes.yaml as the config it trains: its training fields (`steps` is max_steps; its
        `mode` picks the dataset, not a training option), then `given` (data, base, out, overrides). Every recipe
        value is checked here, by __post_init__, like a command-line value."""
        known = set(cls.__dataclass_fields__)
        values = {}
        for key, value in recipe.items():
            if key in RECIPE_DATA_KEYS:
                continue
            name = RECIPE_FIELD_NAMES.get(key, key)
            if name not in known:
                raise FlipError(f"recipe key {key!r} is not a training option (flip train --help lists them)")
            values[name] = tuple(value) if isinstance(value, list) else value
        return cls(**{**values, **given})


# --------------------------------------------------------------------------------------------------------------------
# Data: samples, the trajectory split, the chat-template encoding with its loss mask
# --------------------------------------------------------------------------------------------------------------------


def response_kind(sample: dict) -> str:
    """"call": exactly one closed <tool_call>, valid in the sample's dialect, and nothing else of the tag; "final": a final answer
    (metadata.final) holding no call tag at all; "prose": anything else, which apr-code would not run."""
    from harness.contracts import dialect_of_system
    from harness.toolcall import CLOSE, OPEN, call_errors, parse_tool_calls

    response = sample["response"]
    if (sample.get("metadata") or {}).get("final") is True and OPEN not in response and CLOSE not in response:
        return "final"
    calls = parse_tool_calls(response)
    # valid in the dialect the sample was exported in: its system prompt names the field names it trains
    valid = not call_errors(calls[0], dialect_of_system(sample.get("system"))) if len(calls) == 1 else False
    if len(calls) == 1 and calls[0].closed and valid and response.count(OPEN) == 1:
        return "call"
    return "prose"


def load_samples(path: Path, allow_prose: bool = False) -> tuple[list[dict], int]:
    """(samples, how many are prose). A sample whose response is neither one valid call nor a final answer is refused
    (naming its line) unless allow_prose: a dataset of Markdown answers would train the prose the student must lose."""
    samples, prose = [], 0
    for number, sample in read_jsonl(path, "dataset"):
        for key in ("instruction", "response"):
            if not isinstance(sample.get(key), str) or not sample[key].strip():
                raise FlipError(f"{path}:{number}: `{key}` must be a non-empty string")
        if response_kind(sample) == "prose":
            if not allow_prose:
                raise FlipError(f"{path}:{number}: the response is not exactly one valid <tool_call> (nor a final "
                                "answer marked metadata.final); pass --allow-prose to train on such samples")
            prose += 1
        samples.append(sample)
    if not samples:
        raise FlipError(f"dataset {path} holds no sample")
    return samples, prose


def trajectory_of(sample: dict, index: int) -> str:
    """metadata.trajectory, or a key of its own: a sample without one is its own trajectory."""
    trajectory = (sample.get("metadata") or {}).get("trajectory")
    return f"t:{trajectory}" if trajectory not in (None, "") else f"sample:{index}"


def split_by_trajectory(samples: list[dict], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices). Whole trajectories go to one side: steps of one trajectory share their task and
    history, so a sample-level split would validate on near-copies of training samples. At least one trajectory
    always trains."""
    keys = sorted({trajectory_of(sample, i) for i, sample in enumerate(samples)})
    random.Random(seed).shuffle(keys)
    n_val = min(round(len(keys) * val_fraction), len(keys) - 1)
    val_keys = set(keys[:n_val])
    train, val = [], []
    for i, sample in enumerate(samples):
        (val if trajectory_of(sample, i) in val_keys else train).append(i)
    return train, val


def messages_of(sample: dict) -> list[dict]:
    messages = [{"role": "system", "content": sample["system"]}] if sample.get("system") else []
    messages.append({"role": "user", "content": sample["instruction"]})
    return messages


def end_of_turn_id(tokenizer) -> int:
    """The token that closes a reply: the tokenizer's family's end of turn (contracts/families.yaml), else its eos."""
    from harness.families import of_tokenizer

    end_of_turn = of_tokenizer(tokenizer).end_of_turn
    token_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    if token_id is None or token_id == tokenizer.unk_token_id:
        token_id = tokenizer.eos_token_id
    if token_id is None:
        raise FlipError(f"the tokenizer has neither {end_of_turn} nor an eos token: cannot find the end of a turn")
    return token_id


def _ids(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt)
    return list(rendered["input_ids"])


def encode(sample: dict, tokenizer, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) through the tokenizer's chat template, or None when the sample does not fit max_length.

    labels are IGNORE everywhere but the response tokens and the end-of-turn token that closes them: the prompt is
    rendered alone with add_generation_prompt=True and must be a token prefix of the full render (else we fail
    rather than guess the span). Whatever the template appends after the end-of-turn token (ChatML's newline) is
    cut: it carries no loss and, causally, changes no earlier logit.
    """
    prompt = _ids(tokenizer, messages_of(sample), generation_prompt=True)
    full = _ids(tokenizer, messages_of(sample) + [{"role": "assistant", "content": sample["response"]}], False)
    if full[:len(prompt)] != prompt:
        raise FlipError(
            "the chat template's prompt (add_generation_prompt=True) is not a token prefix of the full conversation; "
            "the response span cannot be located, so this tokenizer's template is not supported for training")
    eot = end_of_turn_id(tokenizer)
    ends = [i for i in range(len(prompt), len(full)) if full[i] == eot]
    if not ends:
        raise FlipError("the chat template does not close the assistant turn with an end-of-turn token")
    stop = ends[-1] + 1
    if stop > max_length:
        return None  # dropped and counted by the caller: truncation would cut the response
    input_ids = full[:stop]
    labels = [IGNORE] * len(prompt) + input_ids[len(prompt):]
    assert any(label != IGNORE for label in labels), "a sample with zero trainable tokens"
    return input_ids, labels


def encode_all(samples: list[dict], indices: list[int], tokenizer, max_length: int):
    """(encoded samples, dropped indices)."""
    kept, dropped = [], []
    for index in indices:
        encoded = encode(samples[index], tokenizer, max_length)
        if encoded is None:
            dropped.append(index)
        else:
            kept.append(encoded)
    return kept, dropped


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input_ids, attention_mask, labels (padding carries IGNORE labels)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(labs)] = torch.tensor(labs)
        mask[row, :len(ids)] = 1
    return input_ids, mask, labels


# --------------------------------------------------------------------------------------------------------------------
# Prefix trees (--pack): the samples of one trajectory share their system prompt, task and oldest observations
# --------------------------------------------------------------------------------------------------------------------
# Step k+1's prompt repeats step k's history, so a trajectory's samples are mostly one long shared prefix: a trie of
# their token sequences holds each shared token once (about half the tokens of the default export). Each token sits
# at the position it has in its samples and attends only to its ancestors, so every logit, and so every sample's
# loss, is the one its own sequence would give. transformers takes the tree as a custom 4D attention mask.


@dataclass
class Tree:
    """Encoded samples merged into one trie, in sample order."""
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # the token before this one in its samples; -1 for a root
    sources: list[int] = field(default_factory=list)  # per trainable token of each sample: the node predicting it
    targets: list[int] = field(default_factory=list)  # ... and the token (a token shared by two samples counts twice)
    samples: int = 0
    children: dict = field(default_factory=dict, repr=False)  # (parent, token) -> node

    def new_tokens(self, ids: list[int]) -> int:
        """How many nodes adding `ids` would create."""
        node = -1
        for depth, token in enumerate(ids):
            node = self.children.get((node, token))
            if node is None:
                return len(ids) - depth
        return 0

    def add(self, ids: list[int], labels: list[int]) -> None:
        node, path = -1, []
        for position, token in enumerate(ids):
            child = self.children.get((node, token))
            if child is None:
                child = self.children[(node, token)] = len(self.input_ids)
                self.input_ids.append(token)
                self.positions.append(position)
                self.parents.append(node)
            node = child
            path.append(node)
        for t in range(1, len(ids)):
            if labels[t] != IGNORE:
                self.sources.append(path[t - 1])
                self.targets.append(ids[t])
        self.samples += 1


def pack_trees(encoded: list, keys: list[str], pack_tokens: int) -> list[Tree]:
    """One tree per trajectory key (in order of first appearance), a new one whenever the next sample would take it
    past pack_tokens (--pack-tokens: the cap of one tree, not a sample's budget, --max-length)."""
    trees: list[Tree] = []
    open_tree: dict[str, Tree] = {}
    for (ids, labels), key in zip(encoded, keys):
        tree = open_tree.get(key)
        if tree is None or len(tree.input_ids) + tree.new_tokens(ids) > pack_tokens:
            tree = open_tree[key] = Tree()
            trees.append(tree)
        tree.add(ids, labels)
    return trees


def collate_trees(trees: list[Tree], dtype):
    """A micro-batch of trees as one forest row: (input_ids [1, N], position_ids [1, N], mask [1, 1, N, N], sources [K],
    targets [K]); the mask is additive in `dtype` (eager attention adds it to the scores; sdpa takes it as it is)."""
    import torch

    ids, positions, parents, sources, targets = [], [], [], [], []
    for tree in trees:
        offset = len(ids)
        ids += tree.input_ids
        positions += tree.positions
        parents += [p + offset if p >= 0 else -1 for p in tree.parents]
        sources += [s + offset for s in tree.sources]
        targets += tree.targets
    allowed = torch.zeros((len(ids), len(ids)), dtype=torch.bool)
    for node, parent in enumerate(parents):  # parents come before their children: a node sees its parent's ancestors
        if parent >= 0:
            allowed[node] = allowed[parent]
        allowed[node, node] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return (torch.tensor([ids]), torch.tensor([positions]), mask[None, None], torch.tensor(sources),
            torch.tensor(targets))


def tree_loss_sum(model, input_ids, position_ids, mask, sources, targets):
    """(sum of the cross-entropy over the forest's trainable tokens, their count): what loss_sum gives for the same
    samples one by one."""
    import torch
    import torch.nn.functional as F

    keep, rows = torch.unique(sources, return_inverse=True)  # the nodes whose logits predict a trainable token
    logits = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, logits_to_keep=keep,
                   use_cache=False).logits[0]
    total = F.cross_entropy(logits[rows].float(), targets, reduction="sum")
    return total, int(targets.numel())


# --------------------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------------------


def loss_sum(model, input_ids, attention_mask, labels):
    """(sum of the cross-entropy over the trainable tokens, their count).

    Position t's logits predict token t+1, so the positions to project are those whose NEXT label is trainable;
    only those go through the lm_head (`logits_to_keep` with an index tensor).
    """
    import torch.nn.functional as F

    targets = labels[:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)  # positions any row needs
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False).logits
    kept_targets = targets[:, keep]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), kept_targets.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total, int((kept_targets != IGNORE).sum())


def mean_loss(model, input_ids, attention_mask, labels) -> float:
    """The mean cross-entropy over the trainable tokens of one batch (what training minimises)."""
    total, count = loss_sum(model, input_ids, attention_mask, labels)
    return float(total) / count


# --------------------------------------------------------------------------------------------------------------------
# Distributed set-up (torchrun), data order
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str):
    """(Dist, torch device). Under torchrun: gloo on CPU, nccl on CUDA, one GPU per local rank."""
    import torch
    import torch.distributed as dist

    from harness.models import pick_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        return Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank), device


def epoch_micro_batches(n: int, epoch: int, seed: int, dist: Dist, batch_size: int) -> list[list[int]]:
    """This rank's micro-batches (lists of train indices) for one epoch: a permutation seeded by (seed, epoch), padded
    by wrapping so every rank gets as many (as DistributedSampler does), strided by rank."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    per_rank = math.ceil(n / dist.world)
    order = (order * math.ceil(per_rank * dist.world / n))[:per_rank * dist.world]
    mine = order[dist.rank::dist.world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def steps_per_epoch(n: int, dist: Dist, batch_size: int, grad_accum: int) -> int:
    micro = math.ceil(math.ceil(n / dist.world) / batch_size)
    return math.ceil(micro / grad_accum)


def step_micro_batches(step: int, n: int, config: TrainConfig, dist: Dist) -> list[list[int]]:
    """The micro-batches optimizer step `step` (0-based) consumes: a pure function, so resume needs no loader state."""
    per_epoch = steps_per_epoch(n, dist, config.batch_size, config.grad_accum)
    epoch, within = divmod(step, per_epoch)
    micro = epoch_micro_batches(n, epoch, config.seed, dist, config.batch_size)
    return micro[within * config.grad_accum:(within + 1) * config.grad_accum]


def total_steps(n: int, config: TrainConfig, dist: Dist) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * steps_per_epoch(n, dist, config.batch_size, config.grad_accum)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------


def fingerprint(config: TrainConfig, world: int) -> str:
    """What must match for a checkpoint to resume: every weight-affecting option, the data's bytes, the world size."""
    fields = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
              for k, v in asdict(config).items() if k not in NOT_IN_FINGERPRINT + ("resume", "data")}
    fields["data_sha256"] = hashlib.sha256(Path(config.data).read_bytes()).hexdigest()
    fields["world"] = world
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def save_checkpoint(out: Path, model, optimizer, scheduler, step: int, fingerprint_: str) -> None:
    import numpy as np
    import torch

    with replaced_dir(out / CHECKPOINT, "train", ()) as tmp:
        model.save_pretrained(tmp)
        torch.save({
            "step": step, "fingerprint": fingerprint_,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }, tmp / "state.pt")


def load_checkpoint(out: Path, model, optimizer, scheduler, fingerprint_: str, demanded: bool, log) -> int:
    """The step to continue from (0 when there is no usable checkpoint)."""
    import numpy as np
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = out / CHECKPOINT
    if not (directory / "state.pt").is_file():
        if demanded:
            raise FlipError(f"--resume: no checkpoint in {directory}")
        return 0
    state = torch.load(directory / "state.pt", weights_only=False)
    if state["fingerprint"] != fingerprint_:
        if demanded:
            raise FlipError(f"--resume: {directory} was made with other options or data; remove it to start over")
        log(f"flip train: {directory} was made with other options or data: starting over")
        return 0
    set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    log(f"flip train: resuming from {directory} at step {state['step']}")
    return int(state["step"])


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------


def save_adapter(model, out: Path, base_reference: str) -> None:
    """adapter_model.safetensors + adapter_config.json, with base_model_name_or_path set to the reference the user gave
    (e.g. "smollm2-135m", which harness.models.resolve understands; the cache path of a converted GGUF is not)."""
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base_reference
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=out))
    try:
        model.save_pretrained(tmp)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_metrics(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["step"] <= up_to_step]


def plot_loss(rows: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", linewidth=1)
    evaluated = [r for r in rows if "val_loss" in r]
    if evaluated:
        axes.plot([r["step"] for r in evaluated], [r["val_loss"] for r in evaluated], "o-", label="val loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (response tokens)")
    axes.legend()
    figure.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def build_model(config: TrainConfig, device):
    """(peft model in train mode on the device, tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from harness.models import load_model, training_dtype

    model, tokenizer = load_model(config.base, device=str(device), dtype=training_dtype(config.dtype, device))
    if not getattr(tokenizer, "chat_template", None):
        raise FlipError(f"the tokenizer of {config.base} has no chat template: samples are rendered through it")
    model.config.use_cache = False
    torch.manual_seed(config.seed)  # LoRA A's initialisation: the same on every rank and every rerun
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.targets),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:
        raise FlipError(f"--targets {','.join(config.targets)}: {err}") from None
    model.train()
    return model, tokenizer


def val_subset(val_set: list, limit: int | None, seed: int) -> list:
    """The validation samples the loss is measured on: all, or a seeded sample of `limit` in their split order."""
    if limit is None or len(val_set) <= limit:
        return val_set
    keep = sorted(random.Random(seed).sample(range(len(val_set)), limit))
    return [val_set[i] for i in keep]


def validation_loss(model, val, pad_id: int, batch_size: int, device, dist: Dist) -> float | None:
    """Token-weighted mean CE over the validation set (each rank a strided share, summed across ranks)."""
    import torch

    if not val:
        return None
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        mine = val[dist.rank::dist.world]
        for start in range(0, len(mine), batch_size):
            input_ids, mask, labels = (t.to(device) for t in collate(mine[start:start + batch_size], pad_id))
            loss, count = loss_sum(model, input_ids, mask, labels)
            total += torch.tensor([float(loss), count], dtype=torch.float64, device=device)
    if dist.world > 1:
        torch.distributed.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1])


def micro_batch(units: list, pad_id: int, dtype, device):
    """(tensors, the loss function that takes them, trainable tokens, all tokens) for encoded samples or trees."""
    if isinstance(units[0], Tree):
        tensors = tuple(t.to(device) for t in collate_trees(units, dtype))
        return tensors, tree_loss_sum, int(tensors[4].numel()), int(tensors[0].numel())
    input_ids, mask, labels = (t.to(device) for t in collate(units, pad_id))
    return (input_ids, mask, labels), loss_sum, int((labels[:, 1:] != IGNORE).sum()), int(mask.sum())


def train_step(model, ddp_model, optimizer, scheduler, micro_batches, train, pad_id, device, config, dist):
    """One optimizer step over its micro-batches: (mean loss, trainable tokens, all tokens). The loss is normalised by
    the step's trainable-token count, so each token weighs the same whatever the batching."""
    import torch

    dtype = model.get_input_embeddings().weight.dtype
    batches = [micro_batch([train[i] for i in micro], pad_id, dtype, device) for micro in micro_batches]
    n_target = sum(batch[2] for batch in batches)
    running = 0.0
    for index, (tensors, loss_fn, _, _) in enumerate(batches):
        last = index == len(batches) - 1
        sync = nullcontext() if last or dist.world == 1 else ddp_model.no_sync()
        with sync:
            loss, _ = loss_fn(ddp_model, *tensors)
            (loss / n_target).backward()
        running += loss.item()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return running / n_target, n_target, sum(batch[3] for batch in batches)


def _reduce_sum(values: list[float], device, dist: Dist) -> list[float]:
    import torch

    if dist.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


@dataclass
class Prepared:
    """What training needs before its first step: where this process stands, the model, and the encoded splits."""
    dist: Dist
    device: object
    log: object  # prints on rank 0 only
    model: object
    tokenizer: object
    pad_id: int
    samples: list[dict]
    prose: int
    train_idx: list[int]
    val_idx: list[int]
    train_set: list
    train_units: list  # what a micro-batch is made of: the encoded train samples, or with --pack their trees
    val_set: list
    val_loss_set: list
    dropped_train: list[int]
    dropped_val: list[int]
    timings: dict[str, float]


@dataclass
class Schedule:
    """The optimizer and its learning-rate schedule, and where this run starts (a resumed checkpoint) and stops."""
    optimizer: object
    scheduler: object
    fingerprint: str
    start: int
    steps: int


@dataclass
class LoopResult:
    last_loss: float | None
    last_val: float | None
    tokens: int  # every token the steps saw
    targets: int  # the trainable (response) tokens among them


def setup_training(config: TrainConfig) -> Prepared:
    """Check the inputs, claim --out, load the model and encode both splits; too-long samples are dropped, counted."""
    from harness.models import check

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    samples, prose = load_samples(config.data, config.allow_prose)  # inputs first: a bad one fails in a second
    base = check(config.base)
    dist, device = init_distributed(config.device)
    log = (lambda text: print(text, file=sys.stderr)) if dist.main else (lambda text: None)
    random.seed(config.seed)
    if dist.main:
        claim_dir(config.out, "train", OUTPUT_NAMES, config.force, inputs=(config.data, base.path))
    model, tokenizer = build_model(config, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn_id(tokenizer)
    timings["load_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    train_idx, val_idx = split_by_trajectory(samples, config.val_fraction, config.seed)
    train_set, dropped_train = encode_all(samples, train_idx, tokenizer, config.max_length)
    val_set, dropped_val = encode_all(samples, val_idx, tokenizer, config.max_length)
    val_loss_set = val_subset(val_set, config.val_samples, config.seed)
    train_units = train_set
    if config.pack:
        dropped = set(dropped_train)
        keys = [trajectory_of(samples[i], i) for i in train_idx if i not in dropped]
        train_units = pack_trees(train_set, keys, config.pack_tokens)
    timings["tokenise_s"] = time.perf_counter() - clock
    if not train_set:
        raise FlipError(f"all {len(train_idx)} training samples exceed --max-length {config.max_length} tokens; "
                        "raise --max-length or export with a smaller token budget")
    if dropped_train or dropped_val:
        log(f"flip train: dropped {len(dropped_train) + len(dropped_val)} samples longer than --max-length "
            f"{config.max_length} tokens (never truncated: that would cut the response)")
    return Prepared(dist, device, log, model, tokenizer, pad_id, samples, prose, train_idx, val_idx, train_set,
                    train_units, val_set, val_loss_set, dropped_train, dropped_val, timings)


def training_loop(config: TrainConfig, prepared: Prepared, schedule: Schedule, on_eval=None) -> LoopResult:
    """The optimizer steps from schedule.start: one metrics.jsonl row each, checkpoints, validations and on_eval calls."""
    import torch

    model, tokenizer, dist, device, pad_id = (prepared.model, prepared.tokenizer, prepared.dist, prepared.device,
                                              prepared.pad_id)
    train_units, val_set, val_loss_set = prepared.train_units, prepared.val_set, prepared.val_loss_set
    optimizer, scheduler, start, steps = schedule.optimizer, schedule.scheduler, schedule.start, schedule.steps
    ddp_model = model
    if dist.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    metrics_path = config.out / "metrics.jsonl"
    rows = read_metrics(metrics_path, start) if dist.main else []
    if dist.main:
        write_text(metrics_path, "".join(json.dumps(row) + "\n" for row in rows))

    def call_on_eval(step: int) -> None:
        if on_eval is not None and dist.main:
            model.eval()
            try:
                on_eval(step, model, tokenizer)
            finally:
                model.train()

    clock = time.perf_counter()
    tokens_total, targets_total, eval_seconds = 0, 0, 0.0
    last_loss, last_val = None, None
    # Appended row by row, not written atomically at the end: a killed run keeps its finished steps' rows, which a
    # resume keeps (read_metrics, rewritten atomically above up to the checkpoint's step).
    with open(metrics_path, "a", encoding="utf-8") if dist.main else nullcontext() as metrics_file:
        progress = progress_bar(dist.main, total=steps, initial=start, desc="train", unit="step")
        for step in range(start, steps):
            step_clock = time.perf_counter()
            micro = step_micro_batches(step, len(train_units), config, dist)
            loss, n_target, n_tokens = train_step(model, ddp_model, optimizer, scheduler, micro, train_units, pad_id,
                                                  device, config, dist)
            loss, n_tokens = (v for v in _reduce_sum([loss / dist.world, n_tokens], device, dist))
            seconds = time.perf_counter() - step_clock
            tokens_total += n_tokens
            targets_total += n_target
            done = step + 1
            row = {"step": done, "loss": loss, "tokens": int(n_tokens), "tokens_per_s": n_tokens / seconds,
                   "lr": scheduler.get_last_lr()[0]}
            last_loss = loss
            if config.save_every and done % config.save_every == 0 and done < steps:
                if dist.main:
                    save_checkpoint(config.out, model, optimizer, scheduler, done, schedule.fingerprint)
            evaluating = bool(config.eval_every and done % config.eval_every == 0) or done == steps
            eval_clock = time.perf_counter()
            if evaluating and val_set:
                row["val_loss"] = last_val = validation_loss(model, val_loss_set, pad_id, config.batch_size, device, dist)
            if dist.main:  # the row is written before on_eval, which may stop the run (a checkpoint is already out)
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
            if evaluating:
                call_on_eval(done)
            eval_seconds += time.perf_counter() - eval_clock
            progress.set_postfix(loss=f"{loss:.3f}")
            progress.update(1)
        progress.close()
    prepared.timings["train_s"] = time.perf_counter() - clock - eval_seconds
    prepared.timings["eval_s"] = eval_seconds
    if start == steps:  # nothing left to train (a rerun of a finished run): still report a validation loss
        last_val = validation_loss(model, val_loss_set, pad_id, config.batch_size, device, dist)
    return LoopResult(last_loss, last_val, tokens_total, targets_total)


def packing_summary(train_set: list, trees: list[Tree]) -> dict:
    separate = sum(len(ids) for ids, _ in train_set)
    packed = sum(len(tree.input_ids) for tree in trees)
    return {"trees": len(trees), "tokens_one_by_one": separate, "tokens_packed": packed,
            "token_ratio": round(separate / packed, 3)}


def finish_training(config: TrainConfig, prepared: Prepared, schedule: Schedule, loop: LoopResult) -> dict:
    """The summary; on rank 0 also the adapter, the final checkpoint, loss.png and train_summary.json."""
    import torch

    clock = time.perf_counter()
    model, dist, samples, timings = prepared.model, prepared.dist, prepared.samples, prepared.timings
    start, steps = schedule.start, schedule.steps
    train_seconds = timings["train_s"]
    summary = {
        "steps": steps, "resumed_from": start, "world_size": dist.world, "device": str(prepared.device),
        "dtype": str(model.get_input_embeddings().weight.dtype).removeprefix("torch."),  # the frozen base's
        "samples": {"train": len(prepared.train_set), "val": len(prepared.val_set),
                    "val_loss_measured_on": len(prepared.val_loss_set),
                    "dropped": len(prepared.dropped_train) + len(prepared.dropped_val),
                    "prose": prepared.prose,
                    "dropped_train": len(prepared.dropped_train), "dropped_val": len(prepared.dropped_val)},
        "trajectories": {"train": len({trajectory_of(samples[i], i) for i in prepared.train_idx}),
                         "val": len({trajectory_of(samples[i], i) for i in prepared.val_idx})},
        "packed": packing_summary(prepared.train_set, prepared.train_units) if config.pack else None,
        "final_train_loss": loop.last_loss, "final_val_loss": loop.last_val,
        "tokens_trained": loop.tokens, "response_tokens_trained": loop.targets,
        "tokens_per_s": loop.tokens / train_seconds if train_seconds > 0 else None,
        "steps_per_s": (steps - start) / train_seconds if train_seconds > 0 else None,
        "config": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                   for k, v in asdict(config).items()},
    }
    if dist.main:
        save_adapter(model, config.out, config.base)
        if start < steps:
            save_checkpoint(config.out, model, schedule.optimizer, schedule.scheduler, steps,
                            schedule.fingerprint)  # a rerun resumes as done
        plot_loss(read_metrics(config.out / "metrics.jsonl", steps), config.out / "loss.png")
    timings["save_s"] = time.perf_counter() - clock
    summary["timings"] = timings
    if dist.main:
        write_text(config.out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    if dist.world > 1:
        torch.distributed.barrier()  # nobody exits (and tears down the group) before rank 0 has written
    return summary


def train(config: TrainConfig, on_eval=None) -> dict:
    """Train, write the adapter, metrics.jsonl, loss.png and train_summary.json into config.out; return the summary.

    on_eval(step, model, tokenizer) runs on rank 0 every eval_every optimizer steps and at the end, with the peft
    model in eval mode (train mode is restored after)."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    prepared = setup_training(config)
    model, log = prepared.model, prepared.log
    steps = total_steps(len(prepared.train_units), config, prepared.dist)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(config.warmup * steps), steps)
    fingerprint_ = fingerprint(config, prepared.dist.world)
    start = load_checkpoint(config.out, model, optimizer, scheduler, fingerprint_, config.resume, log)
    schedule = Schedule(optimizer, scheduler, fingerprint_, start, steps)
    loop = training_loop(config, prepared, schedule, on_eval)
    return finish_training(config, prepared, schedule, loop)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return options_of(TrainConfig, args)


def main(args: argparse.Namespace) -> int:
    summary = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        samples = summary["samples"]
        print(f"flip train: {summary['steps']} steps, {samples['train']} train / {samples['val']} val samples "
              f"({samples['dropped']} dropped), final loss {summary['final_train_loss']:.4f}"
              + (f", val {summary['final_val_loss']:.4f}" if summary["final_val_loss"] is not None else "")
              + f", {summary['tokens_per_s'] or 0:.0f} tokens/s -> {args.out}")
    return 0
