"""The driver: from a config to a finished run (`slime-rl train`, `slime-rl rollout`).

Starts or joins Redis and Ray, places and starts the engines, the router, the rollout worker and the
trainer group, then runs the SFT stage (`sft`, fresh starts only; saved as checkpoint 0) and the configured
loop with checkpoints, evals, metrics and a final report. An experiment's `prepare` hook runs first, before
any service starts. Everything it starts it stops, also on errors (engine servers and the router die with
their owners).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import ray
from omegaconf import OmegaConf
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from slime_rl.buffer.server import redis_service
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config.model import check_model_path
from slime_rl.config.root import SlimeRLConfig
from slime_rl.observability.logs import setup_logging
from slime_rl.observability.metrics import MetricsLogger
from slime_rl.observability.plots import plot_curves
from slime_rl.observability.progress import TrainProgress
from slime_rl.observability.watchdog import Watchdog
from slime_rl.orchestration.batches import make_sft_batches
from slime_rl.orchestration.cluster import ray_session, this_node_id
from slime_rl.orchestration.engine_health import EngineMonitor
from slime_rl.orchestration.engines import AWAITING_SYNC, EngineFleet
from slime_rl.orchestration.loops import LOOPS, ROLLOUT_WORKER_RESTARTS, LoopContext, publish
from slime_rl.orchestration.placement import create_placement
from slime_rl.orchestration.plan import redacted_url
from slime_rl.orchestration.rollout_worker import RolloutWorker
from slime_rl.orchestration.train_group import TrainerRankDied, TrainGroup
from slime_rl.plugins import load_plugin
from slime_rl.trainer import checkpoint
from slime_rl.trainer.lr_schedule import run_lr_decay_steps

logger = logging.getLogger(__name__)

BUFFER_STATE_FILE = "buffer_state.msgpack"  # the run's Redis keys inside a checkpoint's step directory
CURVE_KEYS = ("rollout/reward_mean", "eval/accuracy", "train/loss", "rollout/response_len_mean")
TIME_KEYS = ("perf/rollout_time_s", "perf/train_time_s", "perf/weight_sync_time_s")
# summary.json name -> eval metric; `{name}_first` and `{name}_last` are written for every one the run logged
# (tool use comes with rollout.generate.kind=multi_turn, the answerable split with kind=reliability rewards).
SUMMARY_EVAL_KEYS = {
    "eval_accuracy": "eval/accuracy",
    "tool_use_rate": "eval/tool_use_rate",
    "answerable_accuracy": "eval/answerable/accuracy",
    "hallucination_rate": "eval/unanswerable/hallucination_rate",
    "omniscience_index": "eval/unanswerable/omniscience_index",
}


def run_id(cfg: SlimeRLConfig) -> str:
    return cfg.buffer.run_id or cfg.name


def staleness_bound(cfg: SlimeRLConfig) -> int | None:
    """Versions a trained group may lag: `buffer.max_staleness`, else η (`mode.max_staleness`) when fully async."""
    if cfg.buffer.max_staleness is not None:
        return cfg.buffer.max_staleness
    return cfg.mode.max_staleness if cfg.mode.name == "fully_async" else None


def open_buffer(cfg: SlimeRLConfig, redis_url: str) -> RedisBuffer:
    return RedisBuffer.from_url(
        redis_url,
        run_id(cfg),
        max_staleness=staleness_bound(cfg),
        redelivery_idle_ms=int(cfg.buffer.redelivery_idle_s * 1000),
    )


def prepare_run_dir(cfg: SlimeRLConfig) -> Path:
    """Create the run directory, route logs into it, write the resolved config there and run `prepare.path`."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(log_file=run_dir / "train.log")
    saved = OmegaConf.structured(cfg)
    if cfg.buffer.url:
        saved.buffer.url = redacted_url(cfg.buffer.url)  # the Redis password stays out of the run dir
    OmegaConf.save(saved, run_dir / "config.yaml", resolve=True)
    run_prepare_hook(cfg)
    return run_dir


