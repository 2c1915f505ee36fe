"""Where a rollout step's wall time went: a partition of the step window into named causes.

A sweep over the step window `[start, end)` (the manager's `generate` call) classifies every instant `t` by
the first rule that holds (requests and their phases as `lifecycles.py` defines them):

0. `weight_update_pause`: a weight update (profile.republish_mode=in_flight) holds the engines paused.
1. `abort_wait`: the manager is aborting (APRIL's abort at the target, or a failure): from `abort_all` until
   every aborted request returned and the engines report no load.
2. Requests in flight (`n(t) > 0`, sent and not answered). The instant is shared among them by phase: a share
   `n_queued/n` is `queueing`, `n_prefill/n` is `prefill` and `n_decode/n` is decode, which counts as
   `long_tail` while `n(t) < tail_fraction x peak` (peak = the most requests in flight during the step: the
   engines are mostly empty and the step waits on its last, longest requests) and `useful_decode` otherwise.
3. `reward`: reward scoring runs and no request is in flight (scoring overlapped by generation costs nothing).
4. `buffer_io`: the manager takes groups from or settles groups into the Redis buffer, nothing in flight.
5. `rollout_overhead`: anything else on the rollout side (scheduling, Python, Ray call, event loop).

The categories sum to the step time exactly. Engine idle time is a per-engine view, not part of the
partition: the time within the step an engine had no running or waiting request by its `/v1/loads` polls
(each poll stands for the time until the next), and the number of such idle runs (bubbles).
"""

from __future__ import annotations

from collections.abc import Sequence

from slime_rl.profiling.lifecycles import Interval, LoadSample, RequestLifecycle

CATEGORIES = (
    "weight_update_pause",
    "useful_decode",
    "long_tail",
    "queueing",
    "prefill",
    "abort_wait",
    "reward",
    "buffer_io",
    "rollout_overhead",
)
_COUNTERS = ("queued", "prefill", "decode", "weight_update", "abort_wait", "reward", "buffer")


def _events(
    requests: Sequence[RequestLifecycle], intervals: Sequence[Interval], start_s: float, end_s: float
) -> list[tuple[float, str, int]]:
    def clip(t: float) -> float:
        return min(max(t, start_s), end_s)

    events: list[tuple[float, str, int]] = []

    def span(kind: str, a: float, b: float) -> None:
        a, b = clip(a), clip(b)
        if b > a:
            events.extend(((a, kind, 1), (b, kind, -1)))

    for r in requests:
        span("queued", r.sent_s, r.prefill_start_s)
        span("prefill", r.prefill_start_s, r.decode_start_s)
        span("decode", r.decode_start_s, r.answered_s)
    for interval in intervals:
        if interval.kind in _COUNTERS:
            span(interval.kind, interval.start_s, interval.end_s)
    events.sort(key=lambda e: (e[0], e[2]))  # ends before starts at the same instant
    return events


def attribute_step(
    requests: Sequence[RequestLifecycle],
    intervals: Sequence[Interval],
    start_s: float,
    end_s: float,
    *,
    tail_fraction: float,
) -> dict[str, float]:
    """Seconds per category (`CATEGORIES`) of the step window; they sum to `end_s - start_s`."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    events = _events(requests, intervals, start_s, end_s)
    counts = dict.fromkeys(_COUNTERS, 0)
    peak = 0
    for _, kind, delta in events:
        counts[kind] += delta
        peak = max(peak, counts["queued"] + counts["prefill"] + counts["decode"])
    counts = dict.fromkeys(_COUNTERS, 0)
    t = start_s
    for at, kind, delta in [*events, (end_s, "", 0)]:
        dt = at - t
        if dt > 0:
            n = counts["queued"] + counts["prefill"] + counts["decode"]
            if counts["weight_update"]:
                out["weight_update_pause"] += dt
            elif counts["abort_wait"]:
                out["abort_wait"] += dt
            elif n:
                out["queueing"] += dt * counts["queued"] / n
                out["prefill"] += dt * counts["prefill"] / n
                decode = dt * counts["decode"] / n
                out["long_tail" if n < tail_fraction * peak else "useful_decode"] += decode
            elif counts["reward"]:
                out["reward"] += dt
            elif counts["buffer"]:
                out["buffer_io"] += dt
            else:
                out["rollout_overhead"] += dt
            t = at
        if kind:
            counts[kind] += delta
    return out


def overlapped_s(intervals: Sequence[Interval], kind: str, start_s: float, end_s: float) -> float:
    """Total seconds of `kind` intervals within the window, overlaps counted once each (e.g. all reward calls)."""
    return sum(max(min(i.end_s, end_s) - max(i.start_s, start_s), 0.0) for i in intervals if i.kind == kind)


def engine_idle(
    loads: Sequence[LoadSample], num_engines: int, start_s: float, end_s: float, poll_interval_s: float
) -> list[dict[str, float]]:
    """Per engine: `idle_s` (no running or waiting request), `busy_frac` of the window, and `bubbles` (idle runs).

    Each poll stands for the time until the engine's next poll (the last one for `poll_interval_s`), clipped
    to the window.
    """
    out = []
    for engine in range(num_engines):
        polls = sorted((s for s in loads if s.engine == engine), key=lambda s: s.t_s)
        idle = covered = 0.0
        bubbles = 0
        was_idle = False
        for i, poll in enumerate(polls):
            until = polls[i + 1].t_s if i + 1 < len(polls) else poll.t_s + poll_interval_s
            dt = max(min(until, end_s) - max(poll.t_s, start_s), 0.0)
            if dt <= 0:
                continue
            covered += dt
            is_idle = poll.num_running + poll.num_waiting == 0
            if is_idle:
                idle += dt
                bubbles += not was_idle
            was_idle = is_idle
        out.append(
            {
                "idle_s": idle,
                "busy_frac": (covered - idle) / covered if covered else 0.0,
                "bubbles": float(bubbles),
            }
        )
    return out
