"""Toy tasks, tokenizer and model maker."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from slime_rl.toy.model import make_toy_model
from slime_rl.toy.tasks import is_correct, make_rows, write_dataset
from slime_rl.toy.tokenizer import make_char_tokenizer


def test_make_rows_same_seed_same_rows_and_labels_are_right():
    rows = make_rows("addition", 20, seed=5)
    assert rows == make_rows("addition", 20, seed=5)
    assert rows != make_rows("addition", 20, seed=6)
    for row in rows:
        a, b = row["prompt"].rstrip("=").split("+")
        assert int(row["label"]) == int(a) + int(b)
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
    path = write_dataset(tmp_path / "d.jsonl", "reversal", 4, seed=0)
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
