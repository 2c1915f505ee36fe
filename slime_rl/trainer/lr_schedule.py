"""The learning-rate schedule of RL training: Megatron's `OptimizerParamScheduler` built from `trainer.*`.

Warm-up from `lr_warmup_init` to `lr` over `lr_warmup_steps` optimizer steps, then `lr_decay_style` (constant,
linear, cosine or inverse-square-root) down to `min_lr` at `lr_decay_steps`, `min_lr` after that. Steps count RL
optimizer steps only (`num_steps_per_batch` per training step); a supervised warm-up (the `sft` stage) sets its
own rate and the schedule takes over again at the next RL step. Its position is checkpointed with the optimizer.
"""

from __future__ import annotations

from typing import Any

from slime_rl.config.trainer import TrainerConfig


def run_lr_decay_steps(trainer: TrainerConfig, num_train_steps: int) -> int:
    """`trainer.lr_decay_steps`, or every RL optimizer step of a run of `num_train_steps` training steps."""
    if trainer.lr_decay_steps is not None:
        return trainer.lr_decay_steps
    return max(num_train_steps * trainer.num_steps_per_batch, trainer.lr_warmup_steps + 1)


def make_lr_schedule(optimizer: Any, cfg: TrainerConfig, decay_steps: int) -> Any:
    """The schedule over `optimizer`'s param groups; it sets their rate for step 0 now.

    The config wins over a checkpoint's schedule settings (a resumed run may extend `mode.num_steps`, which moves
    the decay's end); only the step count comes from the checkpoint.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=cfg.lr_warmup_init,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.lr_warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=cfg.lr_decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
    )
