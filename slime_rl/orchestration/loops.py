"""Training loops (DESIGN.md §3). Each loop object runs one training step per `step()` call.

- `sync`: generate batch k with θ_k, train, publish θ_{k+1}.
- `one_step_async`: generation of batch k+1 (with θ_k) overlaps training on batch k; weights change only
  between generations, so every batch is exactly one version old.
- `fully_async`: the rollout side generates continuously under AReaL's staleness bound η
  (`mode.max_staleness`); the trainer takes batches as they stream in; each weight publish pauses the
  engines, and interrupted requests continue from their tokens under the new weights.

A step returns one flat metrics record; the driver logs it. Time is split into rollout (time the trainer
waits for data), train, weight sync and other.

The trainer waits at most `mode.batch_timeout_s` for a step's groups; a short batch is an error that says
what the buffer holds, never a smaller step. `quiesced()` brings the rollout side to rest for a checkpoint:
nothing in flight, so the buffer saved beside the weights is exactly the state they continue from.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import ray

from slime_rl.buffer.store import Batch, RedisBuffer
from slime_rl.config.root import SlimeRLConfig
from slime_rl.errors import ServiceError
from slime_rl.observability.watchdog import Watchdog
from slime_rl.orchestration.batches import plan_train_shares
from slime_rl.orchestration.engine_health import EngineMonitor
from slime_rl.orchestration.engines import AWAITING_SYNC, EngineFleet
from slime_rl.orchestration.rollout_worker import StreamNotRunning
from slime_rl.orchestration.train_group import TrainGroup

logger = logging.getLogger(__name__)

TRAINER_CONSUMER = "trainer-0"


@dataclass
class LoopContext:
    """What a loop drives: the rollout actor, the trainer group, the buffer and the engines.

    `fleet` is None only where no engine takes part (tests of the buffer side); `monitor` is None when
    `engine.fault_tolerance` is off; `watchdog` is None where nothing watches for hangs. `version` is the
    weight version last published to the engines.
    """

    cfg: SlimeRLConfig
    rollout: ray.actor.ActorHandle  # RolloutWorker
    trainers: TrainGroup
    buffer: RedisBuffer
    fleet: EngineFleet | None = None
    monitor: EngineMonitor | None = None
    watchdog: Watchdog | None = None
    version: int = 0

    def stage(self, description: str) -> None:
        """Tell the watchdog what the driver waits on next (it names the stage if the run hangs there)."""
        if self.watchdog is not None:
            self.watchdog.stage(description)


READ_POLL_S = 2.0  # seconds between checks of the rollout side while the trainer waits for data
ROLLOUT_WORKER_RESTARTS = 3  # times Ray restarts a rollout worker that died, per run
RESTART_POLL_S, RESTART_WAIT_S = 0.5, 300.0  # how often, and how long, to call a restarting rollout worker
T = TypeVar("T")


def read_step_batch(ctx: LoopContext, step: int, check_rollout: Callable[[], None] | None = None) -> Batch:
    """Read the step's `rollout_batch_size` groups through the consumer group.

    Waits up to `mode.batch_timeout_s`, calling `check_rollout` (which raises if the rollout side failed)
    every `READ_POLL_S`; raises `ServiceError` naming what the buffer holds if the batch is still short.
    """
    cfg = ctx.cfg
    need = cfg.rollout.rollout_batch_size
    deadline = time.monotonic() + cfg.mode.batch_timeout_s
    batch = Batch(summaries=[], entry_ids=[], versions=[])
    while len(batch.summaries) < need:
        wait_s = min(READ_POLL_S, max(deadline - time.monotonic(), 0.0))
        batch.extend(ctx.buffer.read_batch(TRAINER_CONSUMER, need - len(batch.summaries), int(wait_s * 1000), step))
        if check_rollout is not None:
            check_rollout()
        sync_restarted_engines(ctx)  # before the step's optimizer update, the trainer holds ctx.version
        if len(batch.summaries) < need and time.monotonic() >= deadline:
            stats = ctx.buffer.snapshot()
            raise ServiceError(
                f"step {step}: the trainer waited {cfg.mode.batch_timeout_s:.0f} s (mode.batch_timeout_s) for "
                f"{need} groups and got {len(batch.summaries)}; the buffer has {stats['in_flight']} groups in flight, "
                f"{stats['partials']} partials, {stats['prompts']} prompts, dropped_filter={stats['dropped_filter']}, "
                f"dropped_stale={stats['dropped_stale']}. Check the rollout log and the engines' logs, or raise "
                "mode.batch_timeout_s"
            )
    return batch


def staleness_metrics(batch: Batch, trainer_version: int) -> dict[str, float]:
    """Histogram of how many versions each trained group's oldest token lags the trained policy."""
    lags = Counter(trainer_version - group.oldest_version for group in batch.summaries)
    return {"async/staleness_max": float(max(lags, default=0))} | {
        f"async/staleness_{lag}": float(count) for lag, count in sorted(lags.items())
    }


