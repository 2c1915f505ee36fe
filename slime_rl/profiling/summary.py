"""`profile.json`: throughput, time attribution, latency percentiles and step times of one profiled run.

Throughput counts two things: samples and response tokens the steps published (what a trainer would get),
and tokens the engines generated (published ones, plus those of aborted requests and of groups recycled
or filtered). Per engine, the router's choice is not visible to the client, so engines report what they
did themselves: busy fraction and idle bubbles from `/v1/loads`, and finished requests from
`/get_server_info` (`num_finished_reqs`, before and after the run).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slime_rl.profiling.attribution import CATEGORIES, attribute_step, engine_idle, overlapped_s
from slime_rl.profiling.lifecycles import Profile, response_lengths

PERCENTILES = (50, 90, 99)
SCHEMA_VERSION = 1


def percentiles(values: list[float]) -> dict[str, float] | None:
    """`{"p50", "p90", "p99", "mean", "n"}` of `values`, None when there are none."""
    if not values:
        return None
    array = np.asarray(values, np.float64)
    out = {f"p{q}": float(np.percentile(array, q)) for q in PERCENTILES}
    return out | {"mean": float(array.mean()), "n": float(len(array))}


def latency(profile: Profile) -> dict[str, Any]:
    """Request latency percentiles (seconds); each says where its numbers come from."""
    requests = profile.requests
    engine_queue = [r.engine_queue_s for r in requests if r.engine_queue_s is not None]
    ttft = [r.engine_ttft_s for r in requests if r.engine_ttft_s is not None]
    return {
        "e2e_s": percentiles([r.e2e_s for r in requests]) | {"source": "client: sent to answered"}
        if requests
        else None,
        "engine_e2e_s": percentiles([r.engine_e2e_s for r in requests]),
        "queue_s": percentiles([r.queue_s for r in requests]),
        "queue_source": "engine meta_info queue_time"
        if engine_queue
        else "client round trip minus engine e2e_latency (router, transport; the engine reports no queue_time)",
        "ttft_s": percentiles(ttft),
        "ttft_source": "engine meta_info first_token_latency"
        if ttft
        else "not reported by the engine (SGLang reports it with --enable-metrics; non-streamed requests only "
        "know their end)",
    }


def throughput(profile: Profile, finished_per_engine: list[int]) -> dict[str, Any]:
    """Samples and tokens per second of step time, and what each engine did."""
    total_s = sum(s.time_s for s in profile.steps)
    samples = sum(s.metrics.get("rollout/samples", 0.0) for s in profile.steps)
    published_tokens = sum(s.metrics.get("rollout/response_tokens", 0.0) for s in profile.steps)
    generated = sum(r.completion_tokens for r in profile.requests)
    idle = engine_idle(
        profile.loads, len(profile.engine_urls), profile.start_s, profile.end_s, profile.load_poll_interval_s
    )
    per_engine = [
        {
            "url": url,
            "finished_requests": finished_per_engine[i] if i < len(finished_per_engine) else None,
            "finished_requests_per_s": finished_per_engine[i] / total_s
            if i < len(finished_per_engine) and total_s
            else None,
            **idle[i],
        }
        for i, url in enumerate(profile.engine_urls)
    ]
    return {
        "step_time_total_s": total_s,
        "samples": samples,
        "samples_per_s": samples / total_s if total_s else 0.0,
        "published_tokens_per_s": published_tokens / total_s if total_s else 0.0,
        "generated_tokens": float(generated),
        "generated_tokens_per_s": generated / total_s if total_s else 0.0,
        "requests": float(len(profile.requests)),
        "aborted_requests": float(sum(r.finish == "abort" for r in profile.requests)),
        "resumed_requests": float(sum(r.is_resume for r in profile.requests)),
        "per_engine": per_engine,
    }


def attribution(profile: Profile, tail_fraction: float) -> dict[str, Any]:
    """Per step and in total: the partition of step time (`CATEGORIES`), plus overlapped totals and idle engines."""
    steps = []
    for step in profile.steps:
        parts = attribute_step(step.requests, step.intervals, step.start_s, step.end_s, tail_fraction=tail_fraction)
        idle = engine_idle(
            profile.loads, len(profile.engine_urls), step.start_s, step.end_s, profile.load_poll_interval_s
        )
        steps.append(
            {
                "step": step.index,
                "step_time_s": step.time_s,
                "seconds": parts,
                "reward_calls_total_s": overlapped_s(step.intervals, "reward", step.start_s, step.end_s),
                "buffer_io_total_s": overlapped_s(step.intervals, "buffer", step.start_s, step.end_s),
                "engine_idle_s": [e["idle_s"] for e in idle],
                "engine_bubbles": [e["bubbles"] for e in idle],
            }
        )
    total = {key: sum(s["seconds"][key] for s in steps) for key in CATEGORIES}
    total_s = sum(s["step_time_s"] for s in steps)
    return {
        "categories": list(CATEGORIES),
        "tail_fraction": tail_fraction,
        "steps": steps,
        "total": {
            "seconds": total,
            "fraction": {key: value / total_s if total_s else 0.0 for key, value in total.items()},
            "step_time_s": total_s,
            "weight_update_s": sum(u.end_s - u.start_s for u in profile.weight_updates),
        },
    }


def summarize(
    profile: Profile, *, tail_fraction: float, finished_per_engine: list[int], settings: dict[str, Any]
) -> dict[str, Any]:
    """The whole `profile.json` object."""
    lengths = [float(n) for n in response_lengths(profile.requests)]
    return {
        "schema_version": SCHEMA_VERSION,
        "settings": settings,
        "throughput": throughput(profile, finished_per_engine),
        "attribution": attribution(profile, tail_fraction),
        "latency": latency(profile),
        "step_times_s": [s.time_s for s in profile.steps],
        "weight_updates": [
            {"start_s": u.start_s - profile.start_s, "time_s": u.end_s - u.start_s} for u in profile.weight_updates
        ],
        "response_tokens_per_sample": percentiles(lengths),
        "step_metrics": [s.metrics for s in profile.steps],
    }
