"""Metric sinks: one JSON line per record in `metrics.jsonl`, TensorBoard scalars and a Weights & Biases run.

A record is a flat dict of namespaced scalar metrics (`rollout/…`, `train/…`, `perf/…`) logged at a step.
Non-finite values are written as null in JSONL (JSON has no NaN) and skipped in TensorBoard and W&B.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from slime_rl.config.metrics import MetricsConfig
from slime_rl.errors import ConfigError

logger = logging.getLogger(__name__)


class MetricsSink(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """Appends `{"step", "time", **metrics}` lines; a resumed run appends to the same file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", buffering=1)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": step, "time": time.time()}
        record.update({k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            if math.isfinite(float(value)):
                self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """One W&B run; `mode="offline"` writes `{wandb_dir}/wandb/offline-run-*/run-*.wandb` with no network or login."""

    def __init__(self, cfg: MetricsConfig, wandb_dir: Path, run_name: str | None, run_config: Any) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ConfigError(
                "metrics.wandb=true needs the wandb package, which is not installed: "
                "pip install 'slime-rl[wandb]' (or set metrics.wandb=false)"
            ) from err
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=cfg.wandb_project,
            entity=cfg.wandb_entity,
            name=run_name,
            mode=cfg.wandb_mode,  # type: ignore[arg-type]  # checked by MetricsConfig
            dir=str(wandb_dir),
            config=run_config,
            settings=wandb.Settings(console="off", silent=True),  # leave stdout and logging alone
        )
        if cfg.wandb_mode == "offline":
            logger.info("W&B offline run in %s; upload it with `wandb sync %s`", self.run_dir, self.run_dir)

    @property
    def run_dir(self) -> Path:
        """The run's own folder (`…/wandb/offline-run-…` or `…/wandb/run-…`)."""
        return Path(self._run.dir).parent

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self._run.log(finite, step=step)

    def close(self) -> None:
        import wandb

        self._run.finish()
        # finish() can return before W&B's service has written the transaction log (wandb 0.31: 2 of 8 offline
        # runs held only the file header right after it); teardown waits for the service to write everything.
        wandb.teardown()


class MetricsLogger:
    """Fans one record out to every sink of a run directory: JSONL always, TensorBoard and W&B as `cfg` says.

    The W&B run is named `run_name`; its config panel shows the run dir's `config.yaml` when there is one (the
    copy the driver writes, without the buffer password).
    """

    def __init__(self, run_dir: Path, cfg: MetricsConfig | None = None, *, run_name: str | None = None) -> None:
        cfg = cfg or MetricsConfig()
        self.jsonl_path = run_dir / "metrics.jsonl"
        self._sinks: list[MetricsSink] = [JsonlSink(self.jsonl_path)]
        try:
            if cfg.tensorboard:
                self._sinks.append(TensorBoardSink(run_dir / "tensorboard"))
            if cfg.wandb:
                wandb_dir = Path(cfg.wandb_dir) if cfg.wandb_dir is not None else run_dir
                saved = run_dir / "config.yaml"
                run_config = OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file() else None
                self._sinks.append(WandbSink(cfg, wandb_dir, run_name, run_config))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for sink in self._sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    """All records of a `metrics.jsonl`, in order."""
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def read_step_records(path: Path) -> list[dict[str, float | None]]:
    """The records of trained steps (those with `perf/step_time_s`), in order; none while `path` does not exist
    (a run still starting)."""
    if not path.exists():
        return []
    return [r for r in read_metrics(path) if r.get("perf/step_time_s") is not None]
