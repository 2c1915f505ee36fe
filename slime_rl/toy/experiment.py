"""Materialise the toy experiment on disk: the model directory, the train/eval datasets and the SFT
demonstrations. `experiment=toy` runs it as the `prepare` hook (`prepare.path=slime_rl.toy.experiment:prepare`)
with its settings in `prepare.args` (`slime_rl.toy.config.ToyConfig`).

Idempotent: files that exist are kept, so a resumed run reuses its model and data.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

from slime_rl.config.root import SlimeRLConfig
from slime_rl.errors import ConfigError
from slime_rl.toy.config import ToyConfig, toy_config
from slime_rl.toy.model import make_toy_model
from slime_rl.toy.tasks import demonstration, make_rows, write_dataset

logger = logging.getLogger(__name__)

_EVAL_SEED_OFFSET = 1_000_003  # eval rows come from a different seed than training rows


def prepare(cfg: SlimeRLConfig) -> None:
    """The `prepare` hook: write the toy model to `model.path`, the datasets to `buffer.data.path` and
    `eval.path` (if set) and the demonstrations to `sft.path` (if set, with `sft.steps`), each unless present."""
    toy = toy_config(cfg.prepare.args)
    if not cfg.buffer.data.path:
        raise ConfigError("the toy experiment (prepare.path) needs buffer.data.path; experiment=toy sets it")
    model_path = Path(cfg.model.path)
    if not (model_path / "config.json").is_file():
        make_toy_model(model_path, arch=toy.arch, hidden_size=toy.hidden_size, num_layers=toy.num_layers, seed=cfg.seed)
    train_path = Path(cfg.buffer.data.path)
    if not train_path.is_file():
        write_dataset(train_path, toy.task, toy.num_train_prompts, cfg.seed)
    if cfg.eval.path and not Path(cfg.eval.path).is_file():
        write_dataset(cfg.eval.path, toy.task, toy.num_eval_prompts, cfg.seed + _EVAL_SEED_OFFSET)
    if cfg.sft.path and cfg.sft.steps and not Path(cfg.sft.path).is_file():
        num_demonstrations = cfg.sft.steps * cfg.sft.batch_size
        write_demonstrations(Path(cfg.sft.path), toy, num_demonstrations=num_demonstrations, seed=cfg.seed)
    logger.info("toy %s task: model %s, data %s", toy.task, model_path, train_path.parent)


def write_demonstrations(path: Path, toy: ToyConfig, *, num_demonstrations: int, seed: int) -> Path:
    """Write demonstration rows `{"prompt", "response"}` for the training prompts (`make_rows` with `seed`).

    Every training prompt gets the same number of demonstrations, at least `num_demonstrations` in all (what
    the SFT stage consumes, `sft.steps * sft.batch_size`, so no demonstration repeats), and each draws its own
    distractor with probability `toy.distractor_prob` (`tasks.demonstration`): as sloppy habits vary between
    the demonstrations of one prompt, the policy learns the arithmetic and the habit, not a per-prompt ending.
    """
    rows = make_rows(toy.task, toy.num_train_prompts, seed)
    copies = max(1, math.ceil(num_demonstrations / len(rows)))
    rng = random.Random(f"demonstrations:{seed}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(copies):
            for row in rows:
                response = demonstration(row["label"], rng, toy.distractor_prob)
                f.write(json.dumps({"prompt": row["prompt"], "response": response}) + "\n")
    return path
