"""Falsifiers of `flip export` (harness/export.py), as properties over generated recordings: every sample is one valid
call or a final answer, the accounting adds up, secrets never survive, the budget holds, outputs are byte-identical;
and the cheaper exact accounting. The other topics are in test_export_*.py."""
from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import transcript_gen as gen
from harness.contracts import system_prompt
from harness.export import ExportOptions, export
from harness.tokens import counter
from harness.toolcall import call_errors, parse_tool_calls

from export_helpers import SETTINGS, QUIET, _chatml, _export, _samples, _session, _write_all, _outputs, _corpus_for_jobs


# ------------------------------------------------------------------------------------------ property tests

def _every_closing_text() -> list:
    """One undamaged recording per closing text: drawn from the recording's cwd, hypothesis alone may never draw the
    one holding a call tag (a CI run's 20 examples did not)."""
    return [gen.build(random.Random(i), fmt, 2, True, final=final)
            for i, final in enumerate(gen.FINALS) for fmt in ("stream", "session")]


@SETTINGS
@given(st.lists(gen.damaged(), min_size=1, max_size=3))
@example(_every_closing_text())
def test_every_response_is_one_valid_call_or_a_final_answer_without_a_tag(recs):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        # in every example, not only in a lucky draw: a teacher call whose input fails its schema once remapped (an
        # Edit without old_string) must never become a target
        _session(tmp / "in" / "zz-invalid-input.jsonl", "/w", [("Read", {"file_path": "/w/a.py"}, "1\tx", False),
                                                               ("Edit", {"file_path": "/w/a.py"}, "ok", False)],
                 task="fix a.py")
        stats = _export([tmp / "in"], tmp / "out", mode="all")
        finals = 0
        for name in ("apr_code_sft_full.jsonl", "apr_code_sft_curated.jsonl", "apr_code_sft_balanced.jsonl"):
            for sample in _samples(tmp / "out" / name):
                if sample["metadata"].get("final"):
                    assert name != "apr_code_sft_curated.jsonl", "a final answer is not a first action"
                    assert sample["response"].strip() and sample["metadata"]["tool"] == "final"
                    assert "<tool_call" not in sample["response"] and "</tool_call" not in sample["response"]
                    finals += name == "apr_code_sft_full.jsonl"
                    continue
                calls = parse_tool_calls(sample["response"])
                assert len(calls) == 1 and calls[0].closed
                assert call_errors(calls[0]) == []
                assert sample["response"].count("<tool_call>") == 1
                assert list(sample) == ["instruction", "response", "system", "metadata"]
                assert sample["system"] == system_prompt()
        assert finals <= stats["final_candidates"] - sum(stats["finals_dropped"].values())


@SETTINGS
@given(st.lists(gen.damaged(), min_size=1, max_size=3))
def test_accounting_identity_holds_on_damaged_input(recs):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        stats = _export([tmp / "in"], tmp / "out", mode="full")
        assert stats["raw_tool_use"] == stats["remappable"] + sum(stats["unmappable"].values())
        assert stats["lines"]["read"] == stats["lines"]["used"] + sum(stats["lines"]["skipped"].values())
        on_disk = json.loads((tmp / "out" / "export_stats.json").read_text())
        assert on_disk["raw_tool_use"] == stats["raw_tool_use"]