def batch_reward_metrics(batch: Batch) -> dict[str, float]:
    """Reward and length statistics of the trained batch (the streaming loop has no per-step rollout record)."""
    rewards = np.array([r for g in batch.summaries for r in g.rewards])
    lengths = np.array([n for g in batch.summaries for n in g.response_lens])
    if not len(rewards):
        return {}
    return {
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/reward_std": float(rewards.std()),
        "rollout/response_len_mean": float(lengths.mean()),
        "rollout/response_len_max": float(lengths.max()),
    }


def train_on_batch(ctx: LoopContext, batch: Batch, step: int) -> dict[str, float]:
    """Advantages, DP split, one optimizer step on every rank, then acknowledge the batch.

    The driver handles the batch's summaries only; each rank reads its share's groups from the buffer.
    `driver/bytes_read` and `driver/bytes_sent` count what passed through the driver for this step.
    """
    shares = plan_train_shares(
        batch,
        ctx.cfg.algorithm,
        dp_size=ctx.cfg.trainer.data_parallel_size,
        step=step,
        partial_policy=ctx.cfg.rollout.partial_policy,
    )
    metrics = ctx.trainers.train(shares)
    ctx.buffer.ack(batch)  # only after the optimizer step committed: a crash before this re-delivers
    num_tokens = sum(n for g in batch.summaries for n in g.num_tokens)
    return (
        metrics
        | staleness_metrics(batch, step)
        | {
            "train/groups": float(len(batch.summaries)),
            "train/tokens": num_tokens,
            "driver/bytes_read": float(batch.bytes_read),
        }
    )


def generated(ctx: LoopContext, ref: ray.ObjectRef, step: int, *, before_update: bool) -> dict[str, float]:
    """The metrics of `RolloutWorker.generate(step)` started as `ref`, once it has published the batch.

    `before_update`: the trainer still holds the published weights, so restarted engines are synced while
    waiting (a lone engine that died must come back for the generation to finish).

    If the rollout worker dies meanwhile, Ray restarts it (up to `ROLLOUT_WORKER_RESTARTS` times) and the
    restarted worker generates the groups still missing: the dead worker's published groups stay in the
    buffer, its taken groups come back when their lease expires (`buffer.lease_s`). Counting what is
    missing from the stream's length needs the stream to hold only this batch's groups, which holds where
    the loops call this: after the trainer acknowledged every earlier batch.
    """
    deaths = 0
    while True:
        try:
            while before_update and not ray.wait([ref], timeout=READ_POLL_S)[0]:
                sync_restarted_engines(ctx)
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            if isinstance(err, ray.exceptions.ActorUnavailableError):  # dying or restarting: ask again soon
                time.sleep(RESTART_POLL_S)
            else:
                deaths += 1
                if deaths > ROLLOUT_WORKER_RESTARTS:
                    raise
            missing = max(ctx.cfg.rollout.rollout_batch_size - ctx.buffer.queue_lengths()["samples"], 0)
            logger.warning("the rollout worker failed generating step %d (%s); %d groups to go", step, err, missing)
            ref = ctx.rollout.generate.remote(step, missing)


def publish(ctx: LoopContext, version: int) -> dict[str, float]:
    """Send the trainer's weights to every serving engine as `version`, then to restarted ones.

    With fault tolerance, a publish that fails because an engine died (the monitor, asked again, takes
    it out) is repeated on the engines still serving; the dead one is synced once it is back. Without,
    or when no engine went down, the error ends the step.
    """
    assert ctx.fleet is not None, "publishing needs the engines"
    metrics: dict[str, float] = {}
    for attempt in range(ctx.cfg.engine.num_engines + 1):
        urls = ctx.fleet.serving_urls()
        if not urls:
            logger.warning("no engine serves; version %d goes to each engine when it is back", version)
            break
        try:
            metrics = ctx.trainers.publish_weights(urls, version)
            break
        except ServiceError as err:
            if ctx.monitor is None or attempt == ctx.cfg.engine.num_engines:
                raise
            ctx.monitor.check()
            if set(ctx.fleet.serving_urls()) == set(urls):
                raise
            logger.warning("publish of version %d met an engine that went down (%s); publishing again", version, err)
    ctx.buffer.set_version(version)
    ctx.version = version
    sync_restarted_engines(ctx)
    return metrics | {"engines/serving": float(len(ctx.fleet.serving_urls()))}


