"""Policy model settings (`model` group) and the pre-flight check that `model.path` is a model directory."""

from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from slime_rl.errors import ConfigError


@dataclass
class ModelConfig:
    path: str = MISSING  # HuggingFace model directory (config.json, safetensors, tokenizer)
    dtype: str = "float32"  # float32 | bfloat16 | float16; CPU training needs float32


def check_model_path(cfg: ModelConfig) -> None:
    """Fail before any service starts unless `model.path` is a HuggingFace directory with config and weights.

    Not a `__post_init__` check: an experiment may create the model after the config is loaded (the toy
    experiment writes it into the run directory), so the driver calls this once the run is prepared.
    """
    path = Path(cfg.path)
    fix = "set model.path=<HuggingFace model directory>, or use experiment=toy for the built-in toy model"
    if not path.is_dir():
        raise ConfigError(f"model.path={cfg.path!r} does not exist; {fix}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path={cfg.path!r} has no config.json; {fix}")
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"model.path={cfg.path!r} has no *.safetensors weights; {fix}")
