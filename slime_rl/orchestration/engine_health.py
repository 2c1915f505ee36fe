"""EngineMonitor: notices dead and hung engines and restarts them (`engine.fault_tolerance`).

A background thread of the driver checks every engine that is up (serving, or restarted and waiting for
its weights) each `engine.health_check_interval_s`:
- dead: its server process is gone (asked through its host actor, once per host) or its port refuses
  connections; taken out at once;
- hung: `/health_generate` did not answer 200 within `engine.health_check_timeout_s`, for
  `engine.health_check_failures` checks in a row; taken out then.
All engines are asked at once, so a check takes one timeout however many engines hang. An engine taken out
(`EngineFleet.take_out`) leaves the router first, so new requests go to the others; the router retries the
requests it had sent to it on another engine, and the rollout side stops aborting it. Its host is then
restarted on its ports (taking out the host's other engines: simulated engines share a process), on a
thread of its own (a restart takes seconds), and its engines wait for the training loop to sync their
weights. A failed restart is tried again at the next check, up to `engine.max_restarts`.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx

from slime_rl.config.engine import EngineConfig
from slime_rl.orchestration.engines import AWAITING_SYNC, DOWN, SERVING, EngineFleet

logger = logging.getLogger(__name__)

_Outcome = str | httpx.ConnectError | None  # of one /health_generate: None ok, else the failure


class EngineMonitor:
    """Watches the engines of `fleet`; use as a context manager (the thread runs inside the block)."""

    def __init__(self, fleet: EngineFleet, cfg: EngineConfig) -> None:
        self.fleet = fleet
        self.cfg = cfg
        self.failures = [0] * len(fleet.engines)  # failed health checks in a row, per engine
        self._restarting: set[int] = set()  # hosts
        self._given_up: set[int] = set()  # hosts whose engines are past engine.max_restarts
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-monitor", daemon=True)

    def __enter__(self) -> EngineMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()  # a restart still running ends when the fleet stops its actor

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.health_check_interval_s):
            try:
                self.check()
            except Exception:  # a bug here must not end the watching
                logger.exception("engine health check failed")

    def check(self) -> list[int]:
        """Check every engine once: take out the failed ones and restart the hosts of the down ones.

        Returns the engines this call took out. Safe to call from any thread.
        """
        up = [i for i in range(len(self.fleet.engines)) if self.fleet.state(i) in (SERVING, AWAITING_SYNC)]
        # A restarted engine can die again before its sync, so awaiting_sync ones are checked too.
        alive = self.fleet.hosts_alive(
            sorted({self.fleet.host_of[i] for i in up}), timeout_s=self.cfg.health_check_timeout_s
        )
        outcomes = self._health_generate([i for i in up if alive[self.fleet.host_of[i]]])
        reasons = {}
        for index in up:
            if alive[self.fleet.host_of[index]]:
                reason = self._judge(index, outcomes[index])
            else:
                reason = "its server process is gone"
            if reason is not None:
                reasons[index] = reason
        taken_out = self.fleet.take_out_all(reasons)
        for index in range(len(self.fleet.engines)):
            if self.fleet.state(index) == DOWN:
                self._start_restart(index)
        return taken_out

    def probe(self, index: int) -> str | None:
        """None if engine `index` is healthy (or not yet judged hung), else why it is out of service."""
        if not self.fleet.is_alive(index, timeout_s=self.cfg.health_check_timeout_s):
            return "its server process is gone"
        return self._judge(index, self._health_generate([index])[index])

    def _health_generate(self, indices: list[int]) -> dict[int, _Outcome]:
        """`/health_generate` of each engine in `indices`, all at once."""

        async def one(client: httpx.AsyncClient, index: int) -> _Outcome:
            try:
                response = await client.get(f"{self.fleet.engines[index].url}/health_generate")
            except httpx.ConnectError as err:
                return err
            except httpx.HTTPError as err:
                return f"/health_generate failed: {err!r}"
            return None if response.status_code == 200 else f"/health_generate answered {response.status_code}"

        async def every() -> list[_Outcome]:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=self.cfg.health_check_timeout_s, limits=limits) as client:
                return list(await asyncio.gather(*(one(client, i) for i in indices)))

        return dict(zip(indices, asyncio.run(every()), strict=True)) if indices else {}

    def _judge(self, index: int, outcome: _Outcome) -> str | None:
        if isinstance(outcome, httpx.ConnectError):
            return f"it refuses connections ({outcome})"
        if outcome is None:
            self.failures[index] = 0
            return None
        self.failures[index] += 1
        url = self.fleet.engines[index].url
        logger.warning("engine %d (%s): %s (%d in a row)", index, url, outcome, self.failures[index])
        if self.failures[index] < self.cfg.health_check_failures:
            return None
        return f"hung: {outcome}, {self.failures[index]} checks in a row (engine.health_check_failures)"

    def _start_restart(self, index: int) -> None:
        host = self.fleet.host_of[index]
        with self._lock:
            if host in self._restarting or host in self._given_up or self._stop.is_set():
                return
            self._restarting.add(host)
        threading.Thread(target=self._restart, args=(index,), name=f"engine-restart-{host}", daemon=True).start()

    def _restart(self, index: int) -> None:
        host = self.fleet.host_of[index]
        try:
            if self.fleet.restart(index):
                for member in self.fleet.host_engines[host]:
                    self.failures[member] = 0
            else:
                self._given_up.add(host)
                logger.error(
                    "engine %d stays out of service: it used engine.max_restarts=%d", index, self.cfg.max_restarts
                )
        except Exception as err:
            logger.warning("restart of engine %d failed (tried again at the next check): %s", index, err)
        finally:
            with self._lock:
                self._restarting.discard(host)
