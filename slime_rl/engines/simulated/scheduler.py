"""Continuous batching without a model: the native scheduler's request life cycle, timed by a cost model.

Owns request life cycles of one simulated engine, on the event loop (no threads): each step it (1) admits
waiting requests FIFO while `max_running_requests` slots and `max_prefill_tokens` allow, (2) sleeps the
modelled time (cost.py) of that prefill, split into forwards exactly as the native scheduler splits it
(`prefill_chunks`), plus one decode step over all running rows, plus the per-request cost of every request that
ends in this step (after that of requests that ended between steps, e.g. aborted ones), then (3) gives each
admitted fresh request its first token and every running row one decode token, as the native scheduler does.
Steps are scheduled against a running deadline, so a late wake-up (a busy event loop hosting many engines) is
caught up by the next steps instead of slowing the engine down.

Tokens are pseudo-random ids in [0, vocab_size) from a generator seeded by (seed, prompt, sampling_seed, and
the rid unless greedy): a greedy request is reproducible per prompt, a sampled one per rid. The response length
comes from `ResponseLengths`; the last token is `eos_token_id` (finish reason stop) unless the length reaches
`max_new_tokens` (length) or `ignore_eos` is set. An aborted request that comes back with its partial output
appended to its prompt (how the rollout resumes a sample, e.g. under APRIL) continues its plan: it gets the
tokens it had left, so a replayed trace keeps each sample's length across aborts. Aborts, pause modes and the one
final update per request follow the native scheduler (engines/native/scheduler.py); the thread-safe API returns
already-done futures.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from slime_rl.engines.native.requests import PAUSE_MODES, EngineRequest, RequestUpdate, context_error
from slime_rl.engines.protocol import FinishReason
from slime_rl.engines.simulated.cost import CostModel
from slime_rl.engines.simulated.lengths import ResponseLengths, prompt_key

logger = logging.getLogger(__name__)
GREEDY_TEMPERATURE = 1e-6  # SGLang: below this, sampling is greedy
MAX_RESUMABLE = 65536  # plans of aborted requests kept for a resume (oldest dropped first)


def prefill_chunks(widths: list[int], max_prefill_tokens: int) -> list[list[int]]:
    """Indices of `widths` (prompt lengths) grouped into prefill forwards as native/scheduler.py `_prefill_chunks` does.

    Prompts go in length order; a forward takes the next one while its padded size (rows x the longest, which is
    the newest) stays within `max_prefill_tokens` and at most twice its real tokens. A forward costs
    `CostModel.prefill_s(rows x width)`.
    """
    chunks: list[list[int]] = []
    real = 0
    for index in sorted(range(len(widths)), key=widths.__getitem__):
        width = widths[index]
        padded = (len(chunks[-1]) + 1) * width if chunks else 0
        if chunks and padded <= max_prefill_tokens and padded <= 2 * (real + width):
            chunks[-1].append(index)
            real += width
        else:
            chunks.append([index])
            real = width
    return chunks


def _done(result: object = None) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


@dataclass(eq=False)
class _Sequence:
    """A request and its plan: `target` tokens, the last one EOS if `ends_with_eos`."""

    request: EngineRequest
    rng: random.Random
    target: int
    ends_with_eos: bool
    received: float  # loop clock
    admitted: float | None = None
    first_token: float | None = None
    finished: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


class SimulatedScheduler:
    """One simulated engine's batching loop. Create and use it inside a running event loop."""

    def __init__(
        self,
        cost: CostModel,
        lengths: ResponseLengths,
        *,
        max_running_requests: int,
        max_prefill_tokens: int,
        max_context_len: int,
        vocab_size: int,
        eos_token_id: int,
        seed: int = 0,
        weight_version: str = "default",
    ) -> None:
        if not 0 <= eos_token_id < vocab_size:
            raise ValueError(f"eos_token_id {eos_token_id} must lie in [0, vocab_size={vocab_size})")
        self.cost = cost
        self.lengths = lengths
        self.max_running_requests = max_running_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.max_context_len = max_context_len
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.seed = seed
        self.weight_version = weight_version
        self.num_finished = 0
        self._live: set[str] = set()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._paused = False
        self._step_end = 0.0  # loop clock at which the step in progress ends (past when idle)
        self._busy_until = 0.0  # loop clock until which requests that ended between steps keep the engine busy
        self._resumable: dict[bytes, tuple[int, bool]] = {}  # key of prompt + partial output -> (tokens left, eos)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._unix_offset = time.time() - loop.time()  # meta_info timestamps are unix seconds, as in SGLang

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="simulated-engine")

    async def stop(self) -> None:
        """Abort everything pending and end the loop."""
        self._abort(None, "engine shut down")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the API app.py uses (the native scheduler's) ---------------------------------------------------------

    def submit(self, request: EngineRequest) -> None:
        """Queue `request`. Raises ValueError if its rid is still live or it cannot fit the context."""
        params = request.params
        if not request.input_ids:
            raise ValueError(f"request {request.rid}: empty input_ids")
        error = context_error(len(request.input_ids), params.max_new_tokens, self.max_context_len)
        if error is not None:
            raise ValueError(error)
        if request.rid in self._live:
            raise ValueError(f"request id {request.rid!r} is already running; rids must be unique")
        greedy = params.temperature < GREEDY_TEMPERATURE
        key = f"{self.seed}|{params.sampling_seed}|{'' if greedy else request.rid}|{request.input_ids}"
        rng = random.Random(hashlib.blake2b(key.encode(), digest_size=8).digest())
        resumed = self._resumable.pop(prompt_key(request.input_ids), None) if self._resumable else None
        if params.ignore_eos:
            target, ends_with_eos = params.max_new_tokens, False
        else:
            if resumed is not None:  # the rest of an aborted request's plan; its EOS only if that still fits
                drawn = resumed[0] if resumed[1] else params.max_new_tokens + 1
            else:
                drawn = self.lengths.draw(request.input_ids, rng)
            drawn = max(drawn, params.min_new_tokens)
            target, ends_with_eos = min(drawn, params.max_new_tokens), drawn < params.max_new_tokens
        request.stop_ids = frozenset(params.stop_token_ids or ()) | {self.eos_token_id}
        self._live.add(request.rid)
        self._waiting.append(_Sequence(request, rng, target, ends_with_eos, self._clock()))
        self._wake.set()

    def abort(self, rid_prefix: str | None) -> Future:
        """Abort running and waiting requests whose rid starts with `rid_prefix` (None = all).

        As in the native engine, the abort takes effect when the step in progress ends, and the aborted requests'
        answers go out one per `request_s` after that (the engine is busy until the last one).
        """
        self._abort(rid_prefix, "aborted by request", paced=True)
        return _done()

    def pause(self, mode: str) -> Future:
        if mode not in PAUSE_MODES:
            raise ValueError(f"pause mode {mode!r} is unknown; choose one of {PAUSE_MODES}")
        if mode == "abort":
            self._abort(None, "generation paused")
        elif mode == "retract":  # they re-prefill prompt + generated tokens on continue
            self._waiting.extendleft(reversed(self._running))
            self._running = []
        self._paused = True
        return _done()

    def resume(self) -> Future:
        self._paused = False
        self._wake.set()
        return _done()

    @property
    def is_paused(self) -> bool:
        return self._paused

    def loads(self) -> dict[str, int]:
        return {
            "num_running_reqs": len(self._running),
            "num_waiting_reqs": len(self._waiting),
            "num_used_tokens": sum(len(s.request.input_ids) + len(s.request.output_ids) for s in self._running),
        }

    def flush_cache(self) -> bool:
        """True if idle; False while requests run or wait (nothing is cached either way)."""
        return not (self._running or self._waiting)

    def set_weight_version(self, version: str) -> None:
        self.weight_version = version

    # -- the loop ---------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        deadline = self._clock()
        while True:
            if self._paused or not (self._waiting or self._running):
                self._wake.clear()
                await self._wake.wait()
                deadline = max(self._clock(), self._busy_until)  # the modelled clock starts again from an idle engine
                continue
            admitted, prefill_s = self._admit()
            rows = list(self._running)
            context = sum(len(s.request.input_ids) + len(s.request.output_ids) for s in rows)
            fresh = {id(s) for s in admitted if not s.request.output_ids}
            ending = sum(len(s.request.output_ids) + 1 + (id(s) in fresh) >= s.target for s in rows)
            deadline = max(deadline, self._clock() - 1.0, self._busy_until)  # lagging over 1 s behind: drop the debt
            deadline += prefill_s + self.cost.decode_s(len(rows), context) + self.cost.request_s * ending
            self._step_end = deadline
            await asyncio.sleep(max(0.0, deadline - self._clock()))
            now = self._clock()
            for s in admitted:
                s.metrics["prefill_finished_time"] = now + self._unix_offset
                if not s.finished and not s.request.output_ids:
                    self._next_token(s, now)
            for s in rows:
                if not s.finished:
                    self._next_token(s, now)

    def _admit(self) -> tuple[list[_Sequence], float]:
        """Move waiting requests into free slots (FIFO, within the prefill budget); returns them and their prefill s."""
        admitted: list[_Sequence] = []
        widths: list[int] = []
        budget = self.max_prefill_tokens
        now = self._clock()
        while self._waiting and len(self._running) < self.max_running_requests:
            s = self._waiting[0]
            if s.request.params.max_new_tokens == 0:
                self._waiting.popleft()
                self._finish(s, FinishReason(type="length", length=0))
                self._busy_until = max(self._busy_until, self._clock()) + self.cost.request_s
                continue
            prompt = len(s.request.input_ids) + max(0, len(s.request.output_ids) - 1)
            if admitted and prompt > budget:
                break
            self._waiting.popleft()
            budget -= prompt
            if s.admitted is None:
                s.admitted = now
                s.metrics["forward_entry_time"] = now + self._unix_offset
                s.metrics["queue_time"] = now - s.received
            self._running.append(s)
            admitted.append(s)
            widths.append(prompt)
        chunks = prefill_chunks(widths, self.max_prefill_tokens)
        return admitted, sum(self.cost.prefill_s(len(c) * max(widths[i] for i in c)) for c in chunks)

    def _next_token(self, s: _Sequence, now: float) -> None:
        request = s.request
        position = len(request.output_ids) + 1
        if position == s.target and s.ends_with_eos:
            token = self.eos_token_id
        else:
            token = s.rng.randrange(self.vocab_size)
            for _ in range(len(request.stop_ids)):  # the next id that does not stop (bounded: stop_ids may be all)
                if token not in request.stop_ids:
                    break
                token = (token + 1) % self.vocab_size
        greedy = request.params.temperature < GREEDY_TEMPERATURE
        noise = s.rng.uniform(-0.5, 0.5)
        request.output_ids.append(token)
        request.logprobs.append(-0.05 * (1 + noise) if greedy else min(-0.01, -1.0 + noise))
        if s.first_token is None:
            s.first_token = now
            s.metrics["first_token_latency"] = now - s.received
        if position >= s.target:
            self._running.remove(s)
            if s.ends_with_eos:
                self._finish(s, FinishReason(type="stop", matched=token))
            else:
                self._finish(s, FinishReason(type="length", length=position))
        elif request.stream:
            request.sink(self._snapshot(s, None))

    def _snapshot(self, s: _Sequence, finish: FinishReason | None) -> RequestUpdate:
        return RequestUpdate(
            output_ids=list(s.request.output_ids),
            logprobs=list(s.request.logprobs),
            finish_reason=finish,
            weight_version=self.weight_version,
            metrics=dict(s.metrics),
        )

    def _finish(self, s: _Sequence, finish: FinishReason) -> None:
        """Deliver `s`'s final update. Costs `request_s`: `_loop` charges the step a request ends in ahead; one that
        ends between steps (aborted, zero tokens) keeps the engine busy that long (`_busy_until`)."""
        s.finished = True
        self._live.discard(s.request.rid)
        self.num_finished += 1
        now = self._clock()
        s.metrics["request_received_ts"] = s.received + self._unix_offset
        s.metrics["request_finished_ts"] = now + self._unix_offset
        if s.first_token is not None and now > s.first_token:
            s.metrics["decode_throughput"] = (len(s.request.output_ids) - 1) / (now - s.first_token)
        try:
            s.request.sink(self._snapshot(s, finish))
        except Exception:
            logger.exception("delivering the result of %s failed", s.request.rid)

    def _abort(self, rid_prefix: str | None, message: str, *, paced: bool = False) -> int:
        def matches(s: _Sequence) -> bool:
            return rid_prefix is None or (rid_prefix != "" and s.request.rid.startswith(rid_prefix))

        victims = [s for s in self._running if matches(s)] + [s for s in self._waiting if matches(s)]
        self._running = [s for s in self._running if not matches(s)]
        self._waiting = deque(s for s in self._waiting if not matches(s))
        loop = asyncio.get_running_loop()
        start = max(self._clock(), self._step_end, self._busy_until)
        for index, s in enumerate(victims):
            if s.request.output_ids and not s.request.params.ignore_eos:
                self._keep_resumable(s)
            finish = FinishReason(type="abort", message=message)
            if paced and self.cost.request_s > 0:
                s.finished = True  # leaves the batch now, answers later
                loop.call_at(start + self.cost.request_s * (index + 1), self._finish, s, finish)
            else:
                self._finish(s, finish)
        self._busy_until = start + self.cost.request_s * len(victims)
        if victims:
            logger.info("aborted %d requests (%s)", len(victims), "all" if rid_prefix is None else repr(rid_prefix))
        return len(victims)

    def _keep_resumable(self, s: _Sequence) -> None:
        """Remember the rest of aborted `s`'s plan for a request of its prompt + partial output."""
        if len(self._resumable) >= MAX_RESUMABLE:
            del self._resumable[next(iter(self._resumable))]
        request = s.request  # unfinished, so fewer tokens than its target
        self._resumable[prompt_key(request.input_ids + request.output_ids)] = (
            s.target - len(request.output_ids),
            s.ends_with_eos,
        )
