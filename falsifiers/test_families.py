"""Falsifiers of contracts/families.yaml: what differs between model families is read from one table, and each stage
renders, counts, stops and lays out weights the way that table says, on the real SmolLM2-135M and Gemma 3 270M."""
from __future__ import annotations

import pytest
import torch

from harness import FlipError
from harness.contracts import system_prompt
from harness.families import by_name, of_model_type
from harness.models import GEMMA3, SMOLLM2

SYSTEM, INSTRUCTION = system_prompt(), "Task:\nFix add.py.\n\nReply with the next tool call."
RESPONSE = '<tool_call>\n{"name": "file_read", "input": {"path": "add.py"}}\n</tool_call>'
SAMPLE = {"system": SYSTEM, "instruction": INSTRUCTION, "response": RESPONSE}


@pytest.fixture(scope="module", params=[SMOLLM2, GEMMA3])
def named_tokenizer(request):
    from harness.models import load_tokenizer

    try:
        return request.param, load_tokenizer(request.param)
    except FlipError as err:
        pytest.skip(str(err))


def test_each_base_trains_the_turn_format_its_family_declares(named_tokenizer):
    """SmolLM2's own chat template and the template Gemma 3 270M (a base without one) is given both render a sample as
    its family's turn format says, token for token; the prompt is the sample up to the reply; the trained labels are
    the reply and its end-of-turn token (`<|im_end|>` / `<end_of_turn>`), the token eval and agent stop on."""
    from harness.decode import render_prompt, stop_token_ids
    from harness.families import of_tokenizer
    from harness.train import IGNORE, encode

    name, tokenizer = named_tokenizer
    family = of_tokenizer(tokenizer)
    assert family.name == {SMOLLM2: "llama", GEMMA3: "gemma3"}[name]
    expected = family.turn.render(SYSTEM, INSTRUCTION, RESPONSE)
    ids, labels = encode(SAMPLE, tokenizer, 4096)
    assert tokenizer.decode(ids) == expected
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    prompt = render_prompt(tokenizer, INSTRUCTION)
    assert expected.startswith(prompt) and prompt.endswith(family.turn.middle)
    end_id = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    trained = [label for label in labels if label != IGNORE]
    assert tokenizer.decode(trained[:-1]) == RESPONSE and trained[-1] == end_id
    assert end_id in stop_token_ids(tokenizer) and tokenizer.eos_token_id in stop_token_ids(tokenizer)


def test_the_export_budget_counts_what_the_trainer_trains(named_tokenizer):
    """Export's token budget, counted with a base's tokenizer (`--tokenizer gemma3-270m`), counts exactly the tokens
    the trainer renders for that base: Gemma's turns for Gemma 3, ChatML for SmolLM2."""
    from harness.prompt import Budget
    from harness.tokens import counter
    from harness.train import encode

    name, tokenizer = named_tokenizer
    budget = Budget(counter(name), 1024, SYSTEM)
    ids, _ = encode(SAMPLE, tokenizer, 4096)
    assert budget.exact(INSTRUCTION, RESPONSE) == len(ids)


def test_the_family_table_is_read_by_model_type():
    """model_type -> family: Llama permutes q/k, Qwen2 and Gemma 3 (model_type gemma3_text, GGUF arch gemma3) do not;
    an HF-directory Gemma 3 has no GGUF writer (its SentencePiece-style tokenizer, its shifted norms); an architecture
    not in the table is a one-line error."""
    assert of_model_type("llama").permute_qk and not of_model_type("qwen2").permute_qk
    gemma = of_model_type("gemma3_text")
    assert gemma is by_name("gemma3") and gemma.gguf_arch == "gemma3"
    assert not gemma.permute_qk and gemma.gguf_tokenizer is None
    with pytest.raises(FlipError, match="not in contracts/families.yaml"):
        of_model_type("mamba")


@pytest.mark.slow
def test_gemma3_merge_gives_peft_logits_in_hf_and_gguf(tmp_path):
    """On Gemma 3 270M (a Q4_K_M GGUF base): a q,k,v,o rank-4 adapter merges to peft's logits within 1e-4 (merged HF
    directory), and merged.gguf (the base's tensors dequantized, the delta added in GGUF layout, which for Gemma 3 is
    the HF layout: llama.cpp's Gemma3Model permutes no q/k rows) read by transformers gives the merged model's logits
    within 1e-4. float64 forward passes: fp32 noise alone is ~1e-4 at these logit sizes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from falsifiers.test_remap import gguf_logits, logits
    from harness import merge
    from harness.models import hf_directory

    try:
        hf_dir = hf_directory(GEMMA3)
    except FlipError as err:
        pytest.skip(str(err))
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # B ~ 0.02 like a briefly trained adapter
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563, 19, 1401]])
    expected = logits(peft_model.to(torch.float64), ids)
    del peft_model, model
    report = merge.merge(GEMMA3, tmp_path / "adapter", tmp_path / "merged")
    assert report["merged"] == report["gguf_merged"] == 18 * 4
    merged = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float64), ids)
    assert (merged - expected).abs().max().item() < 1e-4
    diff = (gguf_logits(tmp_path / "merged.gguf", ids, dtype=torch.float64) - merged).abs().max().item()
    print(f"gemma3 merged.gguf vs merged HF max |logit diff| {diff:.3g}")
    assert diff < 1e-4, f"merged.gguf differs from the merged HF model by {diff}"


def test_the_assembled_gemma3_gguf_is_checked_by_sha256(tmp_path, monkeypatch):
    """Chunks that do not assemble to Gemma 3 270M's sha256 are refused and leave no file behind (nor a temporary
    one); a cached file whose bytes changed is refused, never loaded."""
    from harness import models

    monkeypatch.setenv("FLIP_CACHE", str(tmp_path / "cache"))
    chunks = [tmp_path / "part00", tmp_path / "part01"]
    for index, chunk in enumerate(chunks):
        chunk.write_bytes(bytes([index]) * 1000)
    target = tmp_path / "cache" / "models" / models.GEMMA3_FILE
    with pytest.raises(FlipError, match="sha256"):
        models._assemble(chunks, target)
    assert list(target.parent.iterdir()) == []
    monkeypatch.setattr(models, "_gemma3_chunks", lambda: chunks)
    def assemble_unchecked(parts, path):  # a cached file whose bytes are not Gemma's
        path.parent.mkdir(parents=True)
        path.write_bytes(b"".join(p.read_bytes() for p in parts))

    monkeypatch.setattr(models, "_assemble", assemble_unchecked)
    with pytest.raises(FlipError, match="does not have the sha256"):
        models.resolve(GEMMA3)
