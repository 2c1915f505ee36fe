"""The RL learning-rate schedule (trainer/lr_schedule.py): Megatron's scheduler driven by `trainer.*`."""

from __future__ import annotations

import math

import pytest
import torch

from slime_rl.config.trainer import TrainerConfig
from slime_rl.errors import ConfigError
from slime_rl.trainer.lr_schedule import make_lr_schedule, run_lr_decay_steps


def rates(cfg: TrainerConfig, decay_steps: int, num_steps: int) -> list[float]:
    """The rate each of `num_steps` optimizer steps runs at, stepping the schedule as the trainer does."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    schedule = make_lr_schedule(optimizer, cfg, decay_steps)
    seen = []
    for _ in range(num_steps):
        schedule.step(0)
        seen.append(optimizer.param_groups[0]["lr"])
        schedule.step(1)
    return seen


def test_warmup_then_cosine_to_min_lr_then_min_lr():
    cfg = TrainerConfig(lr=1.0, min_lr=0.1, lr_decay_style="cosine", lr_warmup_steps=2)
    got = rates(cfg, decay_steps=6, num_steps=8)
    # warm-up 0 -> 1 over 2 steps; then cosine over steps 2..6: 0.1 + 0.9 * (1 + cos(pi * k / 4)) / 2
    cosine = [0.1 + 0.9 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(1, 5)]
    assert got == pytest.approx([0.0, 0.5, 1.0, *cosine, 0.1])


def test_linear_decay_and_constant():
    linear = TrainerConfig(lr=1.0, min_lr=0.0, lr_decay_style="linear")
    assert rates(linear, decay_steps=4, num_steps=5) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert rates(TrainerConfig(lr=0.5), decay_steps=3, num_steps=4) == [0.5] * 4


def test_decay_steps_default_to_every_rl_optimizer_step_of_the_run():
    assert run_lr_decay_steps(TrainerConfig(num_steps_per_batch=2), num_train_steps=10) == 20
    assert run_lr_decay_steps(TrainerConfig(lr_decay_steps=7), num_train_steps=10) == 7
    assert run_lr_decay_steps(TrainerConfig(lr_warmup_steps=5), num_train_steps=0) == 6  # Megatron: warm-up < decay


def test_resumed_schedule_continues_from_the_checkpointed_step_under_the_new_settings():
    cfg = TrainerConfig(lr=1.0, min_lr=0.0, lr_decay_style="linear")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    first = make_lr_schedule(optimizer, cfg, 4)
    first.step(2)
    resumed = make_lr_schedule(optimizer, cfg, 8)  # the run was extended: the decay ends later
    resumed.load_state_dict(first.state_dict())
    resumed.step(0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0 - 2 / 8)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lr_decay_style": "exp"}, "trainer.lr_decay_style"),
        ({"min_lr": 1e-6}, "takes effect only with a decaying schedule"),
        ({"lr": 1e-5, "min_lr": 1e-4, "lr_decay_style": "cosine"}, "must lie in"),
        ({"lr_warmup_steps": 4, "lr_decay_steps": 4}, "must exceed trainer.lr_warmup_steps"),
        ({"lr_warmup_steps": -1}, "trainer.lr_warmup_steps"),
    ],
)
def test_schedule_settings_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        TrainerConfig(**overrides)
