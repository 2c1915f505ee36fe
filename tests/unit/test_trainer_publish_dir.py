"""Where disk weight publishing writes: inside the run dir, never a shared temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from slime_rl.config import TrainerConfig, load_config
from slime_rl.errors import ConfigError
from slime_rl.trainer.weight_sync import publish_dir


def test_publish_dir_defaults_to_the_checkpoint_dir():
    cfg = TrainerConfig(weight_sync="disk", checkpoint_dir="/runs/a/checkpoints")
    assert publish_dir(cfg) == Path("/runs/a/checkpoints/publish")


def test_publish_dir_explicit_folder_wins():
    cfg = TrainerConfig(weight_sync="disk", checkpoint_dir="/runs/a/checkpoints", weight_publish_dir="/shared/w")
    assert publish_dir(cfg) == Path("/shared/w")


def test_trainer_config_disk_sync_without_any_folder_is_rejected():
    with pytest.raises(ConfigError, match="trainer.weight_sync=disk .*trainer.weight_publish_dir"):
        TrainerConfig(weight_sync="disk")


def test_publish_dir_of_a_loaded_config_is_inside_the_run_dir():
    cfg = load_config(["trainer.weight_sync=disk", "name=abc"])
    assert publish_dir(cfg.trainer).is_relative_to(cfg.run_dir)
