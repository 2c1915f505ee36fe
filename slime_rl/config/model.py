"""Policy model settings (`model` group)."""

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class ModelConfig:
    path: str = MISSING  # HuggingFace model directory (config.json, safetensors, tokenizer)
    dtype: str = "float32"  # float32 | bfloat16 | float16; CPU training needs float32
