"""`trainer.init_checkpoint` and `trainer.load_optimizer`: a run starts from another run's checkpoint.

The source run trains one step, saves it and takes one more (`source`). A run started from that checkpoint with
its optimizer takes exactly the source's next step (Adam's moments and step carried over) while its own step,
weight version and LR schedule start at 0; with `load_optimizer=false` it starts from the same weights but takes
a fresh optimizer's step.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from slime_rl.config import load_config
from slime_rl.errors import ConfigError
from slime_rl.trainer import checkpoint
from tests.integration.trainer_ranks import FIXED_OLD, make_batch, run_ranks, trainer_cfg

BATCH = make_batch(num_samples=8)
# The source's schedule decays linearly from 1e-2 over 4 steps, so its second step runs at 0.75e-2. A run from
# its checkpoint peaks at 0.75e-2 on the same decay: its fresh schedule gives that rate at step 0, where the
# source's schedule (step 1) would give 0.5625e-2 and the loaded param groups' peak (1e-2) would give 1e-2.
SCHEDULE = {"lr_decay_style": "linear", "lr_decay_steps": 4}
NEXT_LR = 0.75e-2


def _continue(trainer):
    """Log-probs now, one more step, log-probs after it."""
    before = np.concatenate(trainer.compute_logprobs(BATCH))
    metrics = trainer.train(BATCH)
    return {"logprobs": before, "next": metrics, "logprobs_after": np.concatenate(trainer.compute_logprobs(BATCH))}


def step_save_continue(trainer):
    trainer.train(BATCH)
    trainer.save(step=1)
    return _continue(trainer)


def load_continue(trainer):
    step = trainer.load()
    loaded = {"step": step, "version": trainer.version, "schedule_steps": trainer.lr_schedule.num_steps}
    return loaded | _continue(trainer) | {"version_after": trainer.version}


@pytest.fixture(scope="module")
def source(tied_qwen, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("source") / "ckpt"
    cfg = trainer_cfg(checkpoint_dir=str(ckpt), **SCHEDULE)
    (result,) = run_ranks(step_save_continue, model_path=tied_qwen, trainer_cfg=cfg, algo_cfg=FIXED_OLD)
    assert result["next"]["train/lr"] == pytest.approx(NEXT_LR)
    return SimpleNamespace(checkpoint_dir=ckpt, **result)


def _start_from(source, tied_qwen, tmp_path: Path, init_checkpoint: Path, **overrides):
    cfg = trainer_cfg(
        lr=NEXT_LR, checkpoint_dir=str(tmp_path / "own"), init_checkpoint=str(init_checkpoint), **SCHEDULE, **overrides
    )
    (result,) = run_ranks(load_continue, model_path=tied_qwen, trainer_cfg=cfg, algo_cfg=FIXED_OLD)
    assert (result["step"], result["version"], result["schedule_steps"]) == (None, 0, 0)
    assert result["version_after"] == 1
    assert result["next"]["train/lr"] == pytest.approx(NEXT_LR)
    np.testing.assert_allclose(result["logprobs"], source.logprobs, atol=1e-5)  # the source's weights
    return result


def test_init_checkpoint_with_optimizer_takes_the_source_runs_next_step(source, tied_qwen, tmp_path):
    # A checkpoint root: its `latest` names the step.
    result = _start_from(source, tied_qwen, tmp_path, source.checkpoint_dir)
    for key in ("train/loss", "train/kl", "train/entropy", "train/grad_norm"):
        assert result["next"][key] == pytest.approx(source.next[key], abs=1e-5), key
    np.testing.assert_allclose(result["logprobs_after"], source.logprobs_after, atol=1e-5)
    assert np.abs(source.logprobs_after - source.logprobs).max() > 1e-3  # the step moved the weights


def test_init_checkpoint_without_optimizer_takes_a_fresh_adam_step(source, tied_qwen, tmp_path):
    step_dir = checkpoint.step_dir(source.checkpoint_dir, 1)
    result = _start_from(source, tied_qwen, tmp_path, step_dir, load_optimizer=False)
    assert result["next"]["train/loss"] == pytest.approx(source.next["train/loss"], abs=1e-5)  # same weights
    # Fresh moments and step 1's bias correction: a different update from the same gradient.
    assert np.abs(result["logprobs_after"] - source.logprobs_after).max() > 1e-3


def test_resume_without_optimizer_crosses_optimizer_kinds(source, tied_qwen, tmp_path):
    ckpt = Path(shutil.copytree(source.checkpoint_dir, tmp_path / "ckpt"))
    cfg = trainer_cfg(checkpoint_dir=str(ckpt), use_distributed_optimizer=True, load_optimizer=False, **SCHEDULE)
    (result,) = run_ranks(load_continue, model_path=tied_qwen, trainer_cfg=cfg, algo_cfg=FIXED_OLD)
    assert (result["step"], result["version"], result["schedule_steps"]) == (1, 1, 1)  # a resume
    assert result["next"]["train/lr"] == pytest.approx(NEXT_LR)
    np.testing.assert_allclose(result["logprobs"], source.logprobs, atol=1e-5)
    assert result["next"]["train/loss"] == pytest.approx(source.next["train/loss"], abs=1e-5)


def test_init_checkpoint_missing_or_not_a_checkpoint_fails_at_load_with_the_path(tmp_path):
    missing = tmp_path / "nope" / "step_00000010"
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, reason in ((missing, "does not exist"), (empty, "is not a checkpoint")):
        with pytest.raises(ConfigError) as err:
            load_config([f"trainer.init_checkpoint={path}"])
        message = str(err.value)
        assert "\n" not in message
        assert f"trainer.init_checkpoint='{path}'" in message and reason in message