@SETTINGS
@given(st.lists(gen.transcripts(), min_size=1, max_size=3))
def test_every_generated_call_is_counted_exactly_once(recs):
    """Undamaged recordings: the counts equal the generator's ground truth, sub-agent calls included."""
    expected, failed = Counter(), Counter()
    for rec in recs:
        expected.update(rec.expected)
        failed.update(rec.failed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        stats = _export([tmp / "in"], tmp / "out", mode="full")
    assert stats["raw_tool_use"] == sum(expected.values())
    assert stats["remappable"] == sum(n for name, n in expected.items() if name in gen.MAPPED)
    finals = stats["final_candidates"] - sum(stats["finals_dropped"].values())
    assert stats["failed"] == dict(sorted(failed.items()))
    assert stats["candidates"] == stats["remappable"] - sum(stats["failed"].values()) \
        - sum(stats["runtime_refused"].values()) + finals
    assert stats["samples"]["full"] + stats["duplicates"]["full"] + stats["truncated"]["samples_dropped_too_long"] \
        == stats["candidates"]
    assert stats["unmappable"] == {name: n for name, n in sorted(expected.items()) if name not in gen.MAPPED}


@SETTINGS
@given(st.lists(gen.damaged(), min_size=1, max_size=3))
def test_no_planted_secret_or_recording_path_survives(recs):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        for target in ("apr-code", "messages"):
            out = tmp / f"out-{target}"
            _export([tmp / "in"], out, mode="all", target=target, max_length=4096)
            text = b"".join(_outputs(out).values()).decode("utf-8")
            for rec in recs:
                for secret in rec.secrets:
                    assert secret not in text
                assert "-teacher." not in text


@SETTINGS
@given(st.lists(gen.damaged(gen.transcripts(big=3000)), min_size=1, max_size=2), st.sampled_from([330, 420, 700]))
def test_every_sample_fits_the_token_budget(recs, max_length):
    tok = counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        stats = _export([tmp / "in"], tmp / "out", mode="full", max_length=max_length, max_result_chars=600)
        samples = _samples(tmp / "out" / "apr_code_sft_full.jsonl")
        for sample in samples:
            assert tok.count(_chatml(sample)) <= max_length
        assert stats["candidates"] == len(samples) + stats["duplicates"]["full"] + \
            stats["truncated"]["samples_dropped_too_long"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(gen.damaged(), min_size=2, max_size=4), st.randoms(use_true_random=False))
def test_output_is_byte_identical_whatever_the_discovery_order(recs, rnd):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_all(recs, tmp / "in")
        _export([tmp / "in"], tmp / "a", mode="all")
        files = [p for p in (tmp / "in").rglob("*") if p.is_file() and p.suffix in (".jsonl", ".ndjson")]
        rnd.shuffle(files)
        _export(files, tmp / "b", mode="all")
        a, b = _outputs(tmp / "a"), _outputs(tmp / "b")
        assert a == b
        assert str(tmp).encode() not in b"".join(a.values())


# ----------------------------------------------------------------------------------------- cheaper exact accounting

CASE_VARIANTS = ["PASSWORD=hunter22x", "DB_Secret: s3cr3t-value", "pa\u017fsword=hunter22x", "to\u212aen=abcdefgh1",
                 "AWS_SECRET_ACCESS_KEY=" + "A" * 40, "x = 1  # no secret here"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_redaction_prefilters_never_skip_a_match(data):
    """A secret pattern's needles (contracts/redaction.json) only spare the regex a text that cannot match: every
    string a pattern matches is redacted, and counted, exactly as when every regex runs on every text, upper-case and
    Unicode case variants (the long s, the Kelvin sign) of (?i) patterns included."""
    from dataclasses import replace

    from harness.contracts import redaction
    from harness.prompt import Scrubber

    _, secrets = redaction()
    assert all(secret.needles for secret in secrets)
    secret = data.draw(st.sampled_from(secrets))
    text = data.draw(st.from_regex(secret.regex, fullmatch=False))
    variants = [text, text.upper(), text.swapcase()] if secret.ignore_case else [text]
    for text in variants + CASE_VARIANTS:
        filtered, unfiltered = Counter(), Counter()
        every_regex = Scrubber([], unfiltered)
        every_regex.secrets = tuple(replace(each, needles=()) for each in secrets)
        assert Scrubber([], filtered).text(text) == every_regex.text(text), text
        assert filtered == unfiltered, text
    assert "hunter22x" not in Scrubber([], Counter()).text("pa\u017fsword=hunter22x")


def test_cheaper_accounting_changes_no_sample_and_no_count(tmp_path, monkeypatch):
    """Token counts are exact however they are saved: a repeated text is encoded once, and an observation is only
    counted when a later sample can read it (for first actions only, just the rejected calls before them; the last one
    only for a final answer);
    the outputs are byte-identical to counting every piece, and fewer texts are counted."""
    import harness.export as export_module
    from harness.prompt import count_steps

    _corpus_for_jobs(tmp_path / "in")
    base = counter()
    texts = texts_counted = []

    class Counting:
        def count(self, text):
            texts_counted.append(text)
            return base.count(text)

        def count_many(self, many):
            texts_counted.extend(many)
            counts = base.count_many(many)
            assert counts == [base.count(t) for t in many]  # batched, deduplicated: still each text's own count
            return counts

    cheap = {}
    for mode in ("all", "curated"):
        texts.clear()
        export([str(tmp_path / "in")], tmp_path / f"cheap-{mode}", ExportOptions(mode=mode, jobs=1, **QUIET),
               counter=Counting())
        cheap[mode] = (_outputs(tmp_path / f"cheap-{mode}"), len(texts))
        observations = [t for t in texts if t.startswith("Action: ")]
        if mode == "all":
            assert observations
        else:  # a first action reads only the calls its tools rejected before it: no other observation is counted
            assert all("\nResult (error):\n" in t for t in observations), observations[:1]
    monkeypatch.setattr(export_module, "count_steps", lambda c, steps, observed=None: count_steps(c, steps))
    for mode in ("all", "curated"):
        texts.clear()
        export([str(tmp_path / "in")], tmp_path / f"every-{mode}", ExportOptions(mode=mode, jobs=1, **QUIET),
               counter=Counting())
        assert _outputs(tmp_path / f"every-{mode}") == cheap[mode][0], mode
        assert cheap[mode][1] < len(texts), mode
    assert base.count_many(["a b", "a b", "c"]) == [base.count("a b")] * 2 + [base.count("c")]