def run_prepare_hook(cfg: SlimeRLConfig) -> None:
    """Call the experiment's setup hook `prepare.path` ("module:function") with the config, if one is set.

    It runs on every start, fresh or resumed, before any service starts (it may write the model and data the
    run reads), so it must keep what already exists. `experiment=toy` uses `slime_rl.toy.experiment:prepare`.
    """
    if cfg.prepare.path is not None:
        load_plugin("prepare.path", cfg.prepare.path)(cfg)


@dataclass
class RolloutSide:
    fleet: EngineFleet
    worker: ray.actor.ActorHandle  # RolloutWorker
    monitor: EngineMonitor | None  # None when engine.fault_tolerance is off


@contextlib.contextmanager
def rollout_side(cfg: SlimeRLConfig, redis_url: str, placement) -> Iterator[RolloutSide]:
    """Engines behind a router, the rollout worker that drives them and, with fault tolerance, their monitor."""
    with contextlib.ExitStack() as stack:
        fleet = stack.enter_context(EngineFleet(cfg.engine, cfg.model.path, placement, log_dir=cfg.run_dir / "logs"))
        # On the driver's node, beside the router it calls (which may listen on loopback only).
        on_driver_node = NodeAffinitySchedulingStrategy(this_node_id(), soft=False)
        worker = (
            ray.remote(RolloutWorker)
            .options(
                num_cpus=0,
                max_concurrency=64,
                max_restarts=ROLLOUT_WORKER_RESTARTS,
                scheduling_strategy=on_driver_node,
            )
            .remote(
                cfg.rollout,
                cfg.buffer.data,
                cfg.eval,
                model_path=cfg.model.path,
                router_url=fleet.router_url,
                engine_urls=fleet.engine_urls,
                redis_url=redis_url,
                run_id=run_id(cfg),
                max_staleness=staleness_bound(cfg),
                request_timeout_s=cfg.engine.request_timeout_s,
                seed=cfg.seed,
                lease_s=cfg.buffer.lease_s,
                tools=cfg.tools,
            )
        )
        stack.callback(ray.kill, worker)
        fleet.on_change = lambda urls: worker.set_engines.remote(urls)
        monitor = stack.enter_context(EngineMonitor(fleet, cfg.engine)) if cfg.engine.fault_tolerance else None
        yield RolloutSide(fleet, worker, monitor)


def run_sft(cfg: SlimeRLConfig, ctx: LoopContext) -> dict[str, float]:
    """The supervised stage: `sft.steps` steps on the demonstrations of `sft.path` at `sft.lr`, then back to
    `trainer.lr`. Returns the last step's metrics."""
    metrics: dict[str, float] = {}
    seed = cfg.seed if cfg.sft.seed is None else cfg.sft.seed
    ctx.trainers.set_lr(cfg.sft.lr)

    def request_samples(step: int) -> ray.ObjectRef:
        return ctx.rollout.sft_samples.remote(cfg.sft.path, seed=seed, step=step, batch_size=cfg.sft.batch_size)

    # The rollout worker builds step k+1's samples while the trainer trains on step k's.
    next_samples_ref = request_samples(0)
    with TrainProgress(cfg.sft.steps, stage="sft") as progress:
        for step in range(cfg.sft.steps):
            ctx.stage(f"SFT step {step}")
            samples = ray.get(next_samples_ref)
            if step + 1 < cfg.sft.steps:
                next_samples_ref = request_samples(step + 1)
            batches = make_sft_batches(samples, dp_size=cfg.trainer.data_parallel_size, step=step)
            metrics = ctx.trainers.train_sft(batches)
            progress.update(step + 1, metrics)
    ctx.trainers.set_lr(cfg.trainer.lr)
    logger.info("SFT: %d steps, last loss %.4f", cfg.sft.steps, metrics.get("train/loss", float("nan")))
    return metrics


