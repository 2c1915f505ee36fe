"""`report.html`: one profiled run as a self-contained page (PNG plots inlined as base64, no scripts, no network).

Sections: headline numbers and latency percentiles, throughput over time, response-length histogram with
the tail marked, per-engine utilisation and idle bubbles, abort waits per step, the time attribution as a
stacked bar per step, and the resolved config. It reads only what `profile.json` and the recorded profile
hold; `sweep.py` reuses the page and figure helpers for the comparison report.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from slime_rl.profiling.attribution import CATEGORIES
from slime_rl.profiling.lifecycles import Profile, response_lengths

COLORS = {
    "weight_update_pause": "#ef6c00",
    "useful_decode": "#2e7d32",
    "long_tail": "#c62828",
    "queueing": "#f9a825",
    "prefill": "#1565c0",
    "abort_wait": "#6a1b9a",
    "reward": "#00838f",
    "buffer_io": "#8d6e63",
    "rollout_overhead": "#9e9e9e",
}
STYLE = (
    "body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    "pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}h2{margin-top:28px}"
)


def figure(width: float = 9.0, height: float = 3.2):
    """A matplotlib Figure with one axes, without pyplot (no backend, no global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def png_img(fig, alt: str) -> str:
    """`<img>` with the figure as an inline base64 PNG."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, sections: list[str]) -> str:
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>"
    )


def stacked_bars(ax, labels: list[str], seconds: list[dict[str, float]]) -> None:
    """One bar per label, stacked by attribution category."""
    bottom = np.zeros(len(labels))
    for key in CATEGORIES:
        values = np.array([s.get(key, 0.0) for s in seconds])
        ax.bar(labels, values, bottom=bottom, color=COLORS[key], label=key)
        bottom += values
    ax.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.15))


def _throughput_plot(profile: Profile) -> str:
    fig, ax = figure()
    t0, span = profile.start_s, max(profile.end_s - profile.start_s, 1e-6)
    width = max(span / 40, 0.1)
    edges = np.arange(0.0, span + width, width)
    done = [r.answered_s - t0 for r in profile.requests]
    tokens = [r.completion_tokens for r in profile.requests]
    per_bin, _ = np.histogram(done, bins=edges, weights=tokens)
    ax.step(edges[:-1], per_bin / width, where="post", label="generated tokens/s")
    for step in profile.steps:
        ax.axvline(step.start_s - t0, color="#999", lw=0.6, ls="--")
    for update in profile.weight_updates:
        ax.axvspan(update.start_s - t0, update.end_s - t0, color="#ffcc80", alpha=0.6, label="weight update")
    ax.set_xlabel("seconds (dashed: step starts)")
    ax.set_ylabel("tokens/s")
    ax.legend(fontsize=8)
    return png_img(fig, "throughput over time")


def _length_plot(profile: Profile) -> str:
    fig, ax = figure()
    lengths = response_lengths(profile.requests)
    if lengths:
        ax.hist(lengths, bins=min(40, max(len(set(lengths)), 1)), color="#1565c0")
        p90 = float(np.percentile(lengths, 90))
        ax.axvline(p90, color="#c62828", lw=1.5, label=f"tail: p90 = {p90:.0f} tokens")
        ax.legend(fontsize=8)
    ax.set_xlabel("response tokens per sample")
    ax.set_ylabel("samples")
    return png_img(fig, "response length histogram")


def _engine_plot(profile: Profile) -> str:
    fig, ax = figure()
    for i, url in enumerate(profile.engine_urls):
        polls = sorted((s for s in profile.loads if s.engine == i), key=lambda s: s.t_s)
        ax.step(
            [p.t_s - profile.start_s for p in polls], [p.num_running for p in polls], where="post", label=url, lw=0.9
        )
    ax.set_xlabel("seconds")
    ax.set_ylabel("running requests")
    ax.legend(fontsize=7)
    return png_img(fig, "engine utilisation")


def render_report(profile: Profile, summary: dict[str, Any], config_yaml: str, title: str) -> str:
    """The whole page."""
    tp, att, lat = summary["throughput"], summary["attribution"], summary["latency"]
    headline = table(
        ["samples/s", "published tokens/s", "generated tokens/s", "requests", "aborted", "resumed", "step time s"],
        [
            [
                tp["samples_per_s"],
                tp["published_tokens_per_s"],
                tp["generated_tokens_per_s"],
                tp["requests"],
                tp["aborted_requests"],
                tp["resumed_requests"],
                tp["step_time_total_s"],
            ]
        ],
    )
    latency_rows = [
        [name, *(None if lat[key] is None else lat[key][f"p{q}"] for q in (50, 90, 99))]
        for name, key in (
            ("e2e (client)", "e2e_s"),
            ("engine e2e", "engine_e2e_s"),
            ("queue", "queue_s"),
            ("ttft", "ttft_s"),
        )
    ]
    engines = table(
        ["engine", "busy fraction", "idle s", "bubbles", "finished requests", "finished/s"],
        [
            [e["url"], e["busy_frac"], e["idle_s"], e["bubbles"], e["finished_requests"], e["finished_requests_per_s"]]
            for e in tp["per_engine"]
        ],
    )
    fig, ax = figure(9.0, 3.8)
    labels = [f"step {s['step']}" for s in att["steps"]]
    stacked_bars(ax, labels, [s["seconds"] for s in att["steps"]])
    ax.set_ylabel("seconds")
    attribution_img = png_img(fig, "time attribution")
    fig, ax = figure(9.0, 2.6)
    abort_s = [s["seconds"]["abort_wait"] for s in att["steps"]]
    ax.bar(labels, abort_s, color=COLORS["abort_wait"])
    ax.set_ylabel("abort wait s")
    abort_img = png_img(fig, "abort waits")
    total = att["total"]
    attribution_table = table(
        ["category", "seconds", "fraction of step time"],
        [[key, total["seconds"][key], total["fraction"][key]] for key in CATEGORIES],
    )
    sections = [
        '<p id="summary">Time attribution: each instant of a step goes to one category (definitions in '
        "slime_rl/profiling/attribution.py). <b>long_tail</b> is decode time while fewer than "
        f"{att['tail_fraction']:g} x the step's peak requests were in flight: the step waiting on its slowest "
        "samples. <b>abort_wait</b> is APRIL's abort at the target; <b>weight_update_pause</b> a republish that "
        "paused the engines mid-step. Open trace.json in ui.perfetto.dev for every request.</p>",
        "<h2>Throughput</h2>",
        headline,
        _throughput_plot(profile),
        "<h2>Latency (seconds)</h2>",
        table(["", "p50", "p90", "p99"], latency_rows),
        f"<p>queue: {html.escape(lat['queue_source'])}; ttft: {html.escape(lat['ttft_source'])}</p>",
        "<h2>Response lengths</h2>",
        _length_plot(profile),
        "<h2>Engines: utilisation and bubbles</h2>",
        engines,
        _engine_plot(profile),
        "<h2>Abort waits</h2>",
        abort_img,
        "<h2>Time attribution</h2>",
        attribution_table,
        f"<p>weight updates (between steps, not in step time): {total['weight_update_s']:.3f} s</p>",
        attribution_img,
        "<h2>Resolved config</h2>",
        f"<pre>{html.escape(config_yaml)}</pre>",
    ]
    return page(title, sections)
