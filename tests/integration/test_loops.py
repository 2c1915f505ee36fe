"""The trainer's read of a step's batch (`loops.read_step_batch`) against a real Redis buffer."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from slime_rl.buffer.store import RedisBuffer
from slime_rl.config import load_config
from slime_rl.errors import ServiceError
from slime_rl.orchestration.loops import LoopContext, read_step_batch
from slime_rl.types import Group, Sample, Status


def _finished_group(name: str) -> Group:
    sample = Sample(uid=f"{name}-0", group_id=name, index=0, prompt_ids=np.arange(3))
    sample.append_tokens(np.array([5]), np.array([-0.5]), version=0)
    sample.status = Status.COMPLETED
    return Group(group_id=name, samples=[sample])


@pytest.fixture
def ctx(redis_url):
    cfg = load_config(["rollout.rollout_batch_size=3", "mode.batch_timeout_s=0.3"])
    buffer = RedisBuffer.from_url(redis_url, f"test-{uuid.uuid4().hex[:8]}")
    yield LoopContext(cfg=cfg, rollout=None, trainers=None, buffer=buffer)
    buffer.clear()
    buffer.close()


def _publish(buffer: RedisBuffer, names: list[str]) -> None:
    buffer.put_prompts([_finished_group(n) for n in names])
    buffer.publish(buffer.take_groups(len(names)), version=0)


def test_read_step_batch_returns_the_full_batch(ctx):
    _publish(ctx.buffer, ["a", "b", "c", "d"])
    batch = read_step_batch(ctx, step=0)
    assert [g.group_id for g in batch.summaries] == ["a", "b", "c"]


def test_read_step_batch_short_after_the_timeout_is_an_error_naming_the_key(ctx):
    _publish(ctx.buffer, ["a"])
    with pytest.raises(ServiceError, match=r"waited 0 s \(mode.batch_timeout_s\) for 3 groups and got 1"):
        read_step_batch(ctx, step=0)


def test_read_step_batch_raises_the_rollout_sides_error_while_waiting(ctx):
    def failed_rollout() -> None:
        raise ServiceError("stream ended: 17 groups failed on the engines")

    with pytest.raises(ServiceError, match="17 groups failed"):
        read_step_batch(ctx, step=0, check_rollout=failed_rollout)
