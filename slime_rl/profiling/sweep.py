"""Comparison of profiled runs (a sweep): `sweep.json` and `sweep_report.html` from each run's `profile.json`.

Per setting: samples/s and generated tokens/s, and the tail waste, the fraction of step time spent on
`long_tail` plus `abort_wait` (attribution.py): time the rollout waited on its slowest samples or on
aborting them instead of producing a batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slime_rl.errors import ConfigError
from slime_rl.profiling.attribution import CATEGORIES
from slime_rl.profiling.report import figure, page, png_img, stacked_bars, table

WASTE = ("long_tail", "abort_wait")


def read_profile(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "profile.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; pass run dirs written by `slime-rl profile-rollout`")
    return json.loads(path.read_text())


def compare(run_dirs: list[Path]) -> dict[str, Any]:
    """The `sweep.json` object: one row per run dir, in the order given."""
    rows = []
    for run_dir in run_dirs:
        profile = read_profile(run_dir)
        tp, total = profile["throughput"], profile["attribution"]["total"]
        e2e = profile["latency"]["e2e_s"] or {}
        rows.append(
            {
                "run_dir": str(run_dir),
                "settings": profile.get("settings", {}),
                "samples_per_s": tp["samples_per_s"],
                "generated_tokens_per_s": tp["generated_tokens_per_s"],
                "published_tokens_per_s": tp["published_tokens_per_s"],
                "tail_waste_frac": sum(total["fraction"][k] for k in WASTE),
                "fraction": total["fraction"],
                "step_time_mean_s": total["step_time_s"] / max(len(profile["step_times_s"]), 1),
                "e2e_p90_s": e2e.get("p90"),
                "aborted_requests": tp["aborted_requests"],
            }
        )
    return {"runs": rows}


def _label(row: dict[str, Any]) -> str:
    overrides = row["settings"].get("overrides") or []
    return " ".join(overrides) or Path(row["run_dir"]).name


def render_comparison(comparison: dict[str, Any]) -> str:
    rows = comparison["runs"]
    labels = [_label(r) for r in rows]
    header = ["setting", "samples/s", "generated tok/s", "tail waste", "mean step s", "e2e p90 s", "aborted"]
    body = [
        [
            label,
            r["samples_per_s"],
            r["generated_tokens_per_s"],
            r["tail_waste_frac"],
            r["step_time_mean_s"],
            r["e2e_p90_s"],
            r["aborted_requests"],
        ]
        for label, r in zip(labels, rows, strict=True)
    ]
    short = [f"#{i}" for i in range(len(rows))]
    fig, ax = figure(9.0, 3.0)
    ax.bar(short, [r["samples_per_s"] for r in rows], color="#2e7d32")
    ax.set_ylabel("samples/s")
    throughput_img = png_img(fig, "throughput per setting")
    fig, ax = figure(9.0, 3.0)
    ax.bar(short, [r["tail_waste_frac"] for r in rows], color="#c62828")
    ax.set_ylabel("tail waste (fraction of step time)")
    waste_img = png_img(fig, "tail waste per setting")
    fig, ax = figure(9.0, 3.8)
    stacked_bars(ax, short, [r["fraction"] for r in rows])
    ax.set_ylabel("fraction of step time")
    attribution_img = png_img(fig, "attribution per setting")
    legend = table(
        ["#", "setting", "run dir"], [[s, label, r["run_dir"]] for s, label, r in zip(short, labels, rows, strict=True)]
    )
    sections = [
        "<p>Tail waste = long_tail + abort_wait as a fraction of step time (slime_rl/profiling/attribution.py).</p>",
        table(header, body),
        "<h2>Settings</h2>",
        legend,
        "<h2>Throughput</h2>",
        throughput_img,
        "<h2>Tail waste</h2>",
        waste_img,
        "<h2>Time attribution</h2>",
        f"<p>categories: {', '.join(CATEGORIES)}</p>",
        attribution_img,
    ]
    return page("rollout profile comparison", sections)


def write_comparison(run_dirs: list[Path], out_dir: Path) -> Path:
    """Write `sweep.json` and `sweep_report.html` into `out_dir`; returns the report's path."""
    comparison = compare(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(comparison, indent=1))
    report = out_dir / "sweep_report.html"
    report.write_text(render_comparison(comparison))
    return report
