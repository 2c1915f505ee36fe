"""Curves people look at, as PNG: reward and eval accuracy over training steps, read from metrics.jsonl."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from slime_rl.observability.metrics import read_metrics  # noqa: E402


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(metrics_path: Path, out_path: Path, keys: Sequence[str], title: str) -> Path:
    """One panel per metric key that appears in `metrics_path`, against the training step."""
    records = read_metrics(metrics_path)
    present = [k for k in keys if any(r.get(k) is not None for r in records)]
    fig, axes = plt.subplots(len(present) or 1, 1, figsize=(7, 2.6 * max(len(present), 1)), squeeze=False)
    for ax, key in zip(axes[:, 0], present, strict=False):
        steps, values = _series(records, key)
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_ylabel(key.split("/", 1)[-1])
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
