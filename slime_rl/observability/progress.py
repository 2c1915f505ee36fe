"""Progress bar of a training stage (SFT or RL): step, loss or reward, eval accuracy and throughput, on a rich
console."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """`with TrainProgress(total) as bar: bar.update(step, metrics)`; shows the latest headline metrics.
    `stage` names the bar ("train" for RL, "sft" for the supervised stage)."""

    def __init__(self, total_steps: int, start_step: int = 0, *, stage: str = "train") -> None:
        self._progress = Progress(
            TextColumn(f"[bold]{stage}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(stage, total=total_steps, completed=start_step, info="")

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        parts = []
        for key, label, fmt in (
            ("train/loss", "loss", "{:.4f}"),
            ("rollout/reward_mean", "reward", "{:.3f}"),
            ("eval/accuracy", "eval acc", "{:.2f}"),
            ("perf/step_tokens_per_s", "tok/s", "{:.0f}"),
        ):
            if key in metrics:
                parts.append(f"{label} {fmt.format(metrics[key])}")
        self._progress.update(self._task, completed=step, info="  ".join(parts))

    def __enter__(self) -> TrainProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
