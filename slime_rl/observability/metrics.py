"""Metric sinks: one JSON line per record in `metrics.jsonl`, and TensorBoard scalars.

A record is a flat dict of namespaced scalar metrics (`rollout/…`, `train/…`, `perf/…`) logged at a step.
Non-finite values are written as null in JSONL (JSON has no NaN) and skipped in TensorBoard.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol


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


class MetricsLogger:
    """Fans one record out to every sink of a run directory."""

    def __init__(self, run_dir: Path, use_tensorboard: bool = True) -> None:
        self.jsonl_path = run_dir / "metrics.jsonl"
        self._sinks: list[MetricsSink] = [JsonlSink(self.jsonl_path)]
        if use_tensorboard:
            self._sinks.append(TensorBoardSink(run_dir / "tensorboard"))

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
