"""Tiny random HF models of the Qwen3, Qwen3-MoE and Llama 3 families, written as HF directories (no hub access).

Norm weights are perturbed away from HF's all-ones init, so swapping Qwen3's q_norm and k_norm (or dropping
them) changes the logits. The Llama 3 model uses `rope_type: llama3` with `original_max_position_embeddings=64`,
so the frequency scaling moves the rotary angles within a test's short sequences. The Qwen3-MoE model routes each
token to 2 of 4 experts with renormalised probabilities (`norm_topk_prob`, as Qwen3-30B-A3B).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config, Qwen3MoeConfig

from slime_rl.toy.tokenizer import make_char_tokenizer

FAMILIES = ("qwen3", "qwen3_moe", "llama3")
# Llama 3's rope scaling with a short original context, so that the scaling changes positions the tests reach.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def make_family_model(path: Path, family: str, *, seed: int = 0) -> Path:
    """Write a tiny random `family` model (config, safetensors, char tokenizer) to `path`; returns `path`."""
    tokenizer = make_char_tokenizer()
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 96,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "qwen3":  # as Qwen3-0.6B: head_dim set apart from hidden/heads, tied embeddings
        config = Qwen3Config(**common, head_dim=32, tie_word_embeddings=True)
    elif family == "qwen3_moe":
        experts = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48, "norm_topk_prob": True}
        config = Qwen3MoeConfig(**common, **experts, head_dim=32, tie_word_embeddings=False)
    else:
        config = LlamaConfig(**common, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.2 * torch.randn_like(param))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    return path