def sync_restarted_engines(ctx: LoopContext) -> None:
    """Send weights `ctx.version` to the engines that were restarted and put them back in service.

    Call only where the trainer holds exactly the weights of `ctx.version`: after a publish and before the
    next optimizer step. An engine that fails its sync stays out; the monitor decides whether it is dead.
    """
    if ctx.fleet is None:
        return
    urls = ctx.fleet.urls_in(AWAITING_SYNC)
    if not urls:
        return
    try:
        ctx.trainers.publish_weights(urls, ctx.version)
    except ServiceError as err:
        logger.warning("weight sync of restarted engines %s failed; trying again later: %s", urls, err)
        return
    for url in urls:
        ctx.fleet.put_back(url, ctx.version)


def timing(rollout_s: float, train_s: float, sync_s: float, train_metrics: dict[str, float]) -> dict[str, float]:
    total = rollout_s + train_s + sync_s
    return {
        "perf/rollout_time_s": rollout_s,
        "perf/train_time_s": train_s,
        "perf/weight_sync_time_s": sync_s,
        "perf/step_tokens_per_s": train_metrics.get("train/tokens", 0.0) / max(total, 1e-9),
    }


class SyncLoop:
    """Generate with θ_k, train, publish θ_{k+1}: every batch is on-policy."""

    def __init__(self, ctx: LoopContext, start_step: int) -> None:
        self.ctx = ctx
        waiting = ctx.buffer.queue_lengths()["samples"]
        if waiting:
            raise ServiceError(
                f"the buffer of run {ctx.buffer.run_id!r} already holds {waiting} published groups that no "
                "checkpoint accounts for; sync mode trains only the batch it just generated. Resume from the "
                "checkpoint of the run that left them (trainer.load_checkpoint=true) or start under a new "
                "buffer.run_id"
            )

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        self.ctx.stage(f"step {step}: waiting for RolloutWorker.generate")
        rollout_metrics = generated(self.ctx, self.ctx.rollout.generate.remote(step), step, before_update=True)
        t1 = time.perf_counter()
        self.ctx.stage(f"step {step}: reading the batch from the buffer")
        batch = read_step_batch(self.ctx, step)
        # Invariant: the rollout side publishes one step's groups under that step's version and the buffer
        # held nothing before (checked at start), so the oldest groups are the ones just generated.
        assert all(v == step for v in batch.versions), f"sync step {step} read groups of versions {batch.versions}"
        self.ctx.stage(f"step {step}: training (TrainerRank.train)")
        train_metrics = train_on_batch(self.ctx, batch, step)
        t2 = time.perf_counter()
        self.ctx.stage(f"step {step}: publishing weights version {step + 1}")
        publish_metrics = publish(self.ctx, step + 1)
        t3 = time.perf_counter()
        return rollout_metrics | train_metrics | publish_metrics | timing(t1 - t0, t2 - t1, t3 - t2, train_metrics)

    @contextlib.contextmanager
    def quiesced(self) -> Iterator[None]:
        yield  # between steps nothing is in flight

    def close(self) -> None:
        pass


