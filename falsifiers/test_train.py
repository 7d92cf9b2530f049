"""Falsifiers of harness.train (contracts/claims/train.yaml).

Most tests train a TINY random Llama (hidden 64, 2 layers) carrying the real SmolLM2 tokenizer and chat template, saved
to a temporary HF directory: a valid `--base`, seconds per run. One test trains the real smollm2-135m for a few steps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import FlipError
from harness.contracts import system_prompt
from harness.toolcall import render_tool_call

torch = pytest.importorskip("torch")

from harness import train as T  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: the tokenizer, a tiny model, realistic samples
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tokenizer():
    from harness.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        initializer_range=0.2,  # larger than the default 0.02: confident logits, so a few LoRA steps visibly learn
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


ACTIONS = [
    ("file_read", {"path": "src/lib.rs"}),
    ("grep", {"pattern": "fn parse", "path": "src"}),
    ("shell", {"command": "cargo test --quiet"}),
    ("file_edit", {"path": "src/lib.rs", "old": "a - b", "new": "a + b"}),
    ("glob", {"pattern": "tests/*.rs"}),
]


def make_sample(trajectory: str | None, step: int, task: str, history: int = 0, system: bool = True) -> dict:
    """An exporter-shaped sample: the task, prior actions with results, a request for the next action."""
    lines = [f"Task: {task}"]
    for name, tool_input in ACTIONS[:history]:
        lines += [f"Action: {render_tool_call(name, tool_input)}", "Result: ok (3 lines)"]
    lines.append("What is the next action?")
    name, tool_input = ACTIONS[(step + len(task)) % len(ACTIONS)]
    sample = {"instruction": "\n".join(lines), "response": render_tool_call(name, tool_input)}
    if system:
        sample["system"] = system_prompt()
    if trajectory is not None:
        sample["metadata"] = {"trajectory": trajectory, "step": step, "tool": name, "source": "test"}
    return sample


def write_jsonl(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return path


def small_dataset(n_trajectories: int = 4, steps: int = 2) -> list[dict]:
    tasks = ["fix the off-by-one in parse", "make add() correct", "rename the helper", "add a test for overflow",
             "speed up the tokenizer", "handle empty input"]
    return [make_sample(f"traj-{t}", s, tasks[t % len(tasks)], history=s)
            for t in range(n_trajectories) for s in range(steps)]


def config_for(base, data, out, **overrides) -> T.TrainConfig:
    settings = dict(data=data, base=str(base), out=out, max_steps=4, lr=1e-2, device="cpu", save_every=None)
    settings.update(overrides)
    return T.TrainConfig(**settings)


# --------------------------------------------------------------------------------------------------------------------
# FALSIFY-TRAIN-001: the loss mask is exactly the response + <|im_end|>, and the loss is the CE over exactly those
# --------------------------------------------------------------------------------------------------------------------


def test_loss_mask_is_exactly_response_and_end_of_turn(tokenizer, tiny_base):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    samples = [make_sample("a", 0, "fix parse"), make_sample("b", 2, "rename x", history=2),
               make_sample(None, 1, "no system prompt here", system=False)]
    for sample in samples:
        encoded = T.encode(sample, tokenizer, max_length=4096)
        assert encoded is not None
        input_ids, labels = encoded
        trainable = [i for i, label in enumerate(labels) if label != T.IGNORE]
        # one contiguous span, ending at the last token, whose labels are the input tokens themselves
        assert trainable == list(range(trainable[0], len(labels)))
        assert [labels[i] for i in trainable] == [input_ids[i] for i in trainable]
        # exactly the response and the closing end-of-turn token: decoded independently of the code under test
        assert tokenizer.decode([input_ids[i] for i in trainable]) == sample["response"] + "<|im_end|>"
        prompt_text = tokenizer.apply_chat_template(T.messages_of(sample), tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(input_ids[:trainable[0]]) == prompt_text

        # the loss is the mean CE over exactly those positions: equal to transformers' own shifted CE ...
        ids = torch.tensor([input_ids])
        label_tensor = torch.tensor([labels])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ours = T.mean_loss(model, ids, mask, label_tensor)
            reference = float(model(input_ids=ids, labels=label_tensor).loss)
            logits = model(input_ids=ids).logits[0]
        assert ours == pytest.approx(reference, rel=1e-5)
        # ... and to a hand-written CE over the span (logit t predicts token t+1)
        manual = torch.nn.functional.cross_entropy(
            logits[trainable[0] - 1:len(labels) - 1], torch.tensor(input_ids[trainable[0]:]))
        assert ours == pytest.approx(float(manual), rel=1e-5)
        # widening the span by one token on the left changes the loss: the check above can see an off-by-one
        wider = label_tensor.clone()
        wider[0, trainable[0] - 1] = input_ids[trainable[0] - 1]
        with torch.no_grad():
            assert T.mean_loss(model, ids, mask, wider) != pytest.approx(ours, rel=1e-6)


@pytest.mark.helper
def test_batched_loss_equals_per_sample_loss(tokenizer, tiny_base):
    """Right padding with attention masks: a padded batch gives the token-weighted mean of its samples' losses."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    encoded = [T.encode(s, tokenizer, 4096) for s in small_dataset(2, 2)]
    total, count = 0.0, 0
    with torch.no_grad():
        for item in encoded:
            loss, n = T.loss_sum(model, *T.collate([item], tokenizer.pad_token_id))
            total, count = total + float(loss), count + n
        batched = T.mean_loss(model, *T.collate(encoded, tokenizer.pad_token_id))
    assert batched == pytest.approx(total / count, rel=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# FALSIFY-TRAIN-009: --pack computes a trajectory's shared prompt tokens once and changes no sample's loss
# --------------------------------------------------------------------------------------------------------------------


def _trajectories(tokenizer, n: int, steps: int) -> tuple[list, list[str]]:
    samples = small_dataset(n, steps)
    return [T.encode(s, tokenizer, 4096) for s in samples], [s["metadata"]["trajectory"] for s in samples]


def test_packed_trees_give_every_sample_its_own_loss(tokenizer, tiny_base):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    encoded, keys = _trajectories(tokenizer, 3, 4)
    dtype = torch.float32
    with torch.no_grad():
        one_by_one = [T.loss_sum(model, *T.collate([item], tokenizer.pad_token_id)) for item in encoded]
        # each sample alone in a tree, then each trajectory in one tree, then all of them in one forest row
        alone = [T.tree_loss_sum(model, *T.collate_trees(T.pack_trees([item], ["k"], 4096), dtype)) for item in encoded]
        trees = T.pack_trees(encoded, keys, 4096)
        forest = T.tree_loss_sum(model, *T.collate_trees(trees, dtype))
    for (expected, count), (got, got_count) in zip(one_by_one, alone):
        assert got_count == count and float(got) == pytest.approx(float(expected), rel=1e-4)
    assert len(trees) == 3 and [tree.samples for tree in trees] == [4, 4, 4]
    assert forest[1] == sum(count for _, count in one_by_one)
    assert float(forest[0]) == pytest.approx(sum(float(loss) for loss, _ in one_by_one), rel=1e-4)
    # the shared prompt tokens are computed once: far fewer tokens than the samples one by one
    assert sum(len(tree.input_ids) for tree in trees) < 0.6 * sum(len(ids) for ids, _ in encoded)
    # a tree never grows past its cap: a trajectory too big for one tree is split, every sample kept
    longest = max(len(ids) for ids, _ in encoded)
    capped = T.pack_trees(encoded, keys, longest + 10)
    assert all(len(tree.input_ids) <= longest + 10 for tree in capped) and len(capped) > 3
    assert sum(tree.samples for tree in capped) == len(encoded)


@pytest.mark.helper
def test_training_with_pack_steps_over_trees(tmp_path, tiny_base):
    data = write_jsonl(tmp_path / "d.jsonl", small_dataset(3, 3))
    summary = T.train(config_for(tiny_base, data, tmp_path / "out", pack=True, max_steps=None, epochs=1,
                                 val_fraction=0.0))
    assert summary["steps"] == 3 == summary["packed"]["trees"]  # one tree per trajectory, one tree per step
    assert summary["packed"]["tokens_packed"] == summary["tokens_trained"] < summary["packed"]["tokens_one_by_one"]
    with pytest.raises(FlipError, match="--pack-tokens must be at least --max-length"):
        config_for(tiny_base, data, tmp_path / "o2", pack=True, pack_tokens=100)


# --------------------------------------------------------------------------------------------------------------------
# FALSIFY-TRAIN-002: samples that do not fit --max-length are dropped and counted, never cut
# --------------------------------------------------------------------------------------------------------------------


def test_too_long_samples_are_dropped_not_truncated(tokenizer):
    samples = [make_sample(f"t{i}", i, "fix " + "very " * (40 * i) + "long bug", history=i % 3) for i in range(6)]
    lengths = []
    for sample in samples:  # the full render up to and including the closing <|im_end|>, counted independently
        text = tokenizer.apply_chat_template(
            T.messages_of(sample) + [{"role": "assistant", "content": sample["response"]}], tokenize=False)
        lengths.append(len(tokenizer(text.rstrip("\n"), add_special_tokens=False)["input_ids"]))
    budget = sorted(lengths)[3]  # the boundary: a sample of exactly `budget` tokens is kept
    kept, dropped = T.encode_all(samples, list(range(6)), tokenizer, budget)
    assert sorted(dropped) == [i for i, n in enumerate(lengths) if n > budget]
    assert len(kept) == sum(n <= budget for n in lengths) and budget in [len(ids) for ids, _ in kept]
    for ids, labels in kept:
        assert len(ids) <= budget
        trainable = [ids[i] for i, label in enumerate(labels) if label != T.IGNORE]
        assert trainable, "a sample with zero trainable tokens"
        assert tokenizer.decode(trainable).endswith("</tool_call><|im_end|>")  # the whole response, never cut
    # a budget smaller than every prompt: everything is dropped (no zero-token sample slips through)
    assert T.encode_all(samples, list(range(6)), tokenizer, 10) == ([], list(range(6)))


@pytest.mark.helper
def test_train_counts_dropped_samples(tmp_path, tiny_base):
    samples = small_dataset(3, 1) + [make_sample("long", 0, "x " * 3000)]
    summary = T.train(config_for(tiny_base, write_jsonl(tmp_path / "d.jsonl", samples), tmp_path / "out",
                                 max_length=900, val_fraction=0.0, max_steps=1))
    assert summary["samples"] == {"train": 3, "val": 0, "val_loss_measured_on": 0, "dropped": 1, "dropped_train": 1, "dropped_val": 0, "prose": 0}


# --------------------------------------------------------------------------------------------------------------------
# FALSIFY-TRAIN-003: the validation split is by trajectory
# --------------------------------------------------------------------------------------------------------------------


def test_split_shares_no_trajectory():
    samples = [make_sample(f"traj-{t}", s, "task") for t in range(7) for s in range(1 + t % 4)]
    samples += [make_sample(None, 0, f"lonely {i}") for i in range(3)]  # each its own trajectory
    for seed in range(20):
        train, val = T.split_by_trajectory(samples, 0.3, seed)
        assert sorted(train + val) == list(range(len(samples)))
        train_keys = {T.trajectory_of(samples[i], i) for i in train}
        val_keys = {T.trajectory_of(samples[i], i) for i in val}
        assert not train_keys & val_keys
        assert len(val_keys) == round(10 * 0.3)  # 7 trajectories + 3 lonely samples
    assert T.split_by_trajectory(samples, 0.3, 1) == T.split_by_trajectory(samples, 0.3, 1)  # seeded
    assert len({tuple(T.split_by_trajectory(samples, 0.3, seed)[1]) for seed in range(20)}) > 1


def test_split_of_tiny_data_keeps_a_training_trajectory():
    one = [make_sample("only", s, "task") for s in range(3)]
    for fraction in (0.2, 0.5, 0.9):
        assert T.split_by_trajectory(one, fraction, 0) == ([0, 1, 2], [])
    two = [make_sample("a", 0, "t"), make_sample("b", 0, "t")]
    train, val = T.split_by_trajectory(two, 0.9, 0)
    assert len(train) == 1 and len(val) == 1


# --------------------------------------------------------------------------------------------------------------------
# FALSIFY-TRAIN-004: training reduces the loss, at the configured learning rate schedule
# --------------------------------------------------------------------------------------------------------------------


def _dataset_loss(model, tokenizer, samples) -> float:
    encoded = [T.encode(s, tokenizer, 4096) for s in samples]
    with torch.no_grad():
        return T.mean_loss(model, *T.collate(encoded, tokenizer.pad_token_id))


def test_training_reduces_loss(tmp_path, tiny_base, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    samples = small_dataset(3, 2)
    config = config_for(tiny_base, write_jsonl(tmp_path / "d.jsonl", samples), tmp_path / "out",
                        max_steps=16, lr=2e-2, val_fraction=0.0, warmup=0.25)
    T.train(config)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    before = _dataset_loss(base, tokenizer, samples)
    after = _dataset_loss(PeftModel.from_pretrained(base, config.out).eval(), tokenizer, samples)
    assert after < before - 1.0, (before, after)
    # the learning rate follows warmup (4 steps) then cosine, peaking at --lr
    rates = [json.loads(line)["lr"] for line in (config.out / "metrics.jsonl").read_text().splitlines()]
    assert rates[3] == pytest.approx(config.lr) and max(rates) == pytest.approx(config.lr)
    assert rates[:4] == sorted(rates[:4]) and rates[3:] == sorted(rates[3:], reverse=True) and rates[-1] < 1e-3 * config.lr


# --------------------------------------------------------------------------------------------------------------------
# FALSIFY-TRAIN-010: --dtype bfloat16 runs the frozen base in bf16 and learns a float32 adapter as well as float32 does
# --------------------------------------------------------------------------------------------------------------------


def test_bfloat16_base_learns_a_float32_adapter(tmp_path, tiny_base, tokenizer):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    samples = small_dataset(3, 2)
    data = write_jsonl(tmp_path / "d.jsonl", samples)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    before = _dataset_loss(base, tokenizer, samples)
    after = {}
    for dtype in ("float32", "bfloat16"):
        config = config_for(tiny_base, data, tmp_path / dtype, max_steps=16, lr=2e-2, val_fraction=0.0, warmup=0.25,
                            dtype=dtype)
        summary = T.train(config)
        assert summary["dtype"] == dtype
        weights = load_file(config.out / "adapter_model.safetensors")
        assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}, dtype  # the adapter and its updates
        after[dtype] = _dataset_loss(PeftModel.from_pretrained(base, config.out).eval(), tokenizer, samples)
        base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    # measured with the float32 base, as the merge applies it: bf16's rounding of the frozen weights costs little
    assert after["bfloat16"] < before - 1.0 and abs(after["bfloat16"] - after["float32"]) < 0.1, (before, after)


# --------------------------------------------------------------------------------------------------------------------
# FALSIFY-TRAIN-005: an interrupted run resumed from its checkpoint ends with the uninterrupted run's adapter
# --------------------------------------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def _stop_at(step_to_stop: int):
    def on_eval(step, model, tokenizer):
        if step == step_to_stop:
            raise Interrupt
    return on_eval


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


def test_resume_reaches_the_uninterrupted_adapter(tmp_path, tiny_base):
    data = write_jsonl(tmp_path / "d.jsonl", small_dataset(3, 2))
    settings = dict(max_steps=5, save_every=2, eval_every=2, val_fraction=0.0, warmup=0.5, grad_accum=2,
                    batch_size=2, lr=5e-3)
    T.train(config_for(tiny_base, data, tmp_path / "whole", **settings))
    with pytest.raises(Interrupt):
        T.train(config_for(tiny_base, data, tmp_path / "split", **settings), on_eval=_stop_at(4))
    summary = T.train(config_for(tiny_base, data, tmp_path / "split", **settings))  # auto-resume
    assert summary["resumed_from"] == 4
    whole, split = _adapter(tmp_path / "whole"), _adapter(tmp_path / "split")
    assert whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=1e-7)
    rows = lambda out: [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in rows(tmp_path / "split")] == list(range(1, 6))
    for a, b in zip(rows(tmp_path / "whole"), rows(tmp_path / "split")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["lr"] == pytest.approx(b["lr"], abs=1e-12)


@pytest.mark.helper
def test_resume_flag_demands_a_matching_checkpoint(tmp_path, tiny_base):
    data = write_jsonl(tmp_path / "d.jsonl", small_dataset(2, 1))
    with pytest.raises(FlipError, match="no checkpoint"):
        T.train(config_for(tiny_base, data, tmp_path / "out", max_steps=1, resume=True))
    T.train(config_for(tiny_base, data, tmp_path / "out", max_steps=1))
    with pytest.raises(FlipError, match="other options"):
        T.train(config_for(tiny_base, data, tmp_path / "out", max_steps=1, lr=1e-3, resume=True))


# --------------------------------------------------------------------------------------------------------------------
# FALSIFY-TRAIN-006: `flip train` writes the adapter (naming the user's base reference), metrics, plot and summary
# --------------------------------------------------------------------------------------------------------------------


def test_cli_writes_all_outputs(tmp_path, tiny_base):
    from harness.cli import main
    from harness.models import resolve

    data = write_jsonl(tmp_path / "d.jsonl", small_dataset(5, 1))
    out = tmp_path / "run"
    base = tmp_path / "base-link"  # the reference the user typed differs from the resolved model directory
    base.symlink_to(tiny_base)
    code = main(["train", "--data", str(data), "--base", str(base), "--out", str(out), "--max-steps", "3",
                 "--eval-every", "2", "--device", "cpu", "--rank", "4", "--alpha", "8", "--targets", "q_proj,k_proj"])
    assert code == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base) and resolve(config["base_model_name_or_path"])
    assert config["r"] == 4 and config["lora_alpha"] == 8 and set(config["target_modules"]) == {"q_proj", "k_proj"}
    assert any(".k_proj.lora_A" in name for name in _adapter(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and [("val_loss" in r) for r in rows] == [False, True, True]
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 and r["loss"] > 0 for r in rows)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["samples"]["train"] + summary["samples"]["val"] == 5
    assert summary["trajectories"] == {"train": 4, "val": 1}
    assert set(summary["timings"]) >= {"load_s", "tokenise_s", "train_s", "save_s"}
    assert summary["final_val_loss"] == pytest.approx(rows[-1]["val_loss"])
    # a bad option is a clean user error (exit 2), not a traceback
    assert main(["train", "--data", str(tmp_path / "missing.jsonl"), "--base", str(tiny_base), "--out", str(out)]) == 2


@pytest.mark.helper
def test_template_without_prefix_property_fails_clearly(tmp_path, tokenizer):
    import copy

    broken = copy.deepcopy(tokenizer)
    # a template whose generation prompt is not how it renders the assistant turn
    broken.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant said:\n{% endif %}")
    with pytest.raises(FlipError, match="not a token prefix"):
        T.encode(make_sample("a", 0, "t"), broken, 4096)


@pytest.mark.helper
def test_rank_sharding_covers_each_epoch_once():
    for n, world, batch in [(7, 2, 1), (8, 2, 3), (5, 3, 2), (4, 1, 1)]:
        per_rank = [T.epoch_micro_batches(n, 0, 42, T.Dist(rank=r, world=world), batch) for r in range(world)]
        assert len({len(batches) for batches in per_rank}) == 1  # every rank takes as many steps
        seen = [i for batches in per_rank for micro in batches for i in micro]
        assert set(seen) == set(range(n)) and len(seen) < n + world
    assert T.epoch_micro_batches(9, 0, 1, T.Dist(), 1) != T.epoch_micro_batches(9, 1, 1, T.Dist(), 1)


# --------------------------------------------------------------------------------------------------------------------
# The real model, and DDP
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.helper
def test_real_model_adapter_loads_and_changes_logits(tmp_path, tokenizer):
    from peft import PeftModel

    from harness.models import load_model, training_dtype

    config = T.TrainConfig(data=write_jsonl(tmp_path / "d.jsonl", small_dataset(3, 1)), base="smollm2-135m",
                           out=tmp_path / "out", max_steps=2, lr=1e-3, device="cpu", save_every=None, warmup=0.0,
                           val_fraction=0.0)
    summary = T.train(config)
    auto = str(training_dtype("auto", torch.device("cpu"))).removeprefix("torch.")  # bf16 on a CPU that has it
    assert summary["dtype"] == auto and summary["samples"]["dropped"] == 0
    adapter_config = json.loads((config.out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "smollm2-135m"
    base, _ = load_model(adapter_config["base_model_name_or_path"], device="cpu")
    ids = torch.tensor([T.encode(make_sample("x", 0, "unseen task"), tokenizer, 4096)[0]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, config.out).eval()
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-3


@pytest.mark.slow
@pytest.mark.helper
def test_torchrun_two_processes(tmp_path, tiny_base):
    data = write_jsonl(tmp_path / "d.jsonl", small_dataset(5, 2))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "harness.cli", "train", "--data", str(data), "--base", str(tiny_base), "--out", str(out),
         "--max-steps", "4", "--eval-every", "2", "--save-every", "2", "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("size, limit", [(0, 32), (5, 32), (32, 32), (300, 32), (300, None), (7, 1)])
def test_validation_loss_subset_is_fixed_and_bounded(size, limit):
    """The validation loss reads at most val_samples samples, the same ones at every eval, in split order."""
    val = [f"sample-{i}" for i in range(size)]
    subset = T.val_subset(val, limit, seed=42)
    assert len(subset) == min(size, limit or size)
    assert subset == T.val_subset(val, limit, seed=42)  # the same samples at every eval of a run
    assert subset == [v for v in val if v in set(subset)]  # a subsequence: split order kept
    if limit and size > limit:
        assert subset != val[:limit]  # a seeded sample across the split, not its first trajectories
