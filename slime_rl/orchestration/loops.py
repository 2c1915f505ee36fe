"""Training loops. `sync`: generate batch k with weights θ_k, train, publish θ_{k+1} (DESIGN.md §3).

A loop step returns one flat metrics record; the driver logs it. Time is split into rollout, train,
weight sync and other (the remainder: buffer reads, advantages, eval, checkpoints, logging).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray

from slime_rl.buffer.store import Batch, RedisBuffer
from slime_rl.config.root import SlimeRLConfig
from slime_rl.orchestration.batches import make_train_batches
from slime_rl.orchestration.train_group import TrainGroup

logger = logging.getLogger(__name__)

TRAINER_CONSUMER = "trainer-0"


@dataclass
class LoopContext:
    """What a loop drives: the rollout actor, the trainer group, the buffer and the engines' URLs."""

    cfg: SlimeRLConfig
    rollout: ray.actor.ActorHandle  # RolloutWorker
    trainers: TrainGroup
    buffer: RedisBuffer
    engine_urls: list[str]


def read_step_batch(buffer: RedisBuffer, num_groups: int, trainer_version: int, timeout_s: float = 600.0) -> Batch:
    """Read `num_groups` groups through the consumer group, waiting up to `timeout_s` for them to arrive."""
    return buffer.read_batch(
        TRAINER_CONSUMER, num_groups, block_ms=int(timeout_s * 1000), trainer_version=trainer_version
    )


def train_on_batch(ctx: LoopContext, batch: Batch, step: int) -> dict[str, float]:
    """Advantages, DP split, one optimizer step on every rank, then acknowledge the batch."""
    batches = make_train_batches(batch.groups, ctx.cfg.algorithm, dp_size=ctx.cfg.trainer.data_parallel_size, step=step)
    metrics = ctx.trainers.train(batches)
    ctx.buffer.ack(batch)  # only after the optimizer step committed: a crash before this re-delivers
    return metrics


def publish(ctx: LoopContext, version: int) -> dict[str, float]:
    metrics = ctx.trainers.publish_weights(ctx.engine_urls, version)
    ctx.buffer.set_version(version)
    return metrics


def sync_step(ctx: LoopContext, step: int) -> dict[str, float]:
    """One synchronous step: rollout with θ_step, train, publish θ_{step+1}."""
    version = step
    t0 = time.perf_counter()
    rollout_metrics = ray.get(ctx.rollout.generate.remote(version))
    t1 = time.perf_counter()
    batch = read_step_batch(ctx.buffer, ctx.cfg.rollout.rollout_batch_size, version)
    train_metrics = train_on_batch(ctx, batch, step)
    t2 = time.perf_counter()
    publish_metrics = publish(ctx, version + 1)
    t3 = time.perf_counter()
    num_tokens = sum(s.num_tokens for g in batch.groups for s in g.samples)
    return {
        **rollout_metrics,
        **train_metrics,
        **publish_metrics,
        "perf/rollout_time_s": t1 - t0,
        "perf/train_time_s": t2 - t1,
        "perf/weight_sync_time_s": t3 - t2,
        "perf/step_tokens_per_s": num_tokens / (t3 - t0),
        "train/groups": float(len(batch.groups)),
    }


LOOPS: dict[str, Callable[[LoopContext, int], dict[str, float]]] = {"sync": sync_step}
