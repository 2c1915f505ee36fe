"""A tiny, seeded Llama or Qwen2 causal LM saved as a normal HF directory (config, safetensors, tokenizer).

Owns the toy model's shape. The weights are random (seeded), so tests and the toy example run anywhere
without downloading anything; RL is what teaches the model its task.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

from slime_rl.toy.tokenizer import make_char_tokenizer

logger = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2")


def make_toy_model(
    path: str | Path,
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Write a seeded random `arch` model with the char tokenizer to `path`; returns `path`.

    Defaults give a ~0.1M-parameter GQA model (4 query heads sharing 2 K/V heads) in float32.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is unknown; choose one of {ARCHITECTURES}")
    tokenizer = make_char_tokenizer()
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "torch_dtype": "float32",
    }
    config: PretrainedConfig = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    logger.info("wrote toy %s model (%d params) to %s", arch, sum(p.numel() for p in model.parameters()), out)
    return out
