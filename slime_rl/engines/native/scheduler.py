"""Continuous-batching scheduler: one model thread that admits, prefills, decodes and finishes requests.

Owns request life cycles. Every step the model thread (1) moves newly submitted requests into the
waiting queue and runs queued commands (abort, pause, weight updates: they run between steps, so
they never race a forward), (2) prefills as many waiting requests as free slots and the prefill token
budget allow, in one right-padded batch, and (3) runs one decode forward over all running rows and
samples all rows at once. Finished rows leave at once and their slot is refilled by compaction.

Results reach other threads only through each request's `sink` callback (called on the model
thread; the HTTP layer forwards it to asyncio with `call_soon_threadsafe`). A request always ends
with exactly one final update whose finish reason is stop, length or abort, including requests
aborted while waiting and requests pending at shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from slime_rl.engines.native.profiler import StepProfiler
from slime_rl.engines.native.requests import PAUSE_MODES, EngineRequest, RequestUpdate, context_error
from slime_rl.engines.native.runner import ModelRunner
from slime_rl.engines.native.sampling import make_row_sampling, sample
from slime_rl.engines.protocol import FinishReason

logger = logging.getLogger(__name__)


class Scheduler:
    """Continuous batching over `runner`. Public methods are thread-safe; the model loop runs in its own thread."""

    def __init__(
        self,
        runner: ModelRunner,
        *,
        max_running_requests: int,
        eos_token_ids: set[int],
        max_prefill_tokens: int = 4096,
        weight_version: str = "default",
    ) -> None:
        self.runner = runner
        self.max_running_requests = max_running_requests
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_prefill_tokens = max_prefill_tokens
        self.weight_version = weight_version
        self._cond = threading.Condition()
        self._incoming: list[EngineRequest] = []
        self._commands: list[tuple[Callable[[], Any], Future]] = []
        self._live: set[str] = set()
        self._waiting: deque[EngineRequest] = deque()
        self._running: list[EngineRequest] = []
        self._paused = False
        self._stopping = False
        self.num_finished = 0  # requests ended (any finish reason) since start
        self.profiler = StepProfiler()  # /start_profile, /stop_profile: driven on the model thread
        self._shared_generator = torch.Generator(device=runner.device)
        self._thread = threading.Thread(target=self._loop, name="native-engine-model", daemon=True)

    # -- thread-safe API ------------------------------------------------------------------------------

    def start(self, seed: int = 0) -> None:
        self._shared_generator.manual_seed(seed)
        self._thread.start()

    def stop(self) -> None:
        """Abort everything pending and end the model thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def submit(self, request: EngineRequest) -> None:
        """Queue `request`. Raises ValueError if its rid is still live or it cannot fit the context."""
        if len(request.input_ids) == 0:
            raise ValueError(f"request {request.rid}: empty input_ids")
        params = request.params
        error = context_error(len(request.input_ids), params.max_new_tokens, self.runner.max_len)
        if error is not None:
            raise ValueError(error)
        request.stop_ids = frozenset(params.stop_token_ids or ()) | (
            frozenset() if params.ignore_eos else self.eos_token_ids
        )
        with self._cond:
            if request.rid in self._live:
                raise ValueError(f"request id {request.rid!r} is already running; rids must be unique")
            self._live.add(request.rid)
            self._incoming.append(request)
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the model thread between steps; the future holds its result or exception."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(RuntimeError("engine is shutting down"))
                return future
            self._commands.append((fn, future))
            self._cond.notify()
        return future

    def abort(self, rid_prefix: str | None) -> Future:
        """Abort running and waiting requests whose rid starts with `rid_prefix` (None = all)."""
        return self.call(lambda: self._abort(rid_prefix, "aborted by request"))

    def pause(self, mode: str) -> Future:
        if mode not in PAUSE_MODES:
            raise ValueError(f"pause mode {mode!r} is unknown; choose one of {PAUSE_MODES}")
        return self.call(lambda: self._pause(mode))

    def resume(self) -> Future:
        return self.call(self._resume)

    @property
    def is_paused(self) -> bool:
        return self._paused

    def loads(self) -> dict[str, int]:
        """Approximate queue sizes (read without the model thread's cooperation)."""
        running = list(self._running)
        return {
            "num_running_reqs": len(running),
            "num_waiting_reqs": len(self._waiting) + len(self._incoming),
            "num_used_tokens": sum(r.cache_len for r in running),
        }

    # -- model thread ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._commands or self._has_work()):
                    self._cond.wait()
                if self._stopping:
                    break
                incoming, self._incoming = self._incoming, []
                commands, self._commands = self._commands, []
            self._waiting.extend(incoming)
            for fn, future in commands:
                try:
                    future.set_result(fn())
                except Exception as err:  # noqa: BLE001 - handed to the caller through the future
                    future.set_exception(err)
            if self._paused:
                continue
            stepped = bool(self._waiting or self._running)
            try:
                with torch.inference_mode():
                    self._admit()
                    if self._running:
                        self._decode_step()
            except Exception:
                logger.exception("model step failed; aborting %d running requests", len(self._running))
                self._abort(None, "engine step failed; see the engine log")
            if stepped:
                self.profiler.step()  # a num_steps profile ends here
        self._shutdown()

    def _has_work(self) -> bool:
        return bool(self._incoming) or (not self._paused and bool(self._running or self._waiting))

    def _shutdown(self) -> None:
        with self._cond:
            incoming, self._incoming = self._incoming, []
            commands, self._commands = self._commands, []
        self._waiting.extend(incoming)
        self._abort(None, "engine shut down")
        for _, future in commands:
            future.set_exception(RuntimeError("engine shut down"))

    def _admit(self) -> None:
        """Prefill waiting requests (FIFO) while slots and `max_prefill_tokens` prompt tokens allow."""
        batch: list[tuple[EngineRequest, list[int]]] = []
        budget = self.max_prefill_tokens
        while self._waiting and len(self._running) + len(batch) < self.max_running_requests:
            request = self._waiting[0]
            if request.params.max_new_tokens == 0:
                self._waiting.popleft()
                self._finish(request, FinishReason(type="length", length=0))
                continue
            # A retracted request re-prefills its generated tokens except the last, which it feeds next.
            prompt = request.input_ids + request.output_ids[:-1]
            if batch and len(prompt) > budget:
                break
            self._waiting.popleft()
            batch.append((request, prompt))
            budget -= len(prompt)
            request.metrics.setdefault("queue_time", time.monotonic() - request.received)
        for chunk in self._prefill_chunks(batch):
            logits = self.runner.prefill(len(self._running), [prompt for _, prompt in chunk])
            for request, prompt in chunk:
                request.cache_len = len(prompt)
                self._running.append(request)
            fresh = [i for i, (request, _) in enumerate(chunk) if not request.output_ids]
            if fresh:
                self._sample([chunk[i][0] for i in fresh], logits[fresh])

    def _prefill_chunks(
        self, batch: list[tuple[EngineRequest, list[int]]]
    ) -> list[list[tuple[EngineRequest, list[int]]]]:
        """Split a prefill batch into forwards of similar lengths, each padded to at most `max_prefill_tokens`.

        Prefill pads every prompt of a forward to the longest one and attends quadratically over that width,
        so one long resumed partial (prompt + its generated tokens) in a batch of short fresh prompts would
        multiply the cost. Prompts go in length order and a forward takes the next one only while its padded
        size stays within the budget and at most twice its real tokens. A prompt longer than the budget runs
        alone.
        """
        chunks: list[list[tuple[EngineRequest, list[int]]]] = []
        real = 0  # real tokens of the last chunk
        for item in sorted(batch, key=lambda item: len(item[1])):
            width = len(item[1])
            padded = (len(chunks[-1]) + 1) * width if chunks else 0
            if chunks and padded <= self.max_prefill_tokens and padded <= 2 * (real + width):
                chunks[-1].append(item)
                real += width
            else:
                chunks.append([item])
                real = width
        return chunks

    def _decode_step(self) -> None:
        rows = self._running
        logits = self.runner.decode([r.output_ids[-1] for r in rows], [r.cache_len for r in rows])
        for request in rows:
            request.cache_len += 1
        self._sample(list(rows), logits)

    def _sample(self, rows: list[EngineRequest], logits: torch.Tensor) -> None:
        """Sample one token for each of `rows` (logits [len(rows), V]), then finish rows that are done."""
        for i, request in enumerate(rows):
            if len(request.output_ids) < request.params.min_new_tokens and request.stop_ids:
                logits[i, list(request.stop_ids)] = float("-inf")
        params = [r.params for r in rows]
        row_sampling = make_row_sampling(
            [p.temperature for p in params],
            [p.top_p for p in params],
            [p.top_k for p in params],
            [p.sampling_seed for p in params],
            [len(r.output_ids) for r in rows],
            logits.device,
        )
        tokens, logprobs = sample(logits, row_sampling, self._shared_generator)
        done: list[tuple[EngineRequest, FinishReason]] = []
        now = time.monotonic()
        for request, token, logprob in zip(rows, tokens.tolist(), logprobs.tolist(), strict=True):
            request.output_ids.append(token)
            request.logprobs.append(logprob)
            request.metrics.setdefault("first_token_latency", now - request.received)
            finish = self._finish_reason(request, token)
            if finish is not None:
                done.append((request, finish))
            elif request.stream:
                request.sink(self._snapshot(request, None))
        for request, finish in done:
            self._release(request)
            self._finish(request, finish)

    def _finish_reason(self, request: EngineRequest, token: int) -> FinishReason | None:
        num_out = len(request.output_ids)
        if token in request.stop_ids:  # banned before min_new_tokens, so this respects it
            return FinishReason(type="stop", matched=token)
        # submit() admits only requests whose input + max_new_tokens fit the context, so this is the only limit.
        if num_out >= request.params.max_new_tokens:
            return FinishReason(type="length", length=num_out)
        return None

    def _release(self, request: EngineRequest) -> None:
        """Remove a running request's row, moving the last row into its slot to keep rows compact."""
        index = self._running.index(request)
        last = len(self._running) - 1
        if index != last:
            moved = self._running[last]
            self.runner.move_row(last, index, moved.cache_len)
            self._running[index] = moved
        self._running.pop()

    def _snapshot(self, request: EngineRequest, finish: FinishReason | None) -> RequestUpdate:
        return RequestUpdate(
            output_ids=list(request.output_ids),
            logprobs=list(request.logprobs),
            finish_reason=finish,
            weight_version=self.weight_version,
            metrics=dict(request.metrics),
        )

    def _finish(self, request: EngineRequest, finish: FinishReason) -> None:
        with self._cond:
            self._live.discard(request.rid)
            self.num_finished += 1
        try:
            request.sink(self._snapshot(request, finish))
        except Exception:
            logger.exception("delivering the result of %s failed", request.rid)

    def _abort(self, rid_prefix: str | None, message: str) -> int:
        def matches(request: EngineRequest) -> bool:
            return rid_prefix is None or (rid_prefix != "" and request.rid.startswith(rid_prefix))

        victims = [r for r in self._running if matches(r)]
        if len(victims) == len(self._running):  # nothing stays: drop every row, no K/V compaction needed
            self._running = []
        for request in victims if self._running else ():
            self._release(request)
        kept = deque(r for r in self._waiting if not matches(r))
        victims += [r for r in self._waiting if matches(r)]
        self._waiting = kept
        for request in victims:
            self._finish(request, FinishReason(type="abort", message=message))
        if victims:
            logger.info("aborted %d requests (%s)", len(victims), "all" if rid_prefix is None else repr(rid_prefix))
        return len(victims)

    def _pause(self, mode: str) -> None:
        if mode == "abort":
            self._abort(None, "generation paused")
        elif mode == "retract":
            # Drop their K/V; on continue they re-prefill prompt + generated tokens and go on.
            self._waiting.extendleft(reversed(self._running))
            self._running = []
        self._paused = True

    def _resume(self) -> None:
        self._paused = False

    def flush_cache(self) -> bool:
        """True if idle (there is no prefix cache to drop); False while requests run or wait (model thread)."""
        return not (self._running or self._waiting)

    def set_weight_version(self, version: str) -> None:
        self.weight_version = version
