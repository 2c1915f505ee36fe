"""`driver.resume`: weights and buffer start from the same point, against a real Redis buffer."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from slime_rl.buffer.store import RedisBuffer
from slime_rl.config import load_config
from slime_rl.orchestration.driver import BUFFER_STATE_FILE, resume, save_checkpoint
from slime_rl.orchestration.loops import LoopContext
from slime_rl.trainer.checkpoint import step_dir
from slime_rl.types import Group, Sample, Status


class FakeTrainers:
    """The TrainGroup calls `resume` and `save_checkpoint` make: a checkpoint is a `latest` step number."""

    def __init__(self) -> None:
        self.saved: int | None = None

    def load(self) -> int | None:
        return self.saved

    def save(self, step: int) -> None:
        self.saved = step


def _train_one_group(buffer: RedisBuffer, name: str) -> None:
    sample = Sample(uid=f"{name}-0", group_id=name, index=0, prompt_ids=np.arange(3))
    sample.append_tokens(np.array([5]), np.array([-0.5]), version=0)
    sample.status = Status.COMPLETED
    buffer.put_prompts([Group(group_id=name, samples=[sample])])
    buffer.publish(buffer.take_groups(1), version=0)
    buffer.ack(buffer.read_batch("trainer-0", 1, block_ms=0, trainer_version=0))


@pytest.fixture
def ctx(redis_url, tmp_path):
    cfg = load_config([f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}"])
    buffer = RedisBuffer.from_url(redis_url, f"test-{uuid.uuid4().hex[:8]}")
    yield LoopContext(cfg=cfg, rollout=None, trainers=FakeTrainers(), buffer=buffer)
    buffer.clear()
    buffer.close()


def test_resume_restores_the_buffer_saved_with_the_checkpoint(ctx):
    _train_one_group(ctx.buffer, "a")
    save_checkpoint(ctx.cfg, ctx, 1)
    assert (step_dir(ctx.cfg.trainer.checkpoint_dir, 1) / BUFFER_STATE_FILE).is_file()
    _train_one_group(ctx.buffer, "b")  # trained after the checkpoint, then the run died
    assert resume(ctx.cfg, ctx) == 1
    assert ctx.buffer.counters()["trained"] == 1


def test_resume_without_checkpoint_clears_a_buffer_that_was_trained_from(ctx):
    _train_one_group(ctx.buffer, "a")  # a run that died before its first checkpoint
    assert resume(ctx.cfg, ctx) is None
    assert ctx.buffer.snapshot()["issued"] == 0


def test_resume_without_checkpoint_keeps_a_buffer_nothing_trained_from(ctx):
    ctx.buffer.put_prompts([Group(group_id="p", samples=[Sample(uid="p-0", group_id="p", index=0, prompt_ids=[1])])])
    assert resume(ctx.cfg, ctx) is None
    assert ctx.buffer.snapshot()["prompts"] == 1


def test_resume_from_the_sft_stages_checkpoint_returns_step_0_not_a_fresh_start(ctx):
    save_checkpoint(ctx.cfg, ctx, 0)  # what the driver saves after the SFT stage
    _train_one_group(ctx.buffer, "a")  # trained after it, then the run died
    assert resume(ctx.cfg, ctx) == 0  # not None: the driver skips the SFT stage
    assert ctx.buffer.counters()["trained"] == 0
