"""The context length the rollout worker checks prompts against: what the engines declare, else the model's."""

from __future__ import annotations

from transformers import LlamaConfig

from slime_rl.engines.protocol import served_context_len
from slime_rl.orchestration.rollout_worker import context_len


def test_served_context_len_reads_native_and_sglang_keys():
    assert served_context_len({"max_context_len": 512, "context_length": None}) == 512  # native engine
    assert served_context_len({"context_length": 4096}) == 4096  # SGLang started with --context-length
    assert served_context_len({"context_length": None}) is None  # SGLang serving the model's own limit


def test_context_len_is_the_smallest_any_engine_declares(tmp_path):
    LlamaConfig(max_position_embeddings=300).save_pretrained(tmp_path)

    assert context_len(str(tmp_path), [{"max_context_len": 512}, {"max_context_len": 256}]) == 256


def test_context_len_falls_back_to_the_model_positions_when_no_engine_declares(tmp_path):
    LlamaConfig(max_position_embeddings=300).save_pretrained(tmp_path)

    assert context_len(str(tmp_path), [{"context_length": None}]) == 300
