"""HF <-> Megatron weight conversion: exact round trips, QKV/fc1 layouts and TP sharding worked by hand."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from slime_rl.trainer import hf_convert
from slime_rl.trainer.model import arch_from_hf

SIZES = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 37,  # odd: padded to 38 at TP=2
}


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(**SIZES)
        return config, LlamaForCausalLM(config).state_dict()
    config = Qwen2Config(**SIZES, tie_word_embeddings=True)
    state = Qwen2ForCausalLM(config).state_dict()
    state.pop("lm_head.weight")
    return config, state


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("tp_size", [1, 2])
def test_hf_convert_round_trip_through_tp_shards_is_exact(kind, tp_size):
    config, hf = _model(kind)
    arch = arch_from_hf(config)
    full = hf_convert.hf_to_megatron_full(hf, arch, tp_size)
    shards = {n: [hf_convert.shard(n, t, tp_rank=r, tp_size=tp_size) for r in range(tp_size)] for n, t in full.items()}
    merged = {n: hf_convert.unshard(n, s) for n, s in shards.items()}
    back = hf_convert.megatron_full_to_hf(merged, arch)
    assert back.keys() == hf.keys()
    for name, tensor in hf.items():
        assert torch.equal(back[name], tensor), name


def test_hf_convert_qkv_rows_are_queries_then_key_then_value_per_group():
    config, hf = _model("qwen2")
    arch = arch_from_hf(config)
    dim = arch.head_dim  # 8; 2 groups of 2 query heads
    q = hf["model.layers.0.self_attn.q_proj.bias"]
    k = hf["model.layers.0.self_attn.k_proj.bias"]
    v = hf["model.layers.0.self_attn.v_proj.bias"]
    qkv = hf_convert.hf_to_megatron_full(hf, arch, 1)["decoder.layers.0.self_attention.linear_qkv.bias"]
    expected = torch.cat([q[: 2 * dim], k[:dim], v[:dim], q[2 * dim :], k[dim:], v[dim:]])
    assert torch.equal(qkv, expected)


def test_hf_convert_fc1_shard_holds_its_gate_and_up_slices():
    gate, up = torch.arange(8.0).reshape(4, 2), 100 + torch.arange(8.0).reshape(4, 2)
    full = torch.cat([gate, up])
    shard = hf_convert.shard("decoder.layers.0.mlp.linear_fc1.weight", full, tp_rank=1, tp_size=2)
    assert torch.equal(shard, torch.cat([gate[2:], up[2:]]))


def test_hf_convert_pads_vocab_rows_with_zeros_and_strips_them():
    config, hf = _model("llama")
    full = hf_convert.hf_to_megatron_full(hf, arch_from_hf(config), 2)
    embedding = full["embedding.word_embeddings.weight"]
    assert embedding.shape[0] == 38 and torch.equal(embedding[37], torch.zeros(32))


def test_hf_convert_split_dims_follow_megatron_parallel_linears():
    assert hf_convert.tp_split_dim("decoder.layers.3.self_attention.linear_qkv.weight") == 0
    assert hf_convert.tp_split_dim("decoder.layers.3.self_attention.linear_proj.weight") == 1
    assert hf_convert.tp_split_dim("decoder.layers.3.mlp.linear_fc2.weight") == 1
    assert hf_convert.tp_split_dim("decoder.layers.3.input_layernorm.weight") is None
    assert (
        hf_convert.to_global_name("decoder.layers.1.mlp.linear_fc2.weight", 4)
        == "decoder.layers.5.mlp.linear_fc2.weight"
    )