def run_training(cfg: SlimeRLConfig) -> None:
    """Train with the configured loop until `mode.num_steps`; resumable from the latest checkpoint."""
    run_dir = prepare_run_dir(cfg)
    check_model_path(cfg.model)  # before any service starts: a missing model would stall the engines
    with (
        redis_service(cfg.buffer, run_dir / "redis") as redis_url,
        ray_session(cfg.cluster),
        contextlib.closing(open_buffer(cfg, redis_url)) as buffer,
        MetricsLogger(run_dir, cfg.metrics, run_name=cfg.name) as metrics,
    ):
        placement = create_placement(cfg.cluster, cfg.trainer, cfg.engine)
        try:
            with rollout_side(cfg, redis_url, placement) as side:
                trainers = TrainGroup(
                    cfg.model,
                    cfg.trainer,
                    cfg.algorithm,
                    placement,
                    loopback=cfg.cluster.address is None,
                    buffer=(redis_url, run_id(cfg)),
                    lr_decay_steps=run_lr_decay_steps(cfg.trainer, cfg.mode.num_steps),
                )
                record_actor_nodes(run_dir / "logs", trainers, side)
                try:
                    with (
                        contextlib.closing(open_buffer(cfg, redis_url)) as probe_buffer,
                        Watchdog(cfg.watchdog, run_dir, progress_probe(probe_buffer, side.fleet)) as watchdog,
                    ):
                        ctx = LoopContext(cfg, side.worker, trainers, buffer, side.fleet, side.monitor, watchdog)
                        run_loop(cfg, ctx, metrics)
                except TrainerRankDied as err:
                    raise TrainerRankDied(f"{err}. The run stops here; {resume_hint(cfg)}") from err
                finally:
                    trainers.shutdown()
        finally:
            placement.remove()
    write_report(cfg, run_dir, metrics.jsonl_path)


def record_actor_nodes(log_dir: Path, trainers: TrainGroup, side: RolloutSide) -> None:
    """Write where Ray placed every actor of the run to `{log_dir}/actor_nodes.json` (node ids and their IPs).

    `engine_hosts` lists one node per engine host actor: one per engine, or per process of simulated engines.
    """
    nodes = {
        "driver": this_node_id(),
        "trainer_ranks": ray.get([rank.node_id.remote() for rank in trainers.ranks]),
        "engine_hosts": ray.get([host.node_id.remote() for host in side.fleet.hosts]),
        "rollout_worker": ray.get(side.worker.node_id.remote()),
    }
    ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    record = nodes | {"node_ips": ips}
    (log_dir / "actor_nodes.json").write_text(json.dumps(record, indent=1))
    logger.info(
        "actors on %d node(s): trainer ranks on %s, engine hosts on %s",
        len(set(nodes["trainer_ranks"]) | set(nodes["engine_hosts"]) | {nodes["driver"]}),
        [n[:8] for n in nodes["trainer_ranks"]],
        [n[:8] for n in nodes["engine_hosts"]],
    )


def progress_probe(buffer: RedisBuffer, fleet: EngineFleet) -> Callable[[], Hashable]:
    """The watchdog's token of progress: the buffer's counters and queues, and the requests each engine finished.

    It runs on the watchdog's thread, so `buffer` is a connection of its own. An engine that does not answer
    adds no progress (whether it is dead is the engine monitor's business).
    """

    def finished_requests(url: str) -> int | None:
        try:
            states = httpx.get(f"{url}/get_server_info", timeout=5.0).json().get("internal_states") or [{}]
        except (httpx.HTTPError, ValueError):
            return None
        return states[0].get("num_finished_reqs")

    def probe() -> Hashable:
        return tuple(sorted(buffer.snapshot().items())), tuple(finished_requests(url) for url in fleet.engine_urls)

    return probe


def resume_hint(cfg: SlimeRLConfig) -> str:
    """How to continue a run that stopped: the same command again resumes from its latest checkpoint."""
    from hydra.core.hydra_config import HydraConfig

    overrides = " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else "<your overrides>"
    latest = checkpoint.latest_step_dir(cfg.trainer.checkpoint_dir) if cfg.trainer.checkpoint_dir else None
    where = f"the checkpoint {latest}" if latest else "the start (no checkpoint was saved yet)"
    return f"`slime-rl train {overrides}` resumes it from {where}"


def buffer_state_file(cfg: SlimeRLConfig, step: int) -> Path:
    """Where checkpoint `step` keeps the buffer's state: inside its step directory."""
    assert cfg.trainer.checkpoint_dir is not None, "the trainer presets set trainer.checkpoint_dir"
    return checkpoint.step_dir(cfg.trainer.checkpoint_dir, step) / BUFFER_STATE_FILE


