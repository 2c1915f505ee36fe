"""HF <-> Megatron weight conversion: exact round trips, QKV/fc1 layouts and TP sharding worked by hand;
the architecture read from HF configs (Qwen3's q/k norm, Llama 3's RoPE frequencies)."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from slime_rl.engines.tensor_bucket import lies_after
from slime_rl.errors import ConfigError
from slime_rl.trainer import hf_convert
from slime_rl.trainer.model import arch_from_hf
from tests.integration.family_models import LLAMA3_ROPE

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
    if kind == "qwen3":
        config = Qwen3Config(**SIZES, head_dim=16)
        state = Qwen3ForCausalLM(config).state_dict()
        for name, tensor in state.items():  # q_norm and k_norm must not be interchangeable
            if name.endswith("norm.weight"):
                tensor.copy_(torch.randn_like(tensor))
        return config, state
    config = Qwen2Config(**SIZES, tie_word_embeddings=True)
    state = Qwen2ForCausalLM(config).state_dict()
    state.pop("lm_head.weight")
    return config, state


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
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


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_hf_convert_publishes_views_of_every_megatron_tensor_but_the_ones_named_copies(kind):
    # The trainer's parameter buffer puts `published_as_copy` tensors last so that the views lie back to back.
    config, hf = _model(kind)
    arch = arch_from_hf(config)
    full = hf_convert.hf_to_megatron_full(hf, arch, 1)
    storages = {t.untyped_storage().data_ptr() for t in hf_convert.megatron_full_to_hf(full, arch).values()}
    for name, tensor in full.items():
        assert hf_convert.published_as_copy(name) == (tensor.untyped_storage().data_ptr() not in storages), name


def test_hf_convert_splits_qkv_back_to_back_into_the_given_memory():
    config, hf = _model("qwen2")  # q/k/v with biases
    arch = arch_from_hf(config)
    full = hf_convert.hf_to_megatron_full(hf, arch, 1)
    fused = [name for name in full if hf_convert.published_as_copy(name)]
    split_into = torch.empty(sum(full[name].numel() for name in fused))
    out = hf_convert.megatron_full_to_hf(full, arch, split_into=split_into)
    for name, tensor in hf.items():
        assert torch.equal(out[name], tensor), name
    split = [t for name, t in out.items() if re.search(r"\.[qkv]_proj\.", name)]
    assert split[0].data_ptr() == split_into.data_ptr()
    assert all(lies_after(a, b) for a, b in pairwise(split))
    with pytest.raises(ValueError, match="split_into holds 3 torch.float32"):
        hf_convert.megatron_full_to_hf(full, arch, split_into=torch.empty(3))


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


def test_hf_convert_qwen3_qk_norms_map_to_megatron_qk_layernorms_replicated():
    config, hf = _model("qwen3")
    arch = arch_from_hf(config)
    assert arch.qk_layernorm and not arch.qkv_bias and arch.head_dim == 16
    full = hf_convert.hf_to_megatron_full(hf, arch, 2)
    q_norm = full["decoder.layers.1.self_attention.q_layernorm.weight"]
    assert torch.equal(q_norm, hf["model.layers.1.self_attn.q_norm.weight"])
    assert torch.equal(
        full["decoder.layers.1.self_attention.k_layernorm.weight"], hf["model.layers.1.self_attn.k_norm.weight"]
    )
    assert hf_convert.tp_split_dim("decoder.layers.1.self_attention.q_layernorm.weight") is None


def test_arch_llama3_rope_scales_frequencies_as_transformers_does():
    config = LlamaConfig(**SIZES, rope_parameters=LLAMA3_ROPE, max_position_embeddings=512)
    arch = arch_from_hf(config)
    dim = arch.head_dim
    plain = 1.0 / (500000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    expected = LlamaForCausalLM(config).model.rotary_emb.inv_freq
    scaled = arch.llama3_rope.scale(plain)
    torch.testing.assert_close(scaled, expected, rtol=0, atol=0)
    # Wavelength 2*pi: kept; 2*pi*500000**0.25 ~ 167 > 64: divided by the factor.
    assert scaled[0] == plain[0] and scaled[1] == plain[1] / 8


@pytest.mark.parametrize(
    "override",
    [
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
        {"hidden_act": "gelu"},
        {"use_sliding_window": True},
    ],
)
def test_arch_rejects_features_the_trainer_lacks(override):
    with pytest.raises(ConfigError):
        arch_from_hf(LlamaConfig(**SIZES, **override))
