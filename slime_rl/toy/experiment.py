"""Materialise the toy experiment on disk: the model directory and the train/eval datasets.

Idempotent: files that exist are kept, so a resumed run reuses its model and data.
"""

from __future__ import annotations

import logging
from pathlib import Path

from slime_rl.config.toy import ToyConfig
from slime_rl.toy.model import make_toy_model
from slime_rl.toy.tasks import write_dataset

logger = logging.getLogger(__name__)

_EVAL_SEED_OFFSET = 1_000_003  # eval rows come from a different seed than training rows


def prepare_toy(cfg: ToyConfig, *, model_path: Path, train_path: Path, eval_path: Path | None, seed: int) -> None:
    """Write the toy model to `model_path` and the datasets to `train_path` / `eval_path` (if any) unless present."""
    if not (model_path / "config.json").is_file():
        make_toy_model(model_path, arch=cfg.arch, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, seed=seed)
    if not train_path.is_file():
        write_dataset(train_path, cfg.task, cfg.num_train_prompts, seed)
    if eval_path is not None and not eval_path.is_file():
        write_dataset(eval_path, cfg.task, cfg.num_eval_prompts, seed + _EVAL_SEED_OFFSET)
    logger.info("toy %s task: model %s, data %s", cfg.task, model_path, train_path.parent)