def save_checkpoint(cfg: SlimeRLConfig, ctx: LoopContext, step: int) -> None:
    """Weights, optimizer and the buffer they continue from, as checkpoint `step`.

    The buffer's state goes into the step directory before the trainer writes its `latest` marker, so a
    crash at any point leaves a previous checkpoint whose weights and buffer agree.
    """
    state_file = buffer_state_file(cfg, step)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_bytes(ctx.buffer.dump_state())
    ctx.trainers.save(step)


def resume(cfg: SlimeRLConfig, ctx: LoopContext) -> int | None:
    """Load the latest checkpoint (weights, optimizer, buffer); returns its step, or None for a fresh start
    (from `model.path`, or from another run's `trainer.init_checkpoint`). Step 0 is the SFT stage's checkpoint.

    A fresh start on a buffer some trainer already trained from (a run that died before its first
    checkpoint) clears the buffer: no state of it agrees with fresh weights. A buffer nothing trained from
    (e.g. filled by `slime-rl rollout`) is kept.
    """
    step = ctx.trainers.load()  # None when trainer.load_checkpoint is false or nothing was saved
    if step is None:
        if trained := ctx.buffer.counters()["trained"]:
            logger.warning(
                "no checkpoint to resume from, but buffer run %r has trained %d groups; starting it afresh",
                ctx.buffer.run_id,
                trained,
            )
            ctx.buffer.clear()
        return None
    state_file = buffer_state_file(cfg, step)
    if state_file.exists():
        ctx.buffer.restore_state(state_file.read_bytes())
        logger.info("resumed at step %d with the buffer as checkpointed", step)
    else:
        logger.warning("checkpoint of step %d has no %s; the buffer is used as it is", step, BUFFER_STATE_FILE)
    return step


def run_loop(cfg: SlimeRLConfig, ctx: LoopContext, metrics: MetricsLogger) -> None:
    ctx.stage("resuming from the latest checkpoint")
    resumed_step = resume(cfg, ctx)
    start_step = resumed_step or 0
    if resumed_step is None and cfg.sft.path and cfg.sft.steps:  # a resumed run's weights are past the SFT stage
        metrics.log(0, run_sft(cfg, ctx))
        ctx.stage("saving the SFT stage's checkpoint (step 0)")
        save_checkpoint(cfg, ctx, 0)  # a resume skips the stage; other runs start here (trainer.init_checkpoint)
    ctx.stage(f"publishing weights version {start_step}")
    publish(ctx, start_step)  # engines serve exactly the trainer's weights, also after SFT or a resume
    if start_step == 0 and cfg.eval.path:
        ctx.stage("eval before training (RolloutWorker.evaluate)")
        metrics.log(0, ray.get(ctx.rollout.evaluate.remote(0)))
    loop = LOOPS[cfg.mode.name](ctx, start_step)
    try:
        with TrainProgress(cfg.mode.num_steps, start_step) as progress:
            for step in range(start_step, cfg.mode.num_steps):
                t0 = time.perf_counter()
                record = loop.step(step)
                done = step + 1
                is_last = done == cfg.mode.num_steps
                is_eval = cfg.eval.path and ((cfg.eval.interval and done % cfg.eval.interval == 0) or is_last)
                if is_eval:
                    ctx.stage(f"step {step}: eval (RolloutWorker.evaluate)")
                    record.update(ray.get(ctx.rollout.evaluate.remote(done)))
                if (cfg.trainer.save_interval and done % cfg.trainer.save_interval == 0) or is_last:
                    ctx.stage(f"step {step}: saving checkpoint {done}")
                    with loop.quiesced():
                        save_checkpoint(cfg, ctx, done)
                record["perf/step_time_s"] = time.perf_counter() - t0
                record["perf/other_time_s"] = record["perf/step_time_s"] - sum(record.get(k, 0.0) for k in TIME_KEYS)
                record.update({f"buffer/{k}": float(v) for k, v in ctx.buffer.snapshot().items()})
                if is_eval or is_last or done % cfg.mode.log_interval == 0:
                    metrics.log(done, record)
                progress.update(done, record)
    finally:
        loop.close()