class OneStepAsyncLoop:
    """Batch k+1 is generated with θ_k while the trainer trains on batch k (generated with θ_{k-1})."""

    def __init__(self, ctx: LoopContext, start_step: int) -> None:
        self.ctx = ctx
        # A resumed run's buffer already holds the batch generated during the step before the checkpoint.
        is_batch_waiting = ctx.buffer.queue_lengths()["samples"] >= ctx.cfg.rollout.rollout_batch_size
        self.ready: dict[str, float] | None = {} if is_batch_waiting else None

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.ready is None:  # the first batch has nothing to overlap with
            self.ctx.stage(f"step {step}: waiting for RolloutWorker.generate (first batch)")
            self.ready = generated(self.ctx, self.ctx.rollout.generate.remote(step), step, before_update=True)
        rollout_metrics, self.ready = self.ready, None
        next_ref = self.ctx.rollout.generate.remote(step)  # batch step+1, with θ_step, overlapping training
        self.ctx.stage(f"step {step}: reading the batch from the buffer")
        batch = read_step_batch(self.ctx, step)
        t1 = time.perf_counter()
        self.ctx.stage(f"step {step}: training (TrainerRank.train)")
        train_metrics = train_on_batch(self.ctx, batch, step)
        t2 = time.perf_counter()
        self.ctx.stage(f"step {step}: waiting for the overlapped RolloutWorker.generate")
        self.ready = generated(self.ctx, next_ref, step, before_update=False)  # weights never change mid-generation
        t3 = time.perf_counter()
        self.ctx.stage(f"step {step}: publishing weights version {step + 1}")
        publish_metrics = publish(self.ctx, step + 1)
        t4 = time.perf_counter()
        return (
            rollout_metrics
            | train_metrics
            | publish_metrics
            | timing((t1 - t0) + (t3 - t2), t2 - t1, t4 - t3, train_metrics)
            | {"async/trainer_idle_s": (t1 - t0) + (t3 - t2)}
        )

    @contextlib.contextmanager
    def quiesced(self) -> Iterator[None]:
        yield  # between steps the next batch is generated and published, nothing in flight

    def close(self) -> None:
        pass


class FullyAsyncLoop:
    """Generation streams continuously; the trainer takes each batch as it arrives (staleness ≤ η)."""

    def __init__(self, ctx: LoopContext, start_step: int) -> None:
        self.ctx = ctx
        self.version = start_step
        self._start_stream()

    def _start_stream(self) -> None:
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            try:
                ray.get(self.ctx.rollout.start_stream.remote(self.version, self.ctx.cfg.mode.max_staleness))
                return
            except ray.exceptions.ActorUnavailableError:  # Ray is restarting the worker that died
                if time.monotonic() > deadline:
                    raise
                time.sleep(RESTART_POLL_S)

    def _stream_call(self, method: str, *args: object, default: T) -> T:
        """`RolloutWorker.<method>(*args)`; if the worker died (Ray restarts it), start a stream on it at
        `self.version` and return `default`: the dead stream's published groups stay in the buffer and its
        taken groups come back when their lease expires."""
        try:
            return ray.get(getattr(self.ctx.rollout, method).remote(*args))
        except (ray.exceptions.RayActorError, StreamNotRunning) as err:
            logger.warning("the rollout worker lost its stream (%s); streaming again at version %d", err, self.version)
            self._start_stream()
            return default

    def _check_stream(self) -> None:
        self._stream_call("check_stream", default=None)

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        self.ctx.stage(f"step {step}: reading the batch from the stream")
        batch = read_step_batch(self.ctx, step, check_rollout=self._check_stream)
        t1 = time.perf_counter()
        self.ctx.stage(f"step {step}: training (TrainerRank.train)")
        train_metrics = train_on_batch(self.ctx, batch, step)
        t2 = time.perf_counter()
        self.ctx.stage(f"step {step}: pausing the stream (RolloutWorker.pause_stream)")
        abort_s = self._stream_call("pause_stream", default=0.0)
        self.ctx.stage(f"step {step}: publishing weights version {step + 1}")
        publish_metrics = publish(self.ctx, step + 1)
        self.ctx.stage(f"step {step}: resuming the stream (RolloutWorker.resume_stream)")
        self.version = step + 1
        stream_metrics = self._stream_call("resume_stream", self.version, default={})
        t3 = time.perf_counter()
        return (
            batch_reward_metrics(batch)
            | train_metrics
            | publish_metrics
            | stream_metrics
            | timing(t1 - t0, t2 - t1, t3 - t2, train_metrics)
            | {"async/trainer_idle_s": t1 - t0, "async/pause_abort_s": abort_s}
        )

    @contextlib.contextmanager
    def quiesced(self) -> Iterator[None]:
        """Stop the stream (its in-flight groups go back to the partials) and start it again afterwards."""
        self._stop_stream()
        yield
        self._start_stream()

    def _stop_stream(self) -> None:
        try:
            ray.get(self.ctx.rollout.stop_stream.remote())
        except (ray.exceptions.RayActorError, StreamNotRunning) as err:  # a worker that died has nothing to stop
            logger.warning("the rollout worker had no stream to stop (%s)", err)

    def close(self) -> None:
        self._stop_stream()


LOOPS = {"sync": SyncLoop, "one_step_async": OneStepAsyncLoop, "fully_async": FullyAsyncLoop}
