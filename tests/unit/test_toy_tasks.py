"""Toy tasks, tokenizer and model maker."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from slime_rl.toy.model import make_toy_model
from slime_rl.toy.tasks import fabricated_answer, is_correct, make_rows, write_dataset
from slime_rl.toy.tokenizer import make_char_tokenizer


def test_make_rows_same_seed_same_rows_and_labels_are_right():
    rows = make_rows("addition", 20, seed=5)
    assert rows == make_rows("addition", 20, seed=5)
    assert rows != make_rows("addition", 20, seed=6)
    for row in rows:
        a, b = row["prompt"].rstrip("=").split("+")
        assert int(row["label"]) == int(a) + int(b)
    for row in make_rows("multiplication", 20, seed=5):
        a, b = row["prompt"].rstrip("=").split("*")
        assert int(row["label"]) == int(a) * int(b) and 10 <= int(a) < 1000 and 10 <= int(b) < 100
    for row in make_rows("reversal", 20, seed=5):
        assert row["prompt"].startswith("rev ") and row["label"] == row["prompt"][4:-1][::-1]


def test_is_correct_checks_first_line():
    assert is_correct("addition", "432\njunk", "432")
    assert is_correct("addition", " 0432", "432")
    assert not is_correct("addition", "43", "432")
    assert not is_correct("addition", "x", "432")
    assert is_correct("reversal", "cba", "cba")
    assert not is_correct("reversal", "abc", "cba")


def test_write_dataset_writes_prompt_label_jsonl(tmp_path):
    path = write_dataset(tmp_path / "d.jsonl", make_rows("reversal", 4, seed=0))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == make_rows("reversal", 4, seed=0)


def test_char_tokenizer_round_trips_and_prepends_bos():
    tok = make_char_tokenizer()
    ids = tok("12+3=\nab")["input_ids"]
    assert ids[0] == tok.bos_token_id == 1 and len(ids) == 9
    assert tok.decode(ids, skip_special_tokens=True) == "12+3=\nab"
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 2)


def test_make_toy_model_is_seeded_and_loads_with_auto_classes(tmp_path):
    make_toy_model(tmp_path / "a", seed=1)
    make_toy_model(tmp_path / "b", seed=1, arch="qwen2")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    a2 = AutoModelForCausalLM.from_pretrained(make_toy_model(tmp_path / "a2", seed=1))
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert type(a).__name__ == "LlamaForCausalLM" and type(b).__name__ == "Qwen2ForCausalLM"
    assert a.config.num_key_value_heads < a.config.num_attention_heads
    torch.testing.assert_close(a.state_dict(), a2.state_dict())
    assert AutoTokenizer.from_pretrained(tmp_path / "a").eos_token_id == a.config.eos_token_id


def test_unanswerable_rows_miss_an_operand_and_leave_the_others_unchanged():
    plain = make_rows("addition", 400, seed=1)
    mixed = make_rows("addition", 400, seed=1, unanswerable_prob=0.25, abstain_answer="unknown")
    hidden = [m for m in mixed if m["label"] == "unknown"]
    assert 60 < len(hidden) < 140  # Binomial(400, 0.25): 100 +- 4.6 standard deviations
    for row, original in zip(mixed, plain, strict=True):
        if row["label"] == "unknown":
            a, b = row["prompt"].rstrip("=").split("+")
            assert (a == "?") != (b == "?") and {a, b} - {"?"} <= set(original["prompt"].rstrip("=").split("+"))
        else:
            assert row == original  # the answerable rows are those of unanswerable_prob=0
    with pytest.raises(ValueError, match="need an arithmetic task"):
        make_rows("reversal", 4, seed=0, unanswerable_prob=0.5, abstain_answer="unknown")


def test_fabricated_answer_guesses_the_missing_operand():
    rng = random.Random(0)
    for _ in range(50):
        answer = int(fabricated_answer("47+?=", rng))
        assert 47 <= answer < 47 + 1000
        product = int(fabricated_answer("?*12=", rng))
        assert product % 12 == 0
