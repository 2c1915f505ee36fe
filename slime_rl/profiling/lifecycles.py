"""Typed records of a profiled rollout: request lifecycles, rollout-side intervals, engine loads, weight updates.

The capture is raw tuples (cheap on the hot path): `EngineClient.lifecycles` holds one `REQUEST_RECORD` per
`/generate`, `RolloutManager.timeline` holds `(kind, start_s, end_s)` intervals. This module turns them into
records with the request's phases. All times are wall-clock seconds (`time.time()`), so records taken in
different processes (rollout worker, driver) share one clock.

A request's phases, from the client's timestamps and the engine's `meta_info`:
- queued: `[sent_s, sent_s + queue_s)`. `queue_s` is the engine's `queue_time` when it reports one (SGLang with
  `--enable-metrics`, the native and the simulated engines always); otherwise the time the request spent
  outside the engine: client round trip minus the engine's `e2e_latency` (router, transport, HTTP parsing).
- prefill: until the first token: `first_token_latency - queue_time` when the engine reports both, else 0.
- decode: the rest, until `answered_s`.
A request whose rid was sent before (an aborted sample continuing, APRIL or a weight update) is a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slime_rl.engines.client import REQUEST_RECORD


@dataclass(slots=True, frozen=True, kw_only=True)
class RequestLifecycle:
    """One `/generate` call as the rollout side saw it, with the engine's own timings."""

    rid: str
    sent_s: float
    answered_s: float
    prompt_tokens: int
    completion_tokens: int
    finish: str  # stop | length | abort
    weight_version: str
    engine_e2e_s: float
    engine_queue_s: float | None
    engine_ttft_s: float | None
    is_resume: bool = False

    @property
    def e2e_s(self) -> float:
        return self.answered_s - self.sent_s

    @property
    def queue_s(self) -> float:
        if self.engine_queue_s is not None:
            return min(self.engine_queue_s, self.e2e_s)
        return min(max(self.e2e_s - self.engine_e2e_s, 0.0), self.e2e_s)

    @property
    def prefill_s(self) -> float:
        if self.engine_ttft_s is None or self.engine_queue_s is None:
            return 0.0
        return min(max(self.engine_ttft_s - self.engine_queue_s, 0.0), self.e2e_s - self.queue_s)

    @property
    def prefill_start_s(self) -> float:
        return self.sent_s + self.queue_s

    @property
    def decode_start_s(self) -> float:
        return self.prefill_start_s + self.prefill_s


@dataclass(slots=True, frozen=True)
class Interval:
    """A rollout-side interval: `step`, `buffer`, `reward`, `abort_wait` (manager) or `weight_update` (driver)."""

    kind: str
    start_s: float
    end_s: float


@dataclass(slots=True, frozen=True)
class LoadSample:
    """One poll of an engine's `/v1/loads`."""

    engine: int  # index into Profile.engine_urls
    t_s: float
    num_running: int
    num_waiting: int


@dataclass(slots=True, kw_only=True)
class ProfiledStep:
    """One rollout step: its window, its requests and intervals, and the metrics the manager returned."""

    index: int
    start_s: float
    end_s: float
    requests: list[RequestLifecycle]
    intervals: list[Interval]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def time_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(slots=True, kw_only=True)
class Profile:
    """Everything one profiled run recorded."""

    engine_urls: list[str]
    steps: list[ProfiledStep]
    loads: list[LoadSample]
    weight_updates: list[Interval]
    load_poll_interval_s: float

    @property
    def start_s(self) -> float:
        return min((s.start_s for s in self.steps), default=0.0)

    @property
    def end_s(self) -> float:
        return max((s.end_s for s in self.steps), default=0.0)

    @property
    def requests(self) -> list[RequestLifecycle]:
        return [r for s in self.steps for r in s.requests]


def lifecycles_from_records(records: list[tuple], seen_rids: set[str]) -> list[RequestLifecycle]:
    """`EngineClient.lifecycles` tuples as records, ordered by send time; `seen_rids` (updated) marks resumes."""
    out = []
    for record in sorted(records, key=lambda r: r[1]):
        fields: dict[str, Any] = dict(zip(REQUEST_RECORD, record, strict=True))
        rid = fields["rid"]
        out.append(RequestLifecycle(**fields, is_resume=rid in seen_rids))
        seen_rids.add(rid)
    return out


def step_from_records(
    index: int, requests: list[RequestLifecycle], timeline: list[tuple[str, float, float]], metrics: dict[str, float]
) -> ProfiledStep:
    """One step from the manager's timeline (its `step` interval is the window; the last one wins)."""
    intervals = [Interval(kind, start, end) for kind, start, end in timeline]
    windows = [i for i in intervals if i.kind == "step"]
    if windows:
        start_s, end_s = windows[-1].start_s, windows[-1].end_s
    else:  # no step interval recorded: span what was
        times = [r.sent_s for r in requests] + [r.answered_s for r in requests]
        start_s, end_s = (min(times), max(times)) if times else (0.0, 0.0)
    return ProfiledStep(
        index=index,
        start_s=start_s,
        end_s=end_s,
        requests=requests,
        intervals=[i for i in intervals if i.kind != "step"],
        metrics=metrics,
    )


def response_lengths(requests: list[RequestLifecycle]) -> list[int]:
    """Tokens each sample (rid) generated over all its requests (resumes included), in first-sent order."""
    totals: dict[str, int] = {}
    for r in requests:
        totals[r.rid] = totals.get(r.rid, 0) + r.completion_tokens
    return list(totals.values())