def write_report(cfg: SlimeRLConfig, run_dir: Path, metrics_path: Path) -> None:
    """`reward_curve.png` and `summary.json`: first/last eval figures (`SUMMARY_EVAL_KEYS`; eval accuracy always,
    None without eval) and the mean time split per step."""
    from slime_rl.observability.metrics import read_metrics

    records = read_metrics(metrics_path)
    plot_curves(metrics_path, run_dir / "reward_curve.png", CURVE_KEYS, title=f"{cfg.name}: {cfg.mode.name}")
    steps = [r for r in records if r.get("perf/step_time_s") is not None]

    def mean(key: str) -> float:
        values = [r[key] for r in steps if r.get(key) is not None]
        return sum(values) / len(values) if values else 0.0

    summary = {
        "name": cfg.name,
        "mode": cfg.mode.name,
        "steps": len(steps),
        **first_and_last_evals(records),
        "reward_mean_last": steps[-1].get("rollout/reward_mean") if steps else None,
        "time_per_step_s": {
            key.split("/")[1].removesuffix("_time_s"): mean(key) for key in (*TIME_KEYS, "perf/other_time_s")
        },
        "step_time_s": mean("perf/step_time_s"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("run finished: %s", json.dumps(summary))


def first_and_last_evals(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """`{name}_first` / `{name}_last` of each `SUMMARY_EVAL_KEYS` metric in `records`; eval accuracy always."""
    summary: dict[str, float | None] = {}
    for name, key in SUMMARY_EVAL_KEYS.items():
        values = [r[key] for r in records if r.get(key) is not None]
        if values or name == "eval_accuracy":
            summary[f"{name}_first"] = values[0] if values else None
            summary[f"{name}_last"] = values[-1] if values else None
    return summary


class RolloutObserver(Protocol):
    """Watches `run_rollout_only` from the driver (the profiler, orchestration/profile_run.py)."""

    def started(self, side: RolloutSide) -> None: ...
    def before_step(self, side: RolloutSide, step: int) -> int: ...  # returns the weight version to generate with
    def after_step(self, side: RolloutSide, step: int, record: dict[str, float]) -> None: ...
    def finished(self, side: RolloutSide) -> None: ...  # also after an error


def run_rollout_only(cfg: SlimeRLConfig, observer: RolloutObserver | None = None, num_steps: int | None = None) -> None:
    """Rollout without a trainer (debugging, data generation, profiling): `num_steps` (default `mode.num_steps`)
    batches into the buffer, under `observer` when given."""
    num_steps = cfg.mode.num_steps if num_steps is None else num_steps
    run_dir = prepare_run_dir(cfg)
    check_model_path(cfg.model)  # before any service starts: a missing model would stall the engines
    with (
        redis_service(cfg.buffer, run_dir / "redis") as redis_url,
        ray_session(cfg.cluster),
        MetricsLogger(run_dir, cfg.metrics, run_name=cfg.name) as metrics,
    ):
        placement = create_placement(cfg.cluster, cfg.trainer, cfg.engine, with_trainer=False)
        try:
            with rollout_side(cfg, redis_url, placement) as side:
                if observer is not None:
                    observer.started(side)
                try:
                    for step in range(num_steps):
                        version = observer.before_step(side, step) if observer is not None else 0
                        for url in side.fleet.urls_in(AWAITING_SYNC):  # a restarted engine holds model.path
                            side.fleet.put_back(url, version=version)
                        record = ray.get(side.worker.generate.remote(version))
                        metrics.log(step + 1, record)
                        if observer is not None:
                            observer.after_step(side, step, record)
                finally:
                    if observer is not None:
                        observer.finished(side)
                where = cfg.buffer.url.split("@")[-1] if cfg.buffer.url else f"{run_dir / 'redis'} (AOF)"
                logger.info("rollout finished: %d steps; groups kept in %s, run id %s", num_steps, where, run_id(cfg))
        finally:
            placement.remove()
