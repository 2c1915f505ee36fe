"""EngineMonitor: notices dead and hung engines and restarts them (`engine.fault_tolerance`).

A background thread of the driver checks every engine that is up (serving, or restarted and waiting for
its weights) each `engine.health_check_interval_s`:
- dead: its server process is gone (asked through its actor) or its port refuses connections; taken
  out at once;
- hung: `/health_generate` did not answer 200 within `engine.health_check_timeout_s`, for
  `engine.health_check_failures` checks in a row; taken out then.
An engine taken out (`EngineFleet.take_out`) leaves the router first, so new requests go to the others;
the router retries the requests it had sent to it on another engine, and the rollout side stops aborting
it. It is then restarted on its own port, on a thread of its own (a restart takes seconds), and waits
for the training loop to sync its weights. A failed restart is tried again at the next check, up to
`engine.max_restarts`.
"""

from __future__ import annotations

import logging
import threading

import httpx

from slime_rl.config.engine import EngineConfig
from slime_rl.orchestration.engines import AWAITING_SYNC, DOWN, SERVING, EngineFleet

logger = logging.getLogger(__name__)


class EngineMonitor:
    """Watches the engines of `fleet`; use as a context manager (the thread runs inside the block)."""

    def __init__(self, fleet: EngineFleet, cfg: EngineConfig) -> None:
        self.fleet = fleet
        self.cfg = cfg
        self.failures = [0] * len(fleet.engines)  # failed health checks in a row, per engine
        self._restarting: set[int] = set()
        self._given_up: set[int] = set()  # engines past engine.max_restarts
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-monitor", daemon=True)
        self._http = httpx.Client(timeout=cfg.health_check_timeout_s)

    def __enter__(self) -> EngineMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._http.close()  # a restart still running ends when the fleet stops its actor

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.health_check_interval_s):
            try:
                self.check()
            except Exception:  # a bug here must not end the watching
                logger.exception("engine health check failed")

    def check(self) -> list[int]:
        """Check every engine once: take out the failed ones and restart the down ones.

        Returns the engines this call took out. Safe to call from any thread.
        """
        taken_out = []
        for index in range(len(self.fleet.engines)):
            state = self.fleet.state(index)
            if state in (SERVING, AWAITING_SYNC):  # a restarted engine can die again before its sync
                reason = self.probe(index)
                if reason is not None and self.fleet.take_out(index, reason):
                    taken_out.append(index)
                    state = DOWN
            if state == DOWN:
                self._start_restart(index)
        return taken_out

    def probe(self, index: int) -> str | None:
        """None if engine `index` is healthy (or not yet judged hung), else why it is out of service."""
        url = self.fleet.engines[index].url
        if not self.fleet.is_alive(index, timeout_s=self.cfg.health_check_timeout_s):
            return "its server process is gone"
        try:
            response = self._http.get(f"{url}/health_generate")
            failed = None if response.status_code == 200 else f"/health_generate answered {response.status_code}"
        except httpx.ConnectError as err:
            return f"it refuses connections ({err})"
        except httpx.HTTPError as err:
            failed = f"/health_generate failed: {err!r}"
        if failed is None:
            self.failures[index] = 0
            return None
        self.failures[index] += 1
        logger.warning("engine %d (%s): %s (%d in a row)", index, url, failed, self.failures[index])
        if self.failures[index] < self.cfg.health_check_failures:
            return None
        return f"hung: {failed}, {self.failures[index]} checks in a row (engine.health_check_failures)"

    def _start_restart(self, index: int) -> None:
        with self._lock:
            if index in self._restarting or index in self._given_up or self._stop.is_set():
                return
            self._restarting.add(index)
        threading.Thread(target=self._restart, args=(index,), name=f"engine-restart-{index}", daemon=True).start()

    def _restart(self, index: int) -> None:
        try:
            if self.fleet.restart(index):
                self.failures[index] = 0
            else:
                self._given_up.add(index)
                logger.error(
                    "engine %d stays out of service: it used engine.max_restarts=%d", index, self.cfg.max_restarts
                )
        except Exception as err:
            logger.warning("restart of engine %d failed (tried again at the next check): %s", index, err)
        finally:
            with self._lock:
                self._restarting.discard(index)
