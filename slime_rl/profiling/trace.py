"""`trace.json`: a profiled run in the Chrome/Perfetto trace-event format (open it in ui.perfetto.dev).

Tracks (pid, tid):
- pid 1 "rollout requests": one tid per request slot (requests are packed greedily onto the lowest free
  slot, so a slot shows one request at a time). Each request is a complete event (`ph: "X"`) named by how it
  ended (`stop`, `length`, `abort`; `resume:` in front when its sample continues an aborted request), with
  child events `queued`, `prefill`, `decode` (see lifecycles.py for their definitions).
- pid 2 "rollout worker": tid 1 steps, tid 2 reward calls, tid 3 buffer I/O, tid 4 abort waits.
- pid 3 "driver": tid 1 weight updates (version-only republishes that pause the engines).
- pid 10+i "engine i <url>": counters (`ph: "C"`) of running and waiting requests from `/v1/loads`, and its
  idle runs (no request) as complete events `idle`.
Times are microseconds from the first step's start.
"""

from __future__ import annotations

import heapq
from typing import Any

from slime_rl.profiling.lifecycles import Profile

REQUESTS_PID, WORKER_PID, DRIVER_PID, ENGINE_PID0 = 1, 2, 3, 10
WORKER_TIDS = {"step": 1, "reward": 2, "buffer": 3, "abort_wait": 4}


def _meta(pid: int, name: str, tid: int | None = None) -> dict[str, Any]:
    if tid is None:
        return {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0, "args": {"name": name}}
    return {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": 0, "args": {"name": name}}


def build_trace(profile: Profile) -> dict[str, Any]:
    """The trace object (`{"traceEvents": [...], "displayTimeUnit": "ms"}`)."""
    t0 = profile.start_s

    def us(t: float) -> float:
        return round((t - t0) * 1e6, 1)

    def complete(name: str, pid: int, tid: int, start: float, end: float, **args: Any) -> dict[str, Any]:
        return {
            "ph": "X",
            "name": name,
            "pid": pid,
            "tid": tid,
            "ts": us(start),
            "dur": round(max(end - start, 0.0) * 1e6, 1),
            "args": args,
        }

    events: list[dict[str, Any]] = [
        _meta(REQUESTS_PID, "rollout requests"),
        _meta(WORKER_PID, "rollout worker"),
        _meta(DRIVER_PID, "driver"),
        _meta(DRIVER_PID, "weight updates", 1),
        *(_meta(WORKER_PID, kind, tid) for kind, tid in WORKER_TIDS.items()),
    ]
    free: list[int] = []  # heap of free slots
    busy: list[tuple[float, int]] = []  # heap of (answered_s, slot)
    num_slots = 0
    for r in sorted(profile.requests, key=lambda r: r.sent_s):
        while busy and busy[0][0] <= r.sent_s:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            slot = heapq.heappop(free)
        else:
            num_slots += 1
            slot = num_slots
            events.append(_meta(REQUESTS_PID, f"slot {slot}", slot))
        heapq.heappush(busy, (r.answered_s, slot))
        name = f"resume:{r.finish}" if r.is_resume else r.finish
        args = {
            "rid": r.rid,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "weight_version": r.weight_version,
            "engine_e2e_s": r.engine_e2e_s,
        }
        events.append(complete(name, REQUESTS_PID, slot, r.sent_s, r.answered_s, **args))
        for phase, start, end in (
            ("queued", r.sent_s, r.prefill_start_s),
            ("prefill", r.prefill_start_s, r.decode_start_s),
            ("decode", r.decode_start_s, r.answered_s),
        ):
            if end > start:
                events.append(complete(phase, REQUESTS_PID, slot, start, end))
    for step in profile.steps:
        events.append(complete(f"step {step.index}", WORKER_PID, WORKER_TIDS["step"], step.start_s, step.end_s))
        for interval in step.intervals:
            if interval.kind in WORKER_TIDS:
                events.append(
                    complete(interval.kind, WORKER_PID, WORKER_TIDS[interval.kind], interval.start_s, interval.end_s)
                )
    for update in profile.weight_updates:
        events.append(complete("weight update", DRIVER_PID, 1, update.start_s, update.end_s))
    for i, url in enumerate(profile.engine_urls):
        pid = ENGINE_PID0 + i
        events += [_meta(pid, f"engine {i} {url}"), _meta(pid, "idle", 1)]
        polls = sorted((s for s in profile.loads if s.engine == i), key=lambda s: s.t_s)
        idle_since: float | None = None
        for poll in polls:
            events.append(
                {
                    "ph": "C",
                    "name": "requests",
                    "pid": pid,
                    "tid": 0,
                    "ts": us(poll.t_s),
                    "args": {"running": poll.num_running, "waiting": poll.num_waiting},
                }
            )
            is_idle = poll.num_running + poll.num_waiting == 0
            if is_idle and idle_since is None:
                idle_since = poll.t_s
            elif not is_idle and idle_since is not None:
                events.append(complete("idle", pid, 1, idle_since, poll.t_s))
                idle_since = None
        if idle_since is not None and polls:
            events.append(complete("idle", pid, 1, idle_since, polls[-1].t_s + profile.load_poll_interval_s))
    return {"traceEvents": events, "displayTimeUnit": "ms"}
